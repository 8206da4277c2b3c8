"""Soft suppression (issue 10, section 5): an MTA's retries are not a pattern, a soft suppression is
temporary and says so, and SES's mailbox simulator is never suppressed."""
from __future__ import annotations

import asyncio
import shutil
import time

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.config import ConfigError, SuppressionConfig, load_config
from proxy.model import (
    BounceEvent, BounceType, Kind, MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, SoftBounce, Source,
    Suppression,
)
from proxy.store import EventFilter, MessageFilter, SuppressionFilter
from proxy.suppression import SOFT_COUNTING_REASONS_EXCLUDED as EXCLUDED, Policy, Suppressor, refusal
from tests import postfix
from tests.conftest import ScriptedUpstream, make_config, start_upstream

DAY = 86400.0
FULL_AT_RCPT = "452 4.2.2 <full@example.net>: Recipient address rejected: Mailbox full"


class RecordingUpstream(ScriptedUpstream):
    """ScriptedUpstream that also keeps every RCPT it was asked, and answers the end of data of mail
    to fullatdata*@ with a 452 4.2.2 (quota checked at delivery, as Dovecot's LMTP does)."""

    def __init__(self):
        super().__init__()
        self.rcpts: list[str] = []
        self.rcpt_replies["full"] = FULL_AT_RCPT

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.rcpts.append(address)
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server, session, envelope):
        if any(r.lower().startswith("fullatdata") for r in envelope.rcpt_tos):
            return "452 4.2.2 Mailbox full: user is over quota"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
async def recording():
    up = await start_upstream(RecordingUpstream())
    yield up
    up.server.close()


async def suppressions(svc: Service) -> list[Suppression]:
    return await svc.store.list_suppressions(SuppressionFilter(limit=None))


async def events(svc: Service, **flt) -> list[BounceEvent]:
    """Logged events, oldest first."""
    return [e.event for e in reversed(await svc.store.list_events(EventFilter(limit=10**6, **flt)))]


def soft(at: float, relay_id: str, header_id: str | None = None, content_sha256: str | None = None,
         verp_token: str | None = None) -> SoftBounce:
    """A soft bounce as Store.soft_bounces gives it (header_id: the client's Message-ID)."""
    return SoftBounce(at, relay_id, header_id, content_sha256, verp_token)


async def rcpt(svc: Service, recipient: str) -> aiosmtplib.SMTPResponse:
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.mail("app@example.com")
    reply = await smtp.execute_command(b"RCPT", f"TO:<{recipient}>".encode())
    await smtp.rset()
    await smtp.quit()
    return reply


async def send(svc: Service, recipient: str, body: bytes) -> tuple[int, str]:
    """One whole transaction; returns the reply to the end of data (or to RCPT, if refused there)."""
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.mail("app@example.com")
        reply = await smtp.execute_command(b"RCPT", f"TO:<{recipient}>".encode())
        if reply.code != 250:
            return reply.code, reply.message
        try:
            reply = await smtp.data(body)
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
        return reply.code, reply.message
    finally:
        await smtp.quit()


# -- the reproduction: Postfix retrying a 452 ---------------------------------------------------------------
@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
async def test_an_mta_retrying_a_452_is_never_suppressed(tmp_path, recording):
    """The issue's reproduction: swaks four times a second apart to an address its upstream answers
    `452 4.2.2 Mailbox full`. Each try must reach the upstream and get the upstream's own reply;
    before the fix the 4th got `550 5.1.1 ... (repeated soft bounces ...)` and Postfix bounced for good."""
    async with Service(make_config(tmp_path, recording.port)) as svc:
        outputs = []
        for attempt in range(4):
            if attempt:
                await asyncio.sleep(1)
            proc = await asyncio.create_subprocess_exec(
                "swaks", "--server", f"{svc.relay_address[0]}:{svc.relay_address[1]}", "--ehlo", "postfix.app.test",
                "--from", "app@example.com", "--to", "full@example.net", "--timeout", "10",
                "--header", "Message-Id: <queued-once.4711@app.test>",  # Postfix keeps it on every retry
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await proc.communicate()
            outputs.append(out.decode())
        for out in outputs:
            assert f"<** {FULL_AT_RCPT}" in out, out  # the upstream's words, verbatim, every time
            assert "suppression" not in out and "5.1.1" not in out
        assert recording.handler.rcpts.count("full@example.net") == 4  # the 4th try still went upstream
        assert await suppressions(svc) == []
        logged = await events(svc, recipient="full@example.net")
        assert [(e.reason, e.bounce_type) for e in logged] == [("mailboxfull", "soft")] * 4  # all recorded
        messages = await svc.store.list_messages(MessageFilter(limit=10**6))
        assert {r.status for m in messages for r in m.recipients} == {"deferred"}


@pytest.mark.skipif(postfix.available() is not None, reason=str(postfix.available()))
async def test_postfix_retrying_a_full_mailbox_keeps_the_message_queued(tmp_path, recording):
    """The issue's setting: Postfix as the application's MTA, relaying through bounceproxy, retries
    (1 s queue runs here) a recipient the upstream answers 452 4.2.2. Every retry reaches the
    upstream and Postfix keeps deferring; it never gets a 5xx and never bounces the message."""
    async with Service(make_config(tmp_path, recording.port)) as svc:
        relay = f"[{svc.relay_address[0]}]:{svc.relay_address[1]}"
        with postfix.PrivatePostfix(tmp_path / "postfix", relayhost=relay) as pf:
            pf.sendmail(b"From: app@example.com\nSubject: quota\n\nhello\n", "app@example.com",
                        ["full@example.net"])
            for _ in range(300):  # until Postfix has tried four times (about 6 s idle), or 60 s on a busy machine
                if recording.handler.rcpts.count("full@example.net") >= 4:
                    break
                await asyncio.sleep(0.2)
            log = pf.log_text()
            queued = pf.queue_ids()
        assert recording.handler.rcpts.count("full@example.net") >= 4, log  # the fourth try went upstream
        assert "status=deferred" in log and "452 4.2.2" in log and "status=bounced" not in log, log
        assert len(queued) == 1  # still Postfix's to deliver later
        assert await suppressions(svc) == []
        header_ids = {m.message_id for m in await svc.store.list_messages(MessageFilter(limit=10**6))}
        assert header_ids == {None}  # refused at RCPT each time: no DATA, so only the spread in time helps


async def test_retries_of_one_message_count_once_even_when_every_bounce_counts(tmp_path, recording, store_url):
    """With the spread in time switched off (period 0), the same message refused at the end of data
    on every try is still one bounce: by its Message-ID, and without one (the relay adds a new
    Message-ID each time) by its bytes. Distinct messages do count."""
    config = make_config(tmp_path, recording.port, store_url=store_url, suppression={"soft_count_period_hours": 0.0})
    async with Service(config) as svc:
        kept_id = b"From: app@example.com\r\nMessage-ID: <retry.1@app.test>\r\nSubject: quota\r\n\r\nhi\r\n"
        for _ in range(4):
            assert (await send(svc, "fullatdata1@example.net", kept_id))[0] == 452
        no_id = b"From: app@example.com\r\nSubject: no id\r\n\r\nhi\r\n"
        for _ in range(4):
            assert (await send(svc, "fullatdata2@example.net", no_id))[0] == 452
        header_ids = {m.message_id for m in await svc.store.list_messages(MessageFilter(recipient="fullatdata2@example.net"))
                      if any(r.address == "fullatdata2@example.net" for r in m.recipients)}
        assert len(header_ids) == 4  # a new Message-ID each time: only the content hash ties them
        assert await suppressions(svc) == []
        assert (await rcpt(svc, "fullatdata1@example.net")).code == 250
        assert (await rcpt(svc, "fullatdata2@example.net")).code == 250
        # three distinct messages: three bounces, suppressed, and the 4th is refused with a 4xx
        for n in range(3):
            body = f"From: app@example.com\r\nMessage-ID: <distinct.{n}@app.test>\r\nSubject: {n}\r\n\r\nhi\r\n"
            assert (await send(svc, "fullatdata3@example.net", body.encode()))[0] == 452
        (row,) = await suppressions(svc)
        assert row.address == "fullatdata3@example.net" and row.kind == "soft" and row.reason == "mailboxfull"
        before = len(recording.handler.rcpts)
        reply = await rcpt(svc, "fullatdata3@example.net")
        assert reply.code == 452 and reply.message.startswith("4.2.2 <fullatdata3@example.net>: mailbox repeatedly full since ")
        assert len(recording.handler.rcpts) == before  # refused without an upstream send


# -- the policy on an injected clock ------------------------------------------------------------------------
async def _bounce(store, recipient: str, at: float, *, relay_id: str, header_id: str | None = None,
                  sha: str | None = None, verp: str | None = None, reason: str = "mailboxfull",
                  source: Source = Source.SYNC, correlation: str = "none") -> BounceEvent:
    event = BounceEvent(at=at, source=source, kind=Kind.BOUNCE, recipient=recipient, bounce_type=BounceType.SOFT,
                        reason=reason, relay_id=relay_id, correlation=correlation)
    message = MessageRecord(id=relay_id, created_at=at, sender="app@example.com", status=MessageStatus.FAILED,
                            message_id=header_id, content_sha256=sha, verp_token=verp,
                            recipients=[RecipientRecord(recipient, RecipientStatus.DEFERRED)])
    await store.record_message(message, [event])
    return event


@pytest.fixture
async def clocked(any_store):
    """A Suppressor on an injected clock over each backend in turn."""
    store = any_store
    now = [1_800_000_000.0]
    sup = Suppressor(SuppressionConfig(), store, clock=lambda: now[0])
    await sup.start()
    yield store, sup, now
    await sup.stop()


@pytest.mark.parametrize("key", ["header_id", "sha", "verp"])
async def test_a_message_retried_on_distinct_days_counts_once(clocked, key):
    """Postfix keeps a deferred message for days: four days of retries of one message (same
    Message-ID, or same bytes, or same VERP return path; a new relay id each time) are one bounce."""
    store, sup, now = clocked
    for n in range(4):
        now[0] += DAY + 1
        await sup.consider([await _bounce(store, "retried@example.net", now[0], relay_id=f"r{key}{n}",
                                          **{key: f"same-{key}"})])
    assert await sup.lookup("app@example.com", "retried@example.net") is None
    bounces = await store.soft_bounces("retried@example.net", 0, EXCLUDED, sup.policy.trusted)
    assert len(bounces) == 4 and sup.policy.soft_count(bounces) == 1


async def test_soft_bounces_count_once_per_period_then_suppress_with_a_4xx(clocked):
    store, sup, now = clocked
    addr = "busy@example.net"
    start = now[0]
    # ten distinct messages within 23 hours: one bad day, one bounce
    for n in range(10):
        now[0] = start + n * 2.3 * 3600
        await sup.consider([await _bounce(store, addr, now[0], relay_id=f"day0-{n}", header_id=f"<d0.{n}@app>")])
    assert await sup.lookup("app@example.com", addr) is None
    assert sup.policy.soft_count(await store.soft_bounces(addr, 0, EXCLUDED, sup.policy.trusted)) == 1
    # a second day: two; a third day: three, the threshold
    now[0] = start + DAY
    await sup.consider([await _bounce(store, addr, now[0], relay_id="day1", header_id="<d1@app>")])
    assert await sup.lookup("app@example.com", addr) is None
    now[0] = start + 2 * DAY
    await sup.consider([await _bounce(store, addr, now[0], relay_id="day2", header_id="<d2@app>")])
    row = await sup.lookup("app@example.com", addr)
    assert row is not None and row.kind == "soft" and row.reason == "mailboxfull"
    assert row.expires_at == pytest.approx(now[0] + 7 * DAY)
    reply = refusal(row, addr, "bounceproxy")
    assert reply == ("452 4.2.2 <busy@example.net>: mailbox repeatedly full since 2027-01-17 "
                     "(soft suppression until 2027-01-24, mailboxfull)")
    ses = refusal(row, addr, "ses")
    assert ses.startswith("452 4.2.2 Amazon SES did not send the message to this address because it is "
                          "temporarily on the suppression list") and "5.1.1" not in ses


async def test_untrusted_soft_reports_do_not_add_to_the_count(clocked):
    """Forged soft DSNs (no trusted correlation) on two days, then one genuine bounce: one counts."""
    store, sup, now = clocked
    addr = "target@example.net"
    for n in range(2):
        now[0] += DAY + 1
        await sup.consider([await _bounce(store, addr, now[0], relay_id=f"forged{n}", source=Source.ASYNC,
                                          correlation="recipient_window")])
    now[0] += DAY + 1
    await sup.consider([await _bounce(store, addr, now[0], relay_id="real", source=Source.SYNC)])
    assert await sup.lookup("app@example.com", addr) is None
    assert len(await store.soft_bounces(addr, 0, EXCLUDED, sup.policy.trusted)) == 1


def test_every_soft_reason_answers_temporarily_and_hard_ones_permanently():
    created, expires = 1_800_000_000.0, 1_800_000_000.0 + 7 * DAY
    expected = {"mailboxfull": "452 4.2.2", "systemfull": "452 4.3.1", "systemerror": "451 4.3.0",
                "expired": "451 4.4.7", "networkerror": "451 4.4.1", "suspend": "450 4.2.1",
                "emailtoolarge": "452 4.3.4", "filtered": "450 4.2.0", "syntaxerror": "450 4.2.0"}
    for style in ("bounceproxy", "ses"):
        for reason, start in expected.items():
            row = Suppression("", "a@example.net", reason, "soft", created, expires)
            reply = refusal(row, "a@example.net", style)
            assert reply.startswith(start + " ") and "5.1.1" not in reply, reply
        for kind in ("hard", "complaint", "manual", "import"):
            row = Suppression("", "a@example.net", "userunknown", kind, created, None)
            assert refusal(row, "a@example.net", style).startswith("550 5.1.1 ")


def test_the_policy_reads_retries_and_periods_from_the_rows_alone():
    policy = Policy(SuppressionConfig(soft_count_period_hours=24.0))
    rows_ = [soft(0, "a", header_id="<x@app>"),
             soft(2 * DAY, "b", header_id="<x@app>"),  # a retry of a, two days later
             soft(3 * DAY, "c", content_sha256="s"),
             soft(3 * DAY + 3600, "d", header_id="<y@app>"),  # within c's period
             soft(5 * DAY, "e", content_sha256="s"),  # a retry of c
             soft(6 * DAY, "f", verp_token="v"),
             soft(8 * DAY, "g", verp_token="v")]  # a retry of f
    assert policy.soft_count(rows_) == 3  # a, c, f
    assert Policy(SuppressionConfig(soft_count_period_hours=0.0)).soft_count(rows_) == 4  # a, c, d, f


# -- hard bounces keep their 5xx ------------------------------------------------------------------------------
async def test_a_hard_bounce_is_still_refused_permanently(tmp_path, recording):
    async with Service(make_config(tmp_path, recording.port)) as svc:
        assert (await rcpt(svc, "unknown.one@example.net")).code == 550  # the upstream's 550 5.1.1: hard
        reply = await rcpt(svc, "unknown.one@example.net")
        assert reply.code == 550 and reply.message.startswith(
            "5.1.1 <unknown.one@example.net>: address is on the suppression list (hard bounce ")
        assert recording.handler.rcpts.count("unknown.one@example.net") == 1


# -- SES's mailbox simulator ----------------------------------------------------------------------------------
async def test_simulator_addresses_are_never_suppressed(tmp_path):
    """Run the simulator's bounce, suppression-list, complaint and late-bounce addresses twice: the
    second run sees the simulator's own replies, not ours, and nothing lands on the list."""
    config = make_config(tmp_path, upstream={"simulator_async_delay": 0.05})
    async with Service(config) as svc:
        for run in range(2):
            assert (await rcpt(svc, "bounce@simulator.amazonses.com")).message.endswith("(simulated user unknown)")
            suppressed = await rcpt(svc, "suppressionlist@simulator.amazonses.com")
            assert suppressed.code == 550 and suppressed.message.endswith("(simulated suppression list)")
            smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
            await smtp.connect()
            errors, _ = await smtp.sendmail("app@example.com", ["complaint@simulator.amazonses.com",
                                                                "latebounce@simulator.amazonses.com"],
                                            b"From: app@example.com\r\nSubject: loop\r\n\r\nhi\r\n")
            await smtp.quit()
            assert errors == {}, run  # accepted again on the second run
            for _ in range(100):  # the simulated world's complaint and late DSN come back
                await asyncio.sleep(0.05)
                await svc.inbound_worker.drain()
                if len(await events(svc, source="async")) == 2 * (run + 1):
                    break
        kinds = sorted((e.kind, e.recipient) for e in await events(svc, source="async"))
        assert kinds == [("bounce", "latebounce@simulator.amazonses.com")] * 2 + [
            ("complaint", "complaint@simulator.amazonses.com")] * 2
        assert await suppressions(svc) == []
        # an entry made before this rule (an old list, an import) does not refuse them either
        await svc.store.upsert_suppressions([Suppression("", "success@simulator.amazonses.com", "userunknown", "hard",
                                                         time.time())])
        await svc.suppressor.refresh()
        assert (await rcpt(svc, "success@simulator.amazonses.com")).code == 250


# -- configuration ------------------------------------------------------------------------------------------
def test_soft_count_period_must_be_a_number_of_at_least_zero(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[upstream]\nprofile = "simulator"\n[inbound]\nbounce_domains = ["b.test"]\n'
                    "[suppression]\nsoft_count_period_hours = 12\n")
    assert load_config(path, env={}).suppression.soft_count_period_hours == 12.0
    for bad in ("-1.0", "nan"):
        path.write_text('[upstream]\nprofile = "simulator"\n[inbound]\nbounce_domains = ["b.test"]\n'
                        f"[suppression]\nsoft_count_period_hours = {bad}\n")
        with pytest.raises(ConfigError, match=r"config\.toml: \[suppression\] soft_count_period_hours"):
            load_config(path, env={})


def test_the_span_shortcut_never_hides_a_threshold_reached():
    """`may_reach_threshold` skips reading the rows when their span is too short; on random histories
    (retries, periods, thresholds) it must say yes whenever the full count reaches the threshold."""
    import random

    rng = random.Random(10)
    for _ in range(2000):
        threshold, hours = rng.randint(1, 4), rng.choice([0.0, 1.0, 24.0])
        policy = Policy(SuppressionConfig(soft_threshold=threshold, soft_count_period_hours=hours))
        at, history = 1_800_000_000.0, []
        for n in range(rng.randint(1, 12)):
            at += rng.choice([1.0, 600.0, 3600.0, DAY, DAY + 1, 3 * DAY])
            history.append(soft(at, f"r{n}", header_id=rng.choice([None, "<a@x>", "<b@x>", f"<{n}@x>"])))
        span = history[-1].at - history[0].at
        if policy.soft_count(history) >= threshold:
            assert policy.may_reach_threshold(span), (threshold, hours, history)
    assert not Policy(SuppressionConfig()).may_reach_threshold(None)  # no bounces at all
    assert not Policy(SuppressionConfig()).may_reach_threshold(2 * DAY - 1)
