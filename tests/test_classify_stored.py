"""What a verdict was made from is stored on the event (issue 11): the SMTP stage, the Action, the
status source and the rule that decided. `reparse --classify-only` makes the same verdict again from
those inputs, and the CLI shows the why. Real relay, real upstream (aiosmtpd), real bounce MX, real
SQLite file, real CLI processes; the log read back through the Store."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.model import BounceEvent
from proxy.store import EventFilter, MessageFilter
from tests.conftest import ROOT, ScriptedUpstream, make_config, start_upstream

SHARED = ROOT.parent / "shared" / "samples" / "sisimai" / "maildir" / "bsd"
KEY = "test-verp-key-0123456789"


class RefusesAtData(ScriptedUpstream):
    """Accepts every RCPT, then answers the end of DATA for `dataunknown@...` as KDDI, docomo and many
    gateways do: a bare "user unknown", no X.1 status."""

    async def handle_DATA(self, server, session, envelope):
        if any(r.lower().startswith("dataunknown@") for r in envelope.rcpt_tos):
            return "550 User unknown"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
async def svc(tmp_path, monkeypatch):
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", KEY)
    up = await start_upstream(RefusesAtData())
    config = make_config(tmp_path, up.port, inbound={"plain_addresses": ("bounces@bounces.test",)})
    async with Service(config) as service:
        yield service
    up.server.close()


def _cli(tmp_path, *args):
    env = {"PYTHONPATH": str(ROOT), "BOUNCEPROXY_STORE__PATH": str(tmp_path / "bounceproxy.db"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "proxy", *args], env=env, capture_output=True, text=True, cwd=tmp_path)


async def _send(svc: Service, recipient: str) -> None:
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    try:
        await smtp.sendmail("app@example.com", [recipient], b"From: app@example.com\r\nSubject: hello\r\n\r\nhi\r\n")
    except aiosmtplib.SMTPException:
        pass  # refused: recorded all the same
    await smtp.quit()


async def _events(svc: Service) -> list[BounceEvent]:
    return [e.event for e in await svc.store.list_events(EventFilter(limit=10**6))]


async def _stale(svc: Service) -> None:
    """What a classifier upgrade leaves behind: verdicts to be made again."""
    events = await _events(svc)
    for e in events:
        e.reason, e.bounce_type, e.decided_by = "undefined", "undetermined", None
    await svc.store.update_events_verdicts(events)
    assert {(e.reason, e.decided_by) for e in await _events(svc)} == {("undefined", None)}


async def test_a_sync_user_unknown_after_data_stays_filtered_soft_on_reclassify(svc, tmp_path):
    await _send(svc, "dataunknown@example.net")
    for _ in range(100):
        if await _events(svc):
            break
        await asyncio.sleep(0.05)
    [event] = await _events(svc)
    assert (event.reason, event.bounce_type, event.smtp_command) == ("filtered", "soft", "DATA")
    assert "stage DATA: filtered" in event.decided_by and "user unknown" in event.decided_by
    first = event.decided_by

    await _stale(svc)
    out = await asyncio.to_thread(_cli, tmp_path, "reparse", "--classify-only")
    assert out.returncode == 0, out.stderr
    [event] = await _events(svc)
    # the stored stage makes the same verdict: without it, this would become userunknown / hard
    assert (event.reason, event.bounce_type, event.decided_by) == ("filtered", "soft", first)

    out = await asyncio.to_thread(_cli, tmp_path, "bounces", "--explain")
    assert out.returncode == 0, out.stderr
    assert "dataunknown@example.net" in out.stdout and "filtered" in out.stdout
    assert "why: text: userunknown row" in out.stdout and "smtp_command DATA" in out.stdout
    out = await asyncio.to_thread(_cli, tmp_path, "bounces", "--explain", "--json")
    assert '"smtp_command": "DATA"' in out.stdout and '"decided_by": "text: userunknown' in out.stdout
    relay_id = (await svc.store.list_messages(MessageFilter()))[0].id
    out = await asyncio.to_thread(_cli, tmp_path, "messages", "show", relay_id)
    assert out.returncode == 0, out.stderr
    assert "why: text: userunknown row" in out.stdout and "stage DATA: filtered" in out.stdout


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/samples is absent")
async def test_a_dsn_stating_the_stage_only_in_its_text_keeps_it_through_reclassify(svc, tmp_path):
    """Courier writes ">>> DATA / <<< 550 Unknown user" in the human-readable part only; its
    Diagnostic-Code is a bare "550 Unknown user". The stage is read there, stored, and reused."""
    raw = (SHARED / "lhost-courier-02.eml").read_bytes()
    smtp = aiosmtplib.SMTP(hostname=svc.inbound_address[0], port=svc.inbound_address[1], start_tls=False, timeout=30)
    await smtp.connect()
    await smtp.sendmail("", ["bounces@bounces.test"], raw)
    await smtp.quit()
    await svc.inbound_worker.drain()
    [event] = [e for e in await _events(svc) if e.recipient == "kijitora@example.jp"]
    assert (event.reason, event.bounce_type) == ("filtered", "soft")
    assert (event.smtp_command, event.action, event.status_source) == ("DATA", "failed", "dsn")
    await _stale(svc)
    out = await asyncio.to_thread(_cli, tmp_path, "reparse", "--classify-only")
    assert out.returncode == 0, out.stderr
    [event] = [e for e in await _events(svc) if e.recipient == "kijitora@example.jp"]
    assert (event.reason, event.bounce_type) == ("filtered", "soft") and "stage DATA" in event.decided_by


def test_classify_explain_prints_the_steps_and_what_decided(tmp_path):
    out = _cli(tmp_path, "classify", "--explain", "--command", "DATA", "550 User unknown")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("filtered / soft / 5.0.0")
    assert "stage: DATA" in lines[1] and "provider: nothing" in lines[2]
    assert lines[3].startswith("  3. text: filtered <- userunknown row") and lines[-1].startswith("  decided by: text:")
    out = _cli(tmp_path, "classify", "--explain", "550 5.2.2 <a@b>: mailbox full")
    assert out.stdout.startswith("mailboxfull / soft / 5.2.2") and 'decided by: text: mailboxfull row' in out.stdout
    out = _cli(tmp_path, "classify", "--explain", "550 5.2.2 see our postmaster page")
    assert out.stdout.startswith("mailboxfull / soft") and "decided by: status: 5.2.2 mailbox full" in out.stdout
    assert "text: nothing" in out.stdout
