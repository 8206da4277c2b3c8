"""Message status means one thing (issue 10 §6, MessageStatus): each status through the real relay,
a scripted upstream on a loopback port and the bounce log (SQLite, then PostgreSQL), plus the in-flight
record (§7)."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import aiosmtplib
import pytest

from proxy.app import Service
from proxy.model import MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, Suppression, settle_status
from proxy.store import MessageFilter
from tests.conftest import ScriptedUpstream, make_config, start_upstream

BODY = b"From: app@example.com\r\nMessage-ID: <status-1@example.com>\r\nSubject: s\r\n\r\nhello\r\n"


async def send(svc: Service, recipients: list[str], sender: str = "app@example.com", body: bytes = BODY):
    """sendmail through the relay; returns the refused recipients, or the SMTP error that ended it."""
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False, timeout=10)
    await smtp.connect()
    try:
        errors, _ = await smtp.sendmail(sender, recipients, body)
        return errors
    except aiosmtplib.SMTPException as exc:
        return exc
    finally:
        if smtp.is_connected:
            await smtp.quit()


@pytest.fixture
async def service(service_any):
    """Every test of this file that takes `service` runs on both backends."""
    return service_any


async def message(svc: Service) -> MessageRecord:
    """The one message logged, with its recipients."""
    (msg,) = await svc.store.list_messages(MessageFilter())
    return msg


async def recipients(svc: Service) -> dict[str, str]:
    assert await svc.store.count_rows("recipients") == len((await message(svc)).recipients)
    return {r.address: r.status for r in (await message(svc)).recipients}


async def test_sent_every_recipient_accepted_and_end_of_data_250(service, upstream):
    assert await send(service, ["a@example.net", "b@example.net"]) == {}
    msg = await message(service)
    assert msg.status == "sent" and msg.upstream_reply.startswith("250 ")
    assert (await recipients(service)) == {"a@example.net": "accepted", "b@example.net": "accepted"}
    assert upstream.handler.messages[-1][1] == ["a@example.net", "b@example.net"]


@pytest.mark.parametrize("refused, reply", [
    ("later@example.net", "454 4.3.0 Temporary local problem, try again later"),  # the case
    ("throttle@example.net", "454 Throttling failure: Maximum sending rate exceeded."),  # a send failure at RCPT
    ("unknown@example.net", None),  # 550 5.1.1
])
async def test_partial_some_accepted_others_refused_or_deferred(service, upstream, refused, reply):
    if reply:
        upstream.handler.rcpt_replies[refused.split("@")[0]] = reply
    errors = await send(service, ["good@example.net", refused])
    assert list(errors) == [refused]
    msg = await message(service)
    assert msg.status == "partial"  # delivered to good@: never failed, never rejected
    assert (await recipients(service))["good@example.net"] == "accepted"
    assert upstream.handler.messages[-1][1] == ["good@example.net"]


async def test_rejected_every_recipient_refused_permanently(service, upstream):
    result = await send(service, ["unknown1@example.net", "unknown2@example.net"])
    assert isinstance(result, aiosmtplib.SMTPRecipientsRefused)
    assert (await message(service)).status == "rejected"
    assert upstream.handler.messages == []


async def test_rejected_message_refused_permanently_at_end_of_data(service):
    result = await send(service, ["contentfail@example.net"])
    assert isinstance(result, aiosmtplib.SMTPDataError) and result.code == 554
    msg = await message(service)
    assert msg.status == "rejected" and msg.upstream_reply.startswith("554 5.6.0")


async def _suppress(svc: Service, address: str, kind: str, reason: str) -> None:
    expires = time.time() + 86400 if kind == "soft" else None
    await svc.store.upsert_suppressions([Suppression("", address, reason, kind, time.time(), expires)])
    await svc.suppressor.refresh()


async def test_rejected_only_recipient_hard_suppressed(service, upstream):
    """A hard suppression is a 5xx at RCPT: the same status as a 550 from the upstream."""
    await _suppress(service, "gone@example.net", "hard", "userunknown")
    result = await send(service, ["gone@example.net"])
    assert isinstance(result, aiosmtplib.SMTPRecipientsRefused)
    assert (await message(service)).status == "rejected"
    assert (await recipients(service)) == {"gone@example.net": "suppressed"}
    assert upstream.handler.messages == []


async def test_failed_only_recipient_softly_suppressed(service, upstream):
    """A soft suppression answers 4xx (it expires; the client should keep the message): failed, not rejected."""
    await _suppress(service, "full@example.net", "soft", "mailboxfull")
    result = await send(service, ["full@example.net"])
    assert isinstance(result, aiosmtplib.SMTPRecipientsRefused)
    assert result.recipients[0].code // 100 == 4
    assert (await message(service)).status == "failed"
    assert (await recipients(service)) == {"full@example.net": "suppressed"}


async def test_failed_only_recipient_deferred(service):
    result = await send(service, ["greylist@example.net"])
    assert isinstance(result, aiosmtplib.SMTPRecipientsRefused)
    assert (await message(service)).status == "failed"


async def test_failed_mixed_permanent_and_temporary_refusals_nothing_sent(service):
    """Nothing went out, but a retry may still reach the deferred one: failed, not rejected."""
    result = await send(service, ["unknown@example.net", "greylist@example.net"])
    assert isinstance(result, aiosmtplib.SMTPRecipientsRefused)
    assert (await message(service)).status == "failed"


async def test_failed_send_failure_throttled_sender(service):
    result = await send(service, ["a@example.net"], sender="throttled@example.com")
    assert isinstance(result, aiosmtplib.SMTPSenderRefused) and result.code == 454
    msg = await message(service)
    assert msg.status == "failed" and msg.send_failure.startswith("throttled")


async def test_failed_client_gave_up_before_data(service, upstream):
    smtp = aiosmtplib.SMTP(hostname=service.relay_address[0], port=service.relay_address[1], start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.mail("app@example.com")
    assert (await smtp.rcpt("a@example.net")).code == 250
    await smtp.rset()
    await smtp.quit()
    assert (await message(service)).status == "failed"
    assert upstream.handler.messages == []


async def test_possibly_sent_when_the_connection_is_lost_after_the_body(service, upstream):
    """The scripted upstream read the whole message, then dropped the connection instead of answering."""
    result = await send(service, ["lostdata@example.net"])
    assert isinstance(result, aiosmtplib.SMTPDataError) and result.code == 451
    msg = await message(service)
    assert msg.status == "possibly_sent" and "connection lost during DATA" in msg.upstream_reply
    assert msg.message_id == "status-1@example.com"


class HeldUpstream(ScriptedUpstream):
    """Holds its answer to the end of data until the test lets it go."""

    def __init__(self):
        super().__init__()
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.received: list[bytes] = []  # every whole message it read, answered or not

    async def handle_DATA(self, server, session, envelope):
        self.received.append(envelope.original_content)
        self.arrived.set()
        await self.release.wait()
        return await super().handle_DATA(server, session, envelope)


async def test_in_flight_record_is_committed_before_the_end_of_data_goes_upstream(tmp_path, monkeypatch, store_url):
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", "status-test-key-0123456789")
    up = await start_upstream(HeldUpstream())
    try:
        async with Service(make_config(tmp_path, up.port, store_url=store_url)) as svc:
            sending = asyncio.create_task(send(svc, ["a@example.net", "unknown@example.net"]))
            await asyncio.wait_for(up.handler.arrived.wait(), 10)
            # the upstream has the message and has not answered: the log already holds it, in flight
            msg = await message(svc)
            assert msg.status == "pending" and msg.message_id == "status-1@example.com"
            assert msg.verp_token and msg.verp_token.startswith("bounce")
            assert (await recipients(svc)) == {"a@example.net": "accepted", "unknown@example.net": "rejected"}
            up.handler.release.set()
            assert list(await sending) == ["unknown@example.net"]
            assert (await message(svc)).status == "partial"  # the same row, updated with the outcome
    finally:
        up.server.close()


def test_settle_status_rules():
    """The one decision, on its own: every branch of MessageStatus's definitions."""
    ok = RecipientRecord("a@x", RecipientStatus.ACCEPTED, "250 2.1.5 Ok")
    hard = RecipientRecord("b@x", RecipientStatus.REJECTED, "550 5.1.1 unknown")
    soft = RecipientRecord("c@x", RecipientStatus.DEFERRED, "450 4.2.0 greylisted")
    sup_hard = RecipientRecord("d@x", RecipientStatus.SUPPRESSED, "550 5.1.1 suppressed")
    sup_soft = RecipientRecord("e@x", RecipientStatus.SUPPRESSED, "452 4.2.2 mailbox repeatedly full")
    assert settle_status([ok], 250, None) == MessageStatus.SENT
    assert settle_status([ok, soft], 250, None) == MessageStatus.PARTIAL
    assert settle_status([ok, sup_hard], 250, "throttled: 454 ...") == MessageStatus.PARTIAL
    assert settle_status([hard, sup_hard], None, None) == MessageStatus.REJECTED
    assert settle_status([ok], 554, None) == MessageStatus.REJECTED
    assert settle_status([ok], 451, None) == MessageStatus.FAILED
    assert settle_status([ok], 554, "sender not verified: 554 ...") == MessageStatus.FAILED
    assert settle_status([hard, soft], None, None) == MessageStatus.FAILED
    assert settle_status([sup_soft], None, None) == MessageStatus.FAILED
    assert settle_status([ok], None, None) == MessageStatus.FAILED  # abandoned before DATA
    assert settle_status([], None, "upstream unavailable: ...") == MessageStatus.FAILED


async def test_duplicates_are_counted_and_listed_over_http(service):
    """The same Message-ID out twice to one recipient is a duplicate; to another recipient (an MTA splitting
    one message over transactions) it is not, nor is a refused attempt."""
    assert await send(service, ["a@example.net"]) == {}
    assert await send(service, ["b@example.net"]) == {}  # same Message-ID, other recipient: no duplicate
    assert isinstance(await send(service, ["unknown@example.net"]), aiosmtplib.SMTPRecipientsRefused)
    assert await send(service, ["A@example.net"]) == {}  # the retry: a duplicate (addresses compare caselessly)
    base = f"http://127.0.0.1:{service.api_address[1]}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/stats") as r:
            assert (await r.json())["duplicates"] == 1
        async with http.get(f"{base}/api/messages?duplicates=true") as r:
            dupes = (await r.json())["messages"]
        async with http.get(f"{base}/api/messages") as r:
            every = (await r.json())["messages"]
        async with http.get(f"{base}/api/messages?duplicates=maybe") as r:
            assert r.status == 400 and "duplicates" in (await r.json())["error"]
    assert sorted(m["recipients"][0] for m in dupes) == ["A@example.net", "a@example.net"]
    assert all(m["duplicate"] is True for m in dupes)
    assert sorted((m["recipients"][0], m["duplicate"]) for m in every) == [
        ("A@example.net", True), ("a@example.net", True), ("b@example.net", False), ("unknown@example.net", False)]
