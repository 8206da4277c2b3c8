"""The whole loop with a real MTA: bounceproxy relays to a private Postfix, Postfix delivers to a peer
that refuses some recipients, Postfix itself writes the DSNs and delivers them to bounceproxy's
bounce MX, and each DSN becomes an asynchronous event on the right message and recipient."""
from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.model import BounceEvent, MessageRecord
from proxy.store import EventFilter, InboundFilter, MessageFilter
from tests.conftest import make_config
from tests.postfix import PrivatePostfix, available, free_port
from tests.test_postfix_instance import Sink

reason = available()
if reason:
    pytest.skip(reason, allow_module_level=True)

REFUSAL = "550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"




async def send(svc: Service, recipients: list[str], subject: str) -> MessageRecord:
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    await smtp.sendmail("app@senders.test", recipients,
                        f"From: app@senders.test\r\nSubject: {subject}\r\n\r\nhello\r\n".encode())
    await smtp.quit()
    (message,) = [m for m in await svc.store.list_messages(MessageFilter(limit=10**6)) if m.subject == subject]
    return message


async def wait_events(svc: Service, count: int, timeout: float = 40) -> list[BounceEvent]:
    for _ in range(int(timeout / 0.2)):
        await svc.inbound_worker.drain()
        found = sorted((e.event for e in await svc.store.list_events(EventFilter(source="async", limit=10**6))),
                       key=lambda e: e.id)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"only {len(found)} of {count} DSNs became events")


@pytest.mark.parametrize("verp", [True, False], ids=["verp", "upstream_id"])
async def test_postfix_dsns_become_events_on_the_right_message(tmp_path, monkeypatch, verp):
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", "postfix-loop-key-0123456789")
    refusing = await Sink(refuse=REFUSAL).start()
    accepting = await Sink().start()
    postfix_port = free_port()
    config = make_config(tmp_path, postfix_port, inbound={"verp": verp, "bounce_domains": ("bounces.test", "senders.test"),
                                                          "plain_addresses": ("app@senders.test",)})
    async with Service(config) as svc:
        transport = {
            "reject.test": f"smtp:[127.0.0.1]:{refusing.port}",
            "ok.test": f"smtp:[127.0.0.1]:{accepting.port}",
            "bounces.test": f"smtp:[127.0.0.1]:{svc.inbound_address[1]}",
            # without VERP the DSN goes back to the client's own sender: here, the bounce MX as well
            "senders.test": f"smtp:[127.0.0.1]:{svc.inbound_address[1]}",
        }
        with PrivatePostfix(tmp_path / "postfix", smtpd_port=postfix_port, transport=transport):
            first = await send(svc, ["kijitora@reject.test", "friend@ok.test"], "first")
            second = await send(svc, ["shironeko@reject.test"], "second")
            assert first.upstream_id and second.upstream_id  # Postfix's "queued as ID"
            events = await wait_events(svc, 2)
        inbound = await svc.store.list_inbound(InboundFilter(limit=10**6))
    by_rcpt = {e.recipient: e for e in events}
    assert set(by_rcpt) == {"kijitora@reject.test", "shironeko@reject.test"}
    expected = "verp" if verp else "upstream_id"
    for rcpt, message in (("kijitora@reject.test", first), ("shironeko@reject.test", second)):
        event = by_rcpt[rcpt]
        assert event.relay_id == message.id, rcpt
        assert event.correlation == expected
        assert (event.kind, event.status, event.bounce_type, event.reason) == ("bounce", "5.1.1", "hard", "userunknown")
        assert event.smtp_code == 550 and "User unknown in local recipient table" in event.diagnostic
        assert event.reporting_mta == "postfix.test"
    assert [m[1] for m in accepting.messages] == [["friend@ok.test"]]  # the other recipient was delivered
    assert {(r.format, r.kind, r.state) for r in inbound} == {("rfc3464", "bounce", "parsed")}
    refusing.server.close()
    accepting.server.close()
