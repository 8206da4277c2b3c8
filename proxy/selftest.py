"""`bounceproxy selftest`: the whole loop, through the running service, checked step by step.

One message to each address of SES's mailbox simulator goes through the relay; then the bounce log is
read until each step shows what SES would do (a delivery, a hard bounce, an auto-reply, a complaint, a
suppression-list refusal and, with the built-in simulator, a bounce that arrives later as a DSN at the
bounce MX). Only simulator addresses are ever sent to, whatever the upstream: nothing reaches a person.
"""
from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib

from proxy.config import Address, Config
from proxy.model import BounceEvent, MessageRecord
from proxy.relay.server import parse_users

SIMULATOR = "simulator.amazonses.com"
PASS, FAIL = "pass", "FAIL"


@dataclass
class Step:
    name: str
    recipient: str
    ses: str  # what SES does with this address, in words
    expect: str  # "delivered" | "hard" | "suppressed" | "autoreply" | "complaint"
    sender: str = ""
    sent: str = ""  # the replies the relay gave
    message: MessageRecord | None = None
    events: list[BounceEvent] = field(default_factory=list)
    status: str = ""
    detail: str = ""

    def line(self) -> str:
        return f"[{self.status:>4}] {self.name} ({self.recipient}): {self.detail}"


def steps_for(config: Config) -> list[Step]:
    steps = [
        Step("success", f"success@{SIMULATOR}", "delivers it: 250 and no bounce", "delivered"),
        Step("bounce", f"bounce@{SIMULATOR}", "a hard bounce (Permanent, General): the address does not exist", "hard"),
        Step("ooto", f"ooto@{SIMULATOR}", "delivers it, and an out-of-office auto-reply comes back: never a bounce",
             "autoreply"),
        Step("complaint", f"complaint@{SIMULATOR}", "delivers it, and the recipient's complaint comes back (ARF)",
             "complaint"),
        Step("suppressionlist", f"suppressionlist@{SIMULATOR}",
             "refuses it: the address is on SES's suppression list (Permanent, Suppressed; bounceproxy keeps "
             "reason suppressed, and its own list stays out of it)", "suppressed"),
    ]
    if config.upstream.profile == "simulator":
        steps.append(Step("late bounce", config.upstream.simulator_late_bounce,
                          "accepts it, and the bounce arrives later as a DSN at the bounce MX", "hard"))
    return steps


def _connect_host(address: Address) -> str:
    if address.host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return "::1" if address.host == "::" else address.host


async def _send(config: Config, step: Step, run: str, timeout: float) -> None:
    relay = config.relay
    smtp = aiosmtplib.SMTP(hostname=_connect_host(relay.listen), port=relay.listen.port, start_tls=False,
                           timeout=timeout)
    users = parse_users(config.secret(relay.auth_users_env))
    try:
        await smtp.connect()
        await smtp.ehlo()
        if users:
            if smtp.supports_extension("starttls"):
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # our own service, by its address
                await smtp.starttls(tls_context=ctx)
            login, password = next(iter(users.items()))
            await smtp.login(login, password)
        mail = await smtp.execute_command(b"MAIL", f"FROM:<{step.sender}>".encode())
        if mail.code != 250:
            step.sent = f"MAIL {mail.code} {mail.message}"
            return
        rcpt = await smtp.execute_command(b"RCPT", f"TO:<{step.recipient}>".encode())
        step.sent = f"RCPT {rcpt.code} {rcpt.message}"
        if rcpt.code == 250:
            body = (f"From: <{step.sender}>\r\nTo: <{step.recipient}>\r\nSubject: selftest {run} {step.name.replace('bounce', 'b')}\r\n"
                    f"Message-ID: <selftest.{run}.{step.name.replace(' ', '-')}@bounceproxy.invalid>\r\n\r\n"
                    "A message of `bounceproxy selftest`, to SES's mailbox simulator.\r\n")
            code, text = await smtp.data(body.encode())
            step.sent = f"DATA {code} {text}"
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        step.sent = step.sent or f"the relay on {relay.listen} did not take it: {exc}"
        step.status, step.detail = FAIL, f"{step.sent} (is `bounceproxy serve` running on this config?)"
    finally:
        smtp.close()


def _judge(step: Step, final: bool, bounce_mx: str) -> bool:
    """Whether the log shows what SES would do; on the last look, the sentence saying why not."""
    events = step.events
    kinds = [(str(e.kind), str(e.bounce_type)) for e in events]
    seen = ", ".join(f"{e.source} {e.kind} {e.bounce_type}/{e.reason}"
                     + (f" via {e.correlation}" if e.source != "sync" and e.correlation else "")
                     for e in events) or "no event"
    message = step.message
    if message is None:
        if final:
            step.status, step.detail = FAIL, f"relay said {step.sent!r}; nothing in the bounce log for it"
        return False
    recorded = f"relay said {step.sent!r}; logged message {message.id} {message.status}, {seen}"
    ok = False
    if step.expect == "delivered":
        ok = message.status == "sent" and not any(k == "bounce" for k, _ in kinds)
        waiting = False
    elif step.expect == "hard":
        ok = ("bounce", "hard") in kinds
        waiting = not ok
    elif step.expect == "suppressed":
        ok = any(e.kind == "bounce" and e.reason == "suppressed" for e in events)
        waiting = not ok
    else:
        ok = any(k == step.expect for k, _ in kinds)
        waiting = not ok
    if ok:
        step.status, step.detail = PASS, f"{recorded} — as SES: {step.ses}"
        return True
    if final:
        why = f"; no {step.expect} came back to the bounce MX ({bounce_mx}): is it enabled and reachable?" if waiting else ""
        step.status, step.detail = FAIL, f"{recorded}; SES would: {step.ses}{why}"
    return False


async def _look(config: Config, steps: list[Step], since: float, final: bool) -> bool:
    from proxy.store import MessageFilter, open_store

    store = await open_store(config.store, readonly=True)
    try:
        done = True
        for step in steps:
            if step.status == FAIL and step.message is None and not step.sent.startswith(("RCPT", "DATA", "MAIL")):
                continue  # never reached the relay
            found = await store.list_messages(MessageFilter(since=since - 1, sender=step.sender, limit=1))
            step.message = found[0] if found else None
            step.events = await store.message_events(step.message.id) if step.message else []
            done &= _judge(step, final, str(config.inbound.listen))
        return done
    finally:
        await store.close()


def check_bounce_mx(config: Config) -> tuple[str, str]:
    inbound = config.inbound
    if not inbound.enabled:
        return FAIL, "[inbound] enabled is false: no auto-reply, complaint or late bounce can come back"
    return PASS, f"listening on {inbound.listen} for {', '.join(inbound.bounce_domains)}"


async def run(config: Config, sender: str | None, timeout: float, echo) -> bool:
    """Send, wait, print; True when every step shows what SES would do."""
    from pathlib import Path

    profile = config.upstream.profile
    if profile == "simulator":
        echo(f"upstream: the built-in SES mailbox simulator (nothing is delivered); relay {config.relay.listen}")
    else:
        echo(f"upstream: {config.upstream.host}:{config.upstream.port} ({profile}): a real upstream, so this sends "
             f"ONLY to SES's mailbox simulator (*@{SIMULATOR}); nothing reaches a person")
        if profile != "ses":
            echo("  (only SES answers those addresses as its simulator; through another smarthost expect other replies)")
    run_id = secrets.token_hex(4)
    local, _, domain = (sender or "selftest@example.com").rpartition("@")
    steps = steps_for(config)
    for step in steps:
        step.sender = f"{local}+{run_id}-{step.name.replace(' ', '-')}@{domain}"
    started = time.time()
    ok = True
    status, detail = await _probe_bounce_mx(config)
    echo(f"[{status:>4}] bounce MX: {detail}")
    ok &= status == PASS
    await asyncio.gather(*(_send(config, step, run_id, min(timeout, 30)) for step in steps))
    if config.store.backend != "postgresql" and not Path(config.store.path).exists():
        echo(f"[FAIL] bounce log: no file at {config.store.path} ([store] path in {config.source})")
        return False
    deadline = time.monotonic() + timeout
    while not await _look(config, steps, started, final=False) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await _look(config, steps, started, final=True)
    for step in steps:
        echo(step.line())
        ok &= step.status == PASS
    failed = sum(s.status != PASS for s in steps) + (status != PASS)
    echo(f"selftest {run_id}: {len(steps) + 1 - failed} of {len(steps) + 1} steps as SES would do"
         + ("" if ok else f"; {failed} wrong"))
    return ok


async def _probe_bounce_mx(config: Config) -> tuple[str, str]:
    status, detail = check_bounce_mx(config)
    if status != PASS:
        return status, detail
    inbound = config.inbound
    smtp = aiosmtplib.SMTP(hostname=_connect_host(inbound.listen), port=inbound.listen.port, start_tls=False, timeout=5)
    try:
        await smtp.connect()
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        return FAIL, f"nothing answers on {inbound.listen} ({exc}): no auto-reply, complaint or late bounce can come back"
    finally:
        smtp.close()
    return PASS, detail
