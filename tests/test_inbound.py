"""The bounce MX: who may deliver to it, that nothing accepted is lost, and that each real bounce
becomes an event on the message it answers."""
from __future__ import annotations

import asyncio
import email
import subprocess
import sys

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.model import BounceEvent, InboundRecord, MessageRecord
from proxy.store import EventFilter, InboundFilter, MessageFilter, open_store
from tests.conftest import ROOT, make_config

DATA = ROOT / "tests" / "data"  # real bounces from sisimai/set-of-emails (tests/data/LICENSE.sisimai)
KEY = "test-verp-key-0123456789"


def on_the_wire(raw: bytes) -> bytes:
    """The bytes as SMTP carries them: CRLF line endings, ending in CRLF."""
    import re

    wire = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    return wire if wire.endswith(b"\r\n") else wire + b"\r\n"


async def events(svc: Service, **flt) -> list[BounceEvent]:
    """The logged events (newest first), read through the Store."""
    return [e.event for e in await svc.store.list_events(EventFilter(limit=10**6, **flt))]


async def inbound(svc: Service) -> list[InboundRecord]:
    """Every stored inbound mail with its raw bytes, oldest first."""
    return [await svc.store.get_inbound(i) for i in await svc.store.inbound_ids()]


@pytest.fixture
async def svc(tmp_path, upstream, monkeypatch, store_url):
    """The service with VERP on each backend in turn (SQLite, then PostgreSQL)."""
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", KEY)
    config = make_config(tmp_path, upstream.port, store_url=store_url,
                         inbound={"plain_addresses": ("bounces@bounces.test",)})
    async with Service(config) as service:
        yield service


async def mx(svc: Service) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname=svc.inbound_address[0], port=svc.inbound_address[1], start_tls=False, timeout=30)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


async def relay_one(svc: Service, recipient: str, body: bytes | None = None) -> MessageRecord:
    """Send one message through the relay; returns its record."""
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    try:
        await smtp.sendmail("app@example.com", [recipient], body or b"From: app@example.com\r\nSubject: hello\r\n\r\nhi\r\n")
    except aiosmtplib.SMTPRecipientsRefused:
        pass  # a synchronous refusal: the message is recorded all the same
    await smtp.quit()
    return (await svc.store.list_messages(MessageFilter(limit=1)))[0]


async def deliver(svc: Service, raw: bytes, rcpt: str, sender: str = "") -> aiosmtplib.SMTPResponse:
    smtp = await mx(svc)
    await smtp.mail(sender)
    await smtp.rcpt(rcpt)
    reply = await smtp.data(raw)
    await smtp.quit()
    await svc.inbound_worker.drain()
    return reply


async def test_relay_writes_a_signed_verp_envelope_sender(svc, upstream):
    message = await relay_one(svc, "user@example.net")
    sent_from = upstream.handler.mail_from[-1]
    assert sent_from == message.verp_token
    assert sent_from.startswith(f"bounce+{message.id}-") and sent_from.endswith("@bounces.test")
    assert svc.signer.verify(sent_from).relay_id == message.id


@pytest.mark.parametrize("rcpt, code, enhanced", [
    ("postmaster@example.com", 550, "5.7.1"),  # not a bounce domain: no open relay
    ("someone@bounces.test", 550, "5.1.1"),  # our domain, but not an address we issued
    ("bounce+agrayumxl2yhargvn-2vacu63l44@bounces.test", 550, "5.1.1"),  # forged signature
    ("<@bounces.test:user@example.com>", 550, "5.7.1"),  # source route via us to a foreign address
])
async def test_refuses_what_it_did_not_issue(svc, rcpt, code, enhanced):
    smtp = await mx(svc)
    await smtp.mail("")
    reply = await smtp.execute_command(b"RCPT", f"TO:{rcpt if rcpt.startswith('<') else '<' + rcpt + '>'}".encode())
    assert reply.code in (code, 553) and (reply.code == 553 or reply.message.startswith(enhanced))
    await smtp.quit()


async def test_a_tampered_verp_token_is_refused(svc):
    message = await relay_one(svc, "user@example.net")
    token = message.verp_token
    other = token.replace(message.id, message.id[:-1] + ("a" if message.id[-1] != "a" else "b"))
    smtp = await mx(svc)
    await smtp.mail("")
    assert (await smtp.execute_command(b"RCPT", f"TO:<{other}>".encode())).code == 550
    assert (await smtp.execute_command(b"RCPT", f"TO:<{token.upper()}>".encode())).code == 250  # case folded by MTAs
    await smtp.quit()


async def test_real_dsn_to_verp_address_becomes_async_event_on_the_message(svc):
    message = await relay_one(svc, "kijitora@neko.example.jp")
    raw = (DATA / "lhost-postfix-06.eml").read_bytes()
    reply = await deliver(svc, raw, message.verp_token)
    assert reply.code == 250 and "stored as inbound #" in reply.message
    (event,) = await events(svc, source="async")
    assert event.relay_id == message.id and event.correlation == "verp"
    assert event.recipient == "kijitora@neko.example.jp" and event.kind == "bounce"
    assert event.status == "5.4.4" and event.bounce_type == "hard" and event.reason == "hostunknown"
    (stored,) = await inbound(svc)
    assert stored.raw == on_the_wire(raw) and stored.state == "parsed" and stored.mail_from == ""


async def test_ses_message_id_correlates_by_upstream_id(svc):
    """SES rewrites Message-ID to <SES-ID@email.amazonses.com>; a quoted one finds the message."""
    raw = (DATA / "arf-14.eml").read_bytes()
    quoted = email.message_from_bytes(raw)
    ses_id = "2222222222222222-00000000-eeee-eeee-ffff-222222222222-111111"
    assert ses_id in raw.decode()
    message = await relay_one(svc, "kijitora@y.example.com")
    message.upstream_id = ses_id  # as if SES had answered with this id
    await svc.store.record_message(message, recipients=False)
    await deliver(svc, raw, "bounces@bounces.test")
    (event,) = await events(svc, source="async")
    assert quoted.get_content_type() == "multipart/report"
    assert event.kind == "complaint" and event.correlation == "upstream_id"
    assert event.relay_id == message.id and event.recipient == "kijitora@y.example.com"


async def test_client_message_id_correlates_when_no_verp(svc):
    body = b"From: app@example.com\r\nMessage-ID: <order-7@shop.example>\r\nSubject: x\r\n\r\nhi\r\n"
    message = await relay_one(svc, "kijitora@example.ed.jp", body)
    raw = (DATA / "lhost-exim-01.eml").read_bytes()
    # the sample quotes its own original; the bounce names the message by the id we sent
    raw = raw.replace(_quoted_message_id(raw).encode(), b"order-7@shop.example")
    await deliver(svc, raw, "bounces@bounces.test")
    (event,) = await events(svc, source="async")
    assert event.correlation == "message_id" and event.relay_id == message.id


def _quoted_message_id(raw: bytes) -> str:
    from proxy.dsn import parse

    return parse(raw).original.message_id.strip("<>")


async def test_uncorrelated_bounce_is_kept_and_shown(svc):
    await deliver(svc, (DATA / "lhost-postfix-06.eml").read_bytes(), "bounces@bounces.test")
    (event,) = await events(svc)
    assert event.correlation == "none" and event.relay_id is None
    assert event.recipient == "kijitora@neko.example.jp"


async def test_autoreply_is_never_a_bounce(svc):
    message = await relay_one(svc, "nekonyaan@example.org")
    await deliver(svc, (DATA / "rfc3834-02.eml").read_bytes(), message.verp_token)
    (event,) = await events(svc)
    assert event.kind == "autoreply" and event.reason == "vacation" and event.bounce_type == "undetermined"
    assert event.correlation == "verp"


async def test_same_dsn_twice_and_reparse_record_events_once(svc):
    message = await relay_one(svc, "kijitora@neko.example.jp")
    raw = (DATA / "lhost-postfix-06.eml").read_bytes()
    await deliver(svc, raw, message.verp_token)
    await deliver(svc, raw, message.verp_token)
    assert len(await inbound(svc)) == 2  # both copies kept...
    assert len(await events(svc)) == 1  # ...one event
    await svc.pipeline.reparse(None)
    assert len(await events(svc)) == 1
    states = [r.error for r in await inbound(svc)]
    assert states[0] is None and states[1] == "duplicate of inbound #1"


async def test_a_copy_another_bounce_mx_recorded_first_is_a_duplicate_and_acts_on_nothing(svc, monkeypatch):
    """Two bounce MX on one log get the same DSN, and the row with the lower id commits last (PostgreSQL
    hands out ids before commit): the cheap check before parsing passes for both, and the store decides,
    when the results are recorded, that whichever records second is the duplicate."""
    message = await relay_one(svc, "kijitora@neko.example.jp")
    raw = on_the_wire((DATA / "lhost-postfix-06.eml").read_bytes())
    first = await svc.store.store_inbound("192.0.2.1:25", "", [message.verp_token], raw)
    second = await svc.store.store_inbound("192.0.2.2:25", "", [message.verp_token], raw)
    real_check = svc.store.first_inbound_with_sha

    async def first_not_committed_yet(sha256: str, other_than: int) -> None:
        return None  # the other copy's result is not committed yet

    monkeypatch.setattr(svc.store, "first_inbound_with_sha", first_not_committed_yet)
    assert len(await svc.pipeline.process(second)) == 1  # the MX that parsed first records the events
    monkeypatch.setattr(svc.store, "first_inbound_with_sha", real_check)
    assert await svc.pipeline.process(first) == []  # the store's verdict: the same bytes were recorded
    assert svc.pipeline.processed == 1  # only the copy whose events were recorded counts
    (event,) = await events(svc)
    assert event.inbound_id == second
    rows = {r.id: r for r in await inbound(svc)}
    assert rows[first].error == f"duplicate of inbound #{second}" and rows[second].error is None
    assert rows[first].state == rows[second].state == "parsed"


async def test_pending_rows_are_parsed_at_the_next_start(tmp_path, upstream, monkeypatch):
    """A crash between the commit and the parse loses nothing: the row waits as `pending`."""
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", KEY)
    config = make_config(tmp_path, upstream.port)
    store = await open_store(config.store)
    await store.store_inbound("192.0.2.1:25", "", ["bounce@bounces.test"], (DATA / "lhost-postfix-06.eml").read_bytes())
    await store.close()
    async with Service(config) as svc:
        await svc.inbound_worker.drain()
        (row,) = await inbound(svc)
        assert row.state == "parsed"
        assert len(await events(svc)) == 1


def test_reparse_command_redoes_pending_rows(tmp_path):
    config = make_config(tmp_path)

    async def seed():
        store = await open_store(config.store)
        await store.store_inbound("192.0.2.1:25", "", ["x@bounces.test"], (DATA / "arf-14.eml").read_bytes())
        await store.close()

    asyncio.run(seed())
    env = {"PYTHONPATH": str(ROOT), "BOUNCEPROXY_STORE__PATH": config.store.path, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "proxy", "reparse"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "reparsed 1 inbound mail" in out.stdout
    listing = subprocess.run([sys.executable, "-m", "proxy", "inbound", "--json"], env=env, capture_output=True,
                             text=True, cwd=tmp_path)
    assert '"state": "parsed"' in listing.stdout and '"kind": "complaint"' in listing.stdout


@pytest.mark.parametrize("mangle", ["truncated", "garbage", "wrong_charset"])
async def test_bad_input_is_stored_and_never_crashes(svc, mangle):
    raw = (DATA / "lhost-postfix-06.eml").read_bytes()
    if mangle == "truncated":
        raw = raw[: len(raw) // 2]
    elif mangle == "garbage":
        raw = bytes(range(256)) * 40 + b"\r\n" + raw[:500]
    else:
        raw = raw.replace(b"Content-Type: text/plain", b"Content-Type: text/plain; charset=x-no-such-charset")
    reply = await deliver(svc, raw, "bounces@bounces.test")
    assert reply.code == 250
    (row,) = await inbound(svc)
    assert row.state in ("parsed", "failed") and row.raw == on_the_wire(raw)


async def test_big_bounce_and_many_recipients(svc):
    base = (DATA / "lhost-postfix-06.eml").read_bytes()
    head, sep, rest = base.partition(b"Final-Recipient:")
    block = b"Final-Recipient:" + rest.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    many = b"".join(block.replace(b"kijitora@", f"user{n}@".encode()) + b"\n\n" for n in range(1000))
    report = head + many + rest.split(b"\n\n", 1)[1]
    await deliver(svc, report, "bounces@bounces.test")
    assert len(await events(svc)) == 1000
    big = base + b"X" * 76 + (b"\r\n" + b"Y" * 76) * 390_000  # ~30 MB of trailing text
    reply = await deliver(svc, big, "bounces@bounces.test")
    assert reply.code == 250
    (last, *_) = await svc.store.list_inbound(InboundFilter(limit=1))
    assert last.size >= 30_000_000


async def test_size_limit_is_552_534(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", KEY)
    config = make_config(tmp_path, upstream.port, inbound={"max_message_size": 10_000, "plain_addresses": ("b@bounces.test",)})
    async with Service(config) as svc:
        smtp = await mx(svc)
        await smtp.mail("")
        await smtp.rcpt("b@bounces.test")
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 300)
        assert refused.value.code == 552 and refused.value.message.startswith("5.3.4")
        await smtp.quit()
        assert await inbound(svc) == [] and await svc.store.count_rows("inbound") == 0


async def test_simulator_closes_the_loop_on_one_machine(tmp_path):
    config = make_config(tmp_path, upstream={"simulator_async_delay": 0.05})
    async with Service(config) as svc:
        smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
        await smtp.connect()
        await smtp.sendmail("app@example.com", ["ooto@simulator.amazonses.com", "complaint@simulator.amazonses.com",
                                                "latebounce@simulator.amazonses.com"],
                            b"From: app@example.com\r\nSubject: loop\r\n\r\nhi\r\n")
        await smtp.quit()
        for _ in range(100):
            await asyncio.sleep(0.05)
            await svc.inbound_worker.drain()
            if len(await events(svc)) == 3:
                break
        by_kind = {e.kind: e for e in await events(svc)}
        assert set(by_kind) == {"autoreply", "complaint", "bounce"}
        assert all(e.correlation == "verp" for e in by_kind.values())
        assert by_kind["bounce"].recipient == "latebounce@simulator.amazonses.com"
        assert by_kind["bounce"].bounce_type == "hard" and by_kind["complaint"].feedback_type == "abuse"


def _cli(tmp_path, *args, svc: Service | None = None):
    env = {"PYTHONPATH": str(ROOT), "BOUNCEPROXY_STORE__PATH": str(tmp_path / "bounceproxy.db"), "PATH": "/usr/bin:/bin"}
    if svc is not None and svc.config.store.backend == "postgresql":
        env.update(BOUNCEPROXY_STORE__BACKEND="postgresql", BOUNCEPROXY_STORE__URL=svc.config.store.url)
    return subprocess.run([sys.executable, "-m", "proxy", *args], env=env, capture_output=True, text=True, cwd=tmp_path)


async def test_bounces_as_ses_notifications_and_reclassification(svc, tmp_path):
    import json

    message = await relay_one(svc, "kijitora@neko.example.jp")
    await deliver(svc, (DATA / "lhost-postfix-06.eml").read_bytes(), message.verp_token)
    await relay_one(svc, "unknown.z@example.net")
    out = await asyncio.to_thread(_cli, tmp_path, "bounces", "--format", "ses", svc=svc)
    notes = [json.loads(line) for line in out.stdout.splitlines()]
    assert {n["notificationType"] for n in notes} == {"Bounce"} and len(notes) == 2
    late = next(n for n in notes if n["bounce"]["bouncedRecipients"][0]["emailAddress"] == "kijitora@neko.example.jp")
    assert late["bounce"]["bounceType"] == "Permanent" and late["bounce"]["bouncedRecipients"][0]["status"] == "5.4.4"
    assert late["mail"]["source"] == "app@example.com" and late["mail"]["destination"] == ["kijitora@neko.example.jp"]
    # a classifier upgrade: stale verdicts are re-derived in place, with the version recorded
    stale = await events(svc)
    for e in stale:
        e.reason, e.bounce_type, e.parser_version = "undefined", "undetermined", "old"
    await svc.store.update_events_verdicts(stale)
    assert {(e.reason, e.parser_version) for e in await events(svc)} == {("undefined", "old")}
    out = await asyncio.to_thread(_cli, tmp_path, "reparse", "--classify-only", svc=svc)
    assert out.returncode == 0 and "reclassified 2 event(s)" in out.stdout
    verdicts = {(e.recipient, e.reason, e.bounce_type) for e in await events(svc)}
    assert verdicts == {("kijitora@neko.example.jp", "hostunknown", "hard"), ("unknown.z@example.net", "userunknown", "hard")}
    assert {e.parser_version for e in await events(svc)} != {"old"}


def test_classify_command_prints_verdict_and_evidence(tmp_path):
    out = _cli(tmp_path, "classify", "550 5.1.1 <a@b>: Recipient address rejected: User unknown")
    assert out.returncode == 0 and out.stdout.startswith("userunknown / hard / 5.1.1")
    assert "user unknown" in out.stdout  # the table row that decided it
    out = _cli(tmp_path, "classify", "--json", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org")
    assert '"reason": "blocked"' in out.stdout and '"bounce_type": "soft"' in out.stdout
