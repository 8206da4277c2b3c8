"""Acting on bounces: the suppression list in the relay, decay, forged feedback, the guard."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.config import SuppressionConfig
from proxy.model import BounceEvent, BounceType, Kind, MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, Source
from proxy.store import MessageFilter, SuppressionFilter, store_for_url
from proxy.suppression import SuppressionIndex, Suppressor, normalize_address
from tests.conftest import ROOT, make_config
from tests.test_inbound import DATA, KEY, deliver, events, relay_one


@pytest.fixture
async def svc(tmp_path, upstream, monkeypatch, store_url):
    """The whole loop on each backend in turn (SQLite, then PostgreSQL)."""
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", KEY)
    config = make_config(tmp_path, upstream.port, store_url=store_url,
                         inbound={"plain_addresses": ("bounces@bounces.test",)})
    async with Service(config) as service:
        yield service


async def suppressions(svc: Service) -> list:
    return await svc.store.list_suppressions(SuppressionFilter(limit=None))


async def rcpt_reply(svc: Service, recipient: str, sender: str = "app@example.com") -> aiosmtplib.SMTPResponse:
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.mail(sender)
    reply = await smtp.execute_command(b"RCPT", f"TO:<{recipient}>".encode())
    await smtp.rset()
    await smtp.quit()
    return reply


async def test_real_dsn_suppresses_and_the_next_message_is_refused_at_rcpt(svc, upstream):
    message = await relay_one(svc, "kijitora@neko.example.jp")
    await deliver(svc, (DATA / "lhost-postfix-06.eml").read_bytes(), message.verp_token)
    sent_before = len(upstream.handler.mail_from)
    reply = await rcpt_reply(svc, "Kijitora@NEKO.example.jp")
    assert reply.code == 550
    assert reply.message.startswith("5.1.1 <Kijitora@NEKO.example.jp>: address is on the suppression list (hard bounce ")
    assert reply.message.endswith(", hostunknown)")
    (row,) = await suppressions(svc)
    assert row.address == "kijitora@neko.example.jp" and row.kind == "hard" and row.source_event is not None
    (event,) = await events(svc, source="async")
    assert row.source_event == event.id  # the event that suppressed it
    recorded = [r for m in await svc.store.list_messages(MessageFilter(recipient="Kijitora@NEKO.example.jp"))
                for r in m.recipients if r.address == "Kijitora@NEKO.example.jp"]
    assert [r.status for r in recorded] == ["suppressed"]
    # the refused RCPT cost no upstream RCPT: only the MAIL of that transaction went upstream
    assert len(upstream.handler.mail_from) == sent_before + 1


async def test_other_recipients_of_the_same_message_go_on(svc, upstream):
    await relay_one(svc, "unknown.person@example.net")  # a sync 550 5.1.1: hard, suppressed at once
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    errors, _ = await smtp.sendmail("app@example.com", ["unknown.person@example.net", "friend@example.net"],
                                    b"Subject: two\r\n\r\nhi\r\n")
    await smtp.quit()
    assert errors["unknown.person@example.net"][0] == 550
    assert upstream.handler.messages[-1][1] == ["friend@example.net"]


async def test_forged_dsn_without_our_token_suppresses_nobody(svc):
    """A bounce for a real recipient, sent to the plain address with no tie to a message we sent."""
    await relay_one(svc, "kijitora@neko.example.jp")
    await deliver(svc, (DATA / "lhost-postfix-06.eml").read_bytes(), "bounces@bounces.test")
    (event,) = await events(svc)
    assert event.correlation == "recipient_window"  # recorded and shown...
    assert await suppressions(svc) == []  # ...but not acted on
    assert (await rcpt_reply(svc, "kijitora@neko.example.jp")).code == 250


async def test_complaint_suppresses(svc):
    message = await relay_one(svc, "kijitora@y.example.com")
    await deliver(svc, (DATA / "arf-14.eml").read_bytes(), message.verp_token)
    (row,) = await suppressions(svc)
    assert row.kind == "complaint"
    reply = await rcpt_reply(svc, "kijitora@y.example.com")
    assert reply.code == 550 and "complaint" in reply.message


async def test_sender_side_refusals_and_autoreplies_never_suppress(svc):
    for _ in range(4):
        await relay_one(svc, "blocked.user@example.net")  # 554 5.7.1 blocked using spamhaus
    message = await relay_one(svc, "nekonyaan@example.org")
    await deliver(svc, (DATA / "rfc3834-02.eml").read_bytes(), message.verp_token)
    assert await suppressions(svc) == []
    hard = await events(svc, bounce_type="hard")
    assert hard == []


async def test_observe_mode_logs_but_sends(tmp_path, upstream, monkeypatch):
    config = make_config(tmp_path, upstream.port, suppression={"mode": "observe"})
    async with Service(config) as svc:
        await relay_one(svc, "unknown.x@example.net")
        assert await suppressions(svc)
        reply = await rcpt_reply(svc, "unknown.x@example.net")
        assert reply.code == 550 and "Recipient address rejected" in reply.message  # the upstream's answer
        assert svc.suppressor.observed == 1


async def _soft_event(store, recipient: str, at: float, reason: str = "mailboxfull", kind=Kind.BOUNCE) -> BounceEvent:
    mid = f"m{at:.0f}{reason}{kind}"
    event = BounceEvent(at=at, source=Source.SYNC, kind=kind, recipient=recipient,
                        bounce_type=BounceType.SOFT if kind == Kind.BOUNCE else BounceType.UNDETERMINED,
                        reason=reason, relay_id=mid)
    message = MessageRecord(id=mid, created_at=at, sender="app@example.com", status=MessageStatus.FAILED,
                            recipients=[RecipientRecord(recipient, RecipientStatus.DEFERRED)])
    await store.record_message(message, [event])
    return event


async def test_soft_bounces_suppress_with_decay_on_an_injected_clock(any_store):
    store = any_store
    now = [1_800_000_000.0]
    sup = Suppressor(SuppressionConfig(), store, clock=lambda: now[0])
    await sup.start()
    try:
        day = 86400
        addr = "full@example.net"
        # three soft bounces, but spread over more than 14 days: no suppression
        for offset in (0, 8 * day, 16 * day):
            now[0] = 1_800_000_000.0 + offset
            await sup.consider([await _soft_event(store, addr, now[0])])
        assert await sup.lookup("app@example.com", addr) is None
        # a sender-side refusal in between does not count
        now[0] += day
        await sup.consider([await _soft_event(store, addr, now[0], reason="blocked")])
        assert await sup.lookup("app@example.com", addr) is None
        # the third within 14 days suppresses, for 7 days
        now[0] += day
        await sup.consider([await _soft_event(store, addr, now[0])])
        row = await sup.lookup("app@example.com", addr)
        assert row is not None and row.kind == "soft" and row.expires_at == pytest.approx(now[0] + 7 * day)
        now[0] += 7 * day + 1
        assert await sup.lookup("app@example.com", addr) is None  # expired
        # a delivery resets the count
        other = "reset@example.net"
        for _ in range(2):
            now[0] += 3600
            await sup.consider([await _soft_event(store, other, now[0])])
        now[0] += 3600
        await _soft_event(store, other, now[0], reason="delivered", kind=Kind.DELIVERED)
        now[0] += 3600
        await sup.consider([await _soft_event(store, other, now[0])])
        assert await sup.lookup("app@example.com", other) is None
    finally:
        await sup.stop()


def test_index_is_compact_and_exact_enough():
    index = SuppressionIndex()
    index.load([("", f"user{n}@example.com") for n in range(100_000)])
    assert index.maybe("", "user99999@example.com") and not index.maybe("", "user100000@example.com")
    assert not index.maybe("example.org", "user1@example.com")  # scopes are separate lists
    index.add("", "new@example.com")
    assert index.maybe("", "new@example.com")
    assert index._sorted.itemsize * len(index._sorted) == 800_000  # 8 bytes an address


def test_normalisation():
    assert normalize_address("<User+Tag@Bücher.Example.>") == "user+tag@xn--bcher-kva.example"


async def test_reputation_guard_pauses_and_resume_lifts_it(tmp_path, upstream):
    config = make_config(tmp_path, upstream.port, suppression={"pause_bounce_rate": 0.3, "rate_min_recipients": 4})
    async with Service(config) as svc:
        for n in range(3):
            await relay_one(svc, f"ok{n}@example.net")
        await relay_one(svc, "unknown.a@example.net")
        await relay_one(svc, "unknown.b@example.net")  # 2 hard out of 5 recipients = 40 %
        smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        paused = await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>")
        assert paused.code == 451 and paused.message.startswith("4.7.1 Sending for example.com is paused")
        other = await smtp.execute_command(b"MAIL", b"FROM:<app@other.example>")
        assert other.code == 250  # another identity is not paused
        await smtp.quit()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")},
               "PYTHONPATH": str(ROOT), "BOUNCEPROXY_STORE__PATH": config.store.path}
        out = subprocess.run([sys.executable, "-m", "proxy", "resume", "example.com"], env=env, capture_output=True,
                             text=True, cwd=tmp_path)
        assert out.returncode == 0 and "resumed example.com" in out.stdout
        await svc.suppressor.refresh()
        assert svc.suppressor.paused_reply("app@example.com") is None


def _cli(tmp_path, *args, stdin=None):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")},
           "PYTHONPATH": str(ROOT), "BOUNCEPROXY_STORE__PATH": str(tmp_path / "bounceproxy.db")}
    return subprocess.run([sys.executable, "-m", "proxy", *args], env=env, capture_output=True, text=True,
                          cwd=tmp_path, input=stdin)


def test_ses_csv_round_trips_through_import_and_export(tmp_path):
    _cli(tmp_path, "serve", "--help")
    import asyncio

    asyncio.run(_create(tmp_path))
    ses_export = (
        "EmailAddress,Reason,LastUpdateTime\n"
        "bounced@example.com,BOUNCE,2026-11-20T10:00:00.000Z\n"
        "angry@example.org,COMPLAINT,2026-11-21T11:30:00.000Z\n"
    )
    (tmp_path / "in.csv").write_text(ses_export)
    out = _cli(tmp_path, "suppressions", "import", "in.csv")
    assert out.returncode == 0 and "imported 2" in out.stdout
    exported = _cli(tmp_path, "suppressions", "export").stdout
    assert sorted(csv.reader(io.StringIO(exported))) == sorted(csv.reader(io.StringIO(ses_export)))
    check = _cli(tmp_path, "check", "Angry@Example.org", "--json")
    assert '"suppressed": true' in check.stdout and '"kind": "complaint"' in check.stdout
    assert _cli(tmp_path, "suppressions", "remove", "angry@example.org").returncode == 0
    assert "angry@example.org" not in _cli(tmp_path, "suppressions", "export").stdout
    bad = _cli(tmp_path, "suppressions", "import", "missing.csv")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    (tmp_path / "bad.csv").write_text("EmailAddress,Reason\nnot-an-address,BOUNCE\n")
    bad = _cli(tmp_path, "suppressions", "import", "bad.csv")
    assert bad.returncode == 1 and "bad.csv:2" in bad.stderr


async def _create(tmp_path):
    store = await store_for_url(f"sqlite:///{tmp_path / 'bounceproxy.db'}").open()
    await store.close()


async def test_dns_preflight_in_the_relay(tmp_path, upstream):
    """NXDOMAIN and null MX are refused at RCPT as hard bounces with no upstream send;
    a resolver that never answers fails open."""
    from tests.dnsserver import ZONES, DNSServer

    async with DNSServer(ZONES, negative_ttl=60, drop={"slow.test"}) as dns:
        config = make_config(tmp_path, upstream.port,
                             preflight={"enabled": True, "resolvers": (dns.address,), "timeout": 0.3})
        async with Service(config) as svc:
            nx = await rcpt_reply(svc, "someone@nothere.test")
            assert nx.code == 550 and nx.message == "5.1.2 <someone@nothere.test>: recipient domain nothere.test does not exist (NXDOMAIN)"
            null = await rcpt_reply(svc, "someone@nullmx.test")
            assert null.code == 556 and null.message.startswith("5.1.10 ")
            assert (await rcpt_reply(svc, "someone@good.test")).code == 250
            assert (await rcpt_reply(svc, "someone@slow.test")).code == 250  # fail open
            assert svc.preflight.stats["timeouts"] >= 1
            by = {e.recipient: e for e in await events(svc)}
            assert (by["someone@nothere.test"].reason, by["someone@nothere.test"].bounce_type) == ("hostunknown", "hard")
            assert by["someone@nullmx.test"].reason == "notaccept" and by["someone@nullmx.test"].bounce_type == "hard"
            assert by["someone@nothere.test"].remote_mta == "dns-preflight"
        assert not any(r.endswith(("nothere.test", "nullmx.test")) for m in upstream.handler.messages for r in m[1])


async def test_forged_feedback_of_every_kind_suppresses_nobody(svc):
    """Forgeries aimed at real customers: plain address with a real recipient, a quoted Message-ID
    copied from a real message, a complaint, and tokens with a bad signature."""
    from proxy.dsn import parse

    real = await relay_one(svc, "kijitora@neko.example.jp",
                           b"From: app@example.com\r\nMessage-ID: <real-1@example.com>\r\nSubject: x\r\n\r\nhi\r\n")
    dsn = (DATA / "lhost-postfix-06.eml").read_bytes()
    quoted = parse(dsn).original.message_id.strip("<>")
    with_real_id = dsn.replace(quoted.encode(), b"real-1@example.com")
    arf = (DATA / "arf-14.eml").read_bytes()
    forged_token = real.verp_token.replace(real.verp_token.split("-")[-1].split("@")[0], "aaaaaaaaaa")
    sent = refused = 0
    for raw, rcpt in [(dsn, "bounces@bounces.test"), (with_real_id, "bounces@bounces.test"),
                      (arf, "bounces@bounces.test"), (dsn, forged_token),
                      (dsn, "bounce+" + "a" * 17 + "-bbbbbbbbbb@bounces.test")]:
        sent += 1
        try:
            await deliver(svc, raw, rcpt)
        except aiosmtplib.SMTPRecipientRefused as exc:
            assert exc.code == 550
            refused += 1
    assert refused == 2  # the forged tokens never got past RCPT
    late = await events(svc, source="async")
    assert {e.correlation for e in late} <= {"message_id", "recipient_window", "none"}
    assert await suppressions(svc) == [] and await svc.store.count_rows("suppressions") == 0
    assert (await rcpt_reply(svc, "kijitora@neko.example.jp")).code == 250
