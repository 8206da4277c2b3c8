"""The private Postfix instance (tests/postfix.py) works: it relays to its relayhost, and a recipient
its transport table routes to a refusing peer makes it send a real DSN to the sender domain's next hop."""
from __future__ import annotations

import asyncio
import email
import re
import smtplib

import pytest
from aiosmtpd.smtp import SMTP

from tests.postfix import PrivatePostfix, available

reason = available()
if reason:
    pytest.skip(reason, allow_module_level=True)

MESSAGE = (
    b"From: App <app@senders.test>\r\n"
    b"To: user@example.net\r\n"
    b"Subject: through a private postfix\r\n"
    b"Date: Tue, 24 Nov 2026 06:00:00 +0000\r\n"
    b"Message-ID: <pf-test-1@senders.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"body line one\r\n"
    b".a line that starts with a dot\r\n"
    b"trailing spaces   \r\n"
)


class Sink:
    """An aiosmtpd peer that keeps what it is given, or refuses every recipient with `refuse`."""

    def __init__(self, refuse: str | None = None):
        self.refuse = refuse
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.arrived = asyncio.Event()
        self.server = None
        self.port = 0

    async def handle_RCPT(self, server, session, envelope, address, options):
        if self.refuse:
            return self.refuse.format(address=address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        self.arrived.set()
        return "250 2.0.0 Ok: kept"

    async def start(self) -> "Sink":
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: SMTP(self, hostname="sink.test"), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def wait(self, timeout: float = 10) -> tuple[str, list[str], bytes]:
        await asyncio.wait_for(self.arrived.wait(), timeout)
        return self.messages[-1]


@pytest.fixture
async def peers():
    sinks = {
        "relay": await Sink().start(),
        "bounce_mx": await Sink().start(),
        "refuser": await Sink("550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table").start(),
    }
    yield sinks
    for s in sinks.values():
        s.server.close()


@pytest.fixture
async def postfix(tmp_path, peers):
    pf = PrivatePostfix(
        tmp_path / "postfix",
        relayhost=f"[127.0.0.1]:{peers['relay'].port}",
        transport={
            "reject.test": f"smtp:[127.0.0.1]:{peers['refuser'].port}",
            "senders.test": f"smtp:[127.0.0.1]:{peers['bounce_mx'].port}",
        },
        myhostname="mta.postfix.test",
        mydomain="postfix.test",
    )
    try:
        await asyncio.to_thread(pf.start)
        yield pf
    finally:
        await asyncio.to_thread(pf.stop)
        assert not pf.pids(), "postfix processes left behind"


def submit(pf: PrivatePostfix, sender: str, recipients: list[str], message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", pf.smtpd_port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        refused = smtp.sendmail(sender, recipients, message)
        assert refused == {}


async def test_relays_to_relayhost_byte_for_byte(postfix, peers):
    await asyncio.to_thread(submit, postfix, "app@senders.test", ["user@example.net"], MESSAGE)
    sender, rcpts, content = await peers["relay"].wait()
    assert (sender, rcpts) == ("app@senders.test", ["user@example.net"])
    # Postfix prepends its Received: line; the message itself arrives unchanged
    assert content.startswith(b"Received: from client.test")
    assert content.endswith(MESSAGE)
    await asyncio.to_thread(postfix.wait_queue_empty, 10)
    assert peers["bounce_mx"].messages == [] and peers["refuser"].messages == []
    assert "status=sent" in postfix.log_text()


async def test_refused_recipient_produces_a_dsn_at_the_senders_next_hop(postfix, peers):
    await asyncio.to_thread(submit, postfix, "app@senders.test", ["nobody@reject.test"], MESSAGE)
    sender, rcpts, dsn = await peers["bounce_mx"].wait(15)
    assert (sender, rcpts) == ("<>", ["app@senders.test"])  # the null sender, to the envelope sender
    assert re.search(rb"^Content-Type: multipart/report; report-type=delivery-status;", dsn, re.M)
    report = email.message_from_bytes(dsn)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = {p.get_content_type(): p for p in report.walk()}
    assert "message/delivery-status" in parts
    status = parts["message/delivery-status"].as_bytes()
    assert b"Final-Recipient: rfc822; nobody@reject.test" in status
    assert b"Status: 5.1.1" in status
    assert b"User unknown in local recipient table" in status
    assert b"Message-ID: <pf-test-1@senders.test>" in dsn  # the original is quoted
    await asyncio.to_thread(postfix.wait_queue_empty, 10)
    assert peers["relay"].messages == []
    assert "status=bounced" in postfix.log_text()
