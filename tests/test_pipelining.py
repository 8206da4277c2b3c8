"""Fewer round trips to the upstream (issue 15): PIPELINING towards it (RFC 2920).

Where the upstream offers PIPELINING, the RSET that ends a transaction left open goes in the same
write as the next MAIL, and a pipelining client's MAIL and RCPTs go upstream in one write; the client
still gets the upstream's own reply to each of its commands, a recipient the relay refuses itself is
never sent upstream, and an upstream without PIPELINING gets one command at a time. The upstream here
records the commands it received in each read: what arrived together."""
from __future__ import annotations

import asyncio
import time

import pytest

from proxy.app import Service
from proxy.model import Suppression
from proxy.store import MessageFilter
from tests.conftest import make_config

OK = b"250 2.0.0 Ok\r\n"
MESSAGE = b"From: app@example.com\r\nTo: user@example.net\r\nSubject: hi\r\n\r\nHello\r\n.\r\n"


class FlightUpstream:
    """An upstream that answers the commands of each read together, and records them per read."""

    def __init__(self, pipelining: bool = True):
        self.ehlo = b"250-flight.test\r\n" + (b"250-PIPELINING\r\n" if pipelining else b"") + b"250 8BITMIME\r\n"
        self.rcpt: dict[bytes, bytes] = {}  # recipient -> its reply (default OK)
        self.rset: list[bytes] = []  # the next RSETs' replies (default OK)
        self.flights: list[list[bytes]] = []  # the commands that arrived in one read, EHLO and QUIT left out
        self.accepted = 0  # recipients accepted in the transaction under way (DATA without one: 554)
        self.bodies: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> "FlightUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    def close(self) -> None:
        self.server.close()

    def _reply(self, line: bytes) -> bytes:
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            return self.ehlo
        if verb == b"RCPT":
            reply = self.rcpt.get(line[8:].strip(b"<>"), OK)
            self.accepted += reply[:1] == b"2"
            return reply
        if verb in (b"RSET", b"MAIL"):
            self.accepted = 0
        if verb == b"RSET":
            return self.rset.pop(0) if self.rset else OK
        if verb == b"DATA":
            if not self.accepted:
                return b"554 5.5.1 Error: no valid recipients\r\n"  # RFC 2920 3.1
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return OK

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 flight.test ESMTP\r\n")
        buf, body = bytearray(), None
        try:
            while chunk := await reader.read(65536):
                buf += chunk
                flight, out = [], bytearray()
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end + 1])
                    del buf[:end + 1]
                    if body is not None:
                        if line == b".\r\n":
                            self.bodies.append(bytes(body))
                            out += b"250 2.0.0 Ok: queued as F%d\r\n" % len(self.bodies)
                            body = None
                        else:
                            body += line
                        continue
                    command = line.rstrip(b"\r\n")
                    if command.split(b" ", 1)[0].upper() not in (b"EHLO", b"QUIT"):
                        flight.append(command)
                    out += self._reply(command)
                    if command.upper() == b"DATA" and self.accepted:
                        body = bytearray()
                if flight:
                    self.flights.append(flight)
                writer.write(bytes(out))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


class Client:
    """A raw client that can pipeline: writes several commands at once, reads their replies in order."""

    @classmethod
    async def open(cls, svc: Service) -> "Client":
        self = cls()
        self.reader, self.writer = await asyncio.open_connection(*svc.relay_address)
        assert (await self.replies(1))[0].startswith(b"220")
        self.writer.write(b"EHLO client.test\r\n")
        ehlo = (await self.replies(1))[0]
        assert b"PIPELINING" in ehlo
        return self

    async def replies(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            lines = []
            while True:
                line = await asyncio.wait_for(self.reader.readline(), 10)
                lines.append(line)
                if line[3:4] != b"-":
                    break
            out.append(b"".join(lines))
        return out

    async def send(self, *commands: bytes) -> list[bytes]:
        self.writer.write(b"".join(c + b"\r\n" for c in commands))
        return await self.replies(len(commands))

    async def message(self, body: bytes = MESSAGE) -> bytes:
        assert (await self.send(b"DATA"))[0].startswith(b"354")
        self.writer.write(body)
        return (await self.replies(1))[0]

    async def close(self) -> None:
        self.writer.write(b"QUIT\r\n")
        await self.replies(1)
        self.writer.close()


@pytest.fixture
async def flight():
    up = await FlightUpstream().start()
    yield up
    up.close()


@pytest.fixture
async def svc(tmp_path, flight):
    async with Service(make_config(tmp_path, flight.port)) as svc:
        yield svc


def verbs(flight: list[bytes]) -> list[bytes]:
    return [c.split(b" ", 1)[0].upper() for c in flight]


async def test_a_pipelining_clients_mail_and_rcpts_go_upstream_in_one_flight_each_with_its_own_reply(svc, flight):
    flight.rcpt[b"gone@example.net"] = b"550 5.1.1 <gone@example.net>: user unknown\r\n"
    flight.rcpt[b"later@example.net"] = b"450 4.2.1 <later@example.net>: try again later\r\n"
    client = await Client.open(svc)
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>",
                                b"RCPT TO:<gone@example.net>", b"RCPT TO:<later@example.net>")
    assert [r[:3] for r in replies] == [b"250", b"250", b"550", b"450"]
    assert replies[2] == b"550 5.1.1 <gone@example.net>: user unknown\r\n"  # the upstream's own words
    assert replies[3] == b"450 4.2.1 <later@example.net>: try again later\r\n"
    assert (await client.message()).startswith(b"250 2.0.0 Ok: queued as F1")
    await client.close()
    assert flight.flights[0] == [b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>",
                                 b"RCPT TO:<gone@example.net>", b"RCPT TO:<later@example.net>"]
    assert verbs(flight.flights[1]) == [b"DATA"]
    assert len(flight.bodies) == 1 and flight.bodies[0].endswith(b"\r\nHello\r\n")
    (message,) = await svc.store.list_messages(MessageFilter(limit=10))
    assert [(r.address, r.status) for r in message.recipients] == [
        ("ok@example.net", "accepted"), ("gone@example.net", "rejected"), ("later@example.net", "deferred")]


async def test_a_pipelined_data_goes_upstream_in_the_same_flight(svc, flight):
    """MAIL, RCPT and DATA in one write from the client: one flight upstream (one round trip fewer), the
    client still hearing each reply, the body arriving as sent."""
    client = await Client.open(svc)
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>", b"DATA")
    assert [r[:3] for r in replies] == [b"250", b"250", b"354"]
    client.writer.write(MESSAGE)
    assert (await client.replies(1))[0].startswith(b"250 2.0.0 Ok: queued as F1")
    await client.close()
    assert flight.flights[0] == [b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>", b"DATA"]
    [body] = flight.bodies
    assert body.startswith(b"Message-ID: <") and body.endswith(b"\r\n" + MESSAGE[:-3])  # the relay's Message-ID first
    (message,) = await svc.store.list_messages(MessageFilter(limit=10))
    assert message.status == "sent"


async def test_a_pipelined_data_whose_recipients_were_all_refused_sends_nothing(svc, flight):
    flight.rcpt[b"gone@example.net"] = b"550 5.1.1 <gone@example.net>: user unknown\r\n"
    client = await Client.open(svc)
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<gone@example.net>", b"DATA")
    assert [r[:3] for r in replies] == [b"250", b"550", b"503"]  # no recipient: the client's DATA is refused
    # the same connection, upstream too, carries the next transaction (its RSET folded into the MAIL)
    replies = await client.send(b"RSET", b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>")
    assert [r[:3] for r in replies] == [b"250", b"250", b"250"]
    assert (await client.message()).startswith(b"250 2.0.0 Ok: queued as F1")
    await client.close()
    assert flight.flights[0] == [b"MAIL FROM:<app@example.com>", b"RCPT TO:<gone@example.net>", b"DATA"]
    assert verbs(flight.flights[1]) == [b"RSET", b"MAIL", b"RCPT"] and flight.connections == 1
    assert len(flight.bodies) == 1 and flight.bodies[0].endswith(b"\r\n" + MESSAGE[:-3])


async def test_a_client_gone_after_its_pipelined_data_leaves_nothing_upstream(svc, flight):
    """The upstream had DATA and answered 354: the client never sends the body. That connection is
    closed, never reused (the next message would otherwise become the body): nothing is delivered."""
    client = await Client.open(svc)
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>", b"DATA")
    assert [r[:3] for r in replies] == [b"250", b"250", b"354"]
    client.writer.transport.abort()
    await asyncio.sleep(0.3)
    other = await Client.open(svc)
    assert [r[:3] for r in await other.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>")] == \
        [b"250", b"250"]
    assert (await other.message()).startswith(b"250 2.0.0 Ok: queued as F1")
    await other.close()
    assert len(flight.bodies) == 1 and flight.bodies[0].endswith(b"\r\n" + MESSAGE[:-3])
    assert flight.connections == 2


async def test_a_recipient_the_relay_refuses_itself_never_goes_upstream(svc, flight):
    await svc.store.upsert_suppressions([Suppression("", "suppressed@example.net", "userunknown", "hard", time.time())])
    await svc.suppressor.refresh()
    client = await Client.open(svc)
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>",
                                b"RCPT TO:<suppressed@example.net>", b"RCPT TO:<also@example.net>")
    assert [r[:3] for r in replies] == [b"250", b"250", b"550", b"250"]
    assert b"suppression list" in replies[2]
    assert (await client.message()).startswith(b"250 ")
    await client.close()
    assert flight.flights[0] == [b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>",
                                 b"RCPT TO:<also@example.net>"]
    assert not any(b"suppressed@" in c for f in flight.flights for c in f)
    (message,) = await svc.store.list_messages(MessageFilter(limit=10))
    assert [r.status for r in message.recipients] == ["accepted", "suppressed", "accepted"]


async def test_the_rset_after_an_open_transaction_goes_with_the_next_mail(svc, flight):
    client = await Client.open(svc)
    for i in range(2):  # a transaction left open: its only recipient refused, then the client's RSET
        flight.rcpt[b"gone%d@example.net" % i] = b"550 5.1.1 user unknown\r\n"  # (then suppressed)
        assert [r[:3] for r in await client.send(b"MAIL FROM:<app@example.com>")] == [b"250"]
        assert [r[:3] for r in await client.send(b"RCPT TO:<gone%d@example.net>" % i)] == [b"550"]
        assert (await client.send(b"RSET"))[0].startswith(b"250")
    assert [r[:3] for r in await client.send(b"MAIL FROM:<app@example.com>")] == [b"250"]
    assert [r[:3] for r in await client.send(b"RCPT TO:<ok@example.net>")] == [b"250"]
    assert (await client.message()).startswith(b"250 ")
    await client.close()
    assert flight.connections == 1
    assert [verbs(f) for f in flight.flights] == [
        [b"MAIL"], [b"RCPT"], [b"RSET", b"MAIL"], [b"RCPT"], [b"RSET", b"MAIL"], [b"RCPT"], [b"DATA"]], flight.flights
    assert not [f for f in flight.flights if verbs(f) == [b"RSET"]]  # never a round trip of its own


async def test_a_refused_rset_sends_the_message_on_a_fresh_connection(svc, flight):
    flight.rcpt[b"gone@example.net"] = b"550 5.1.1 user unknown\r\n"
    flight.rset.append(b"421 4.4.2 flight.test closing: timeout\r\n")
    client = await Client.open(svc)
    await client.send(b"MAIL FROM:<app@example.com>")
    await client.send(b"RCPT TO:<gone@example.net>")
    await client.send(b"RSET")
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>")
    assert [r[:3] for r in replies] == [b"250", b"250"]  # the client never hears of the refused RSET
    assert (await client.message()).startswith(b"250 2.0.0 Ok: queued as F1")
    await client.close()
    assert flight.connections == 2
    assert verbs(flight.flights[2])[:2] == [b"RSET", b"MAIL"]  # refused: that connection is closed
    assert flight.flights[3] == [b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>"]
    assert len(flight.bodies) == 1
    messages = await svc.store.list_messages(MessageFilter(limit=10))
    assert sorted(m.status for m in messages) == ["rejected", "sent"]


async def test_an_upstream_without_pipelining_gets_one_command_at_a_time(tmp_path):
    up = await FlightUpstream(pipelining=False).start()
    try:
        async with Service(make_config(tmp_path, up.port)) as svc:
            up.rcpt[b"gone@example.net"] = b"550 5.1.1 user unknown\r\n"
            client = await Client.open(svc)
            replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>",
                                        b"RCPT TO:<gone@example.net>")
            assert [r[:3] for r in replies] == [b"250", b"250", b"550"]
            assert (await client.message()).startswith(b"250 ")
            up.rcpt[b"gone2@example.net"] = b"550 5.1.1 user unknown\r\n"
            await client.send(b"MAIL FROM:<app@example.com>")
            await client.send(b"RCPT TO:<gone2@example.net>")
            await client.send(b"RSET")
            await client.send(b"MAIL FROM:<app@example.com>")
            await client.close()
    finally:
        up.close()
    assert all(len(f) == 1 for f in up.flights), up.flights
    assert [v for f in up.flights for v in verbs(f)] == [
        b"MAIL", b"RCPT", b"RCPT", b"DATA", b"MAIL", b"RCPT", b"RSET", b"MAIL", b"RSET"]


async def test_pipelining_false_in_the_config_sends_one_command_at_a_time(tmp_path, flight):
    async with Service(make_config(tmp_path, flight.port, upstream={"pipelining": False})) as svc:
        client = await Client.open(svc)
        replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<a@example.net>",
                                    b"RCPT TO:<b@example.net>")
        assert [r[:3] for r in replies] == [b"250", b"250", b"250"]
        assert (await client.message()).startswith(b"250 ")
        await client.close()
    assert all(len(f) == 1 for f in flight.flights), flight.flights


async def test_pipelined_rcpts_the_relay_cannot_take_as_plain_fall_back_to_one_at_a_time(svc, flight):
    client = await Client.open(svc)
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<a@example.net>",
                                b"RCPT TO:<b@example.net> NOTIFY=NEVER", b"RCPT TO:<c@example.net>")
    assert [r[:3] for r in replies] == [b"250", b"250", b"555", b"250"]
    await client.close()
    # a and the MAIL together; the parameter stops the look-ahead: c goes alone, b never
    assert flight.flights[0] == [b"MAIL FROM:<app@example.com>", b"RCPT TO:<a@example.net>"]
    assert flight.flights[1] == [b"RCPT TO:<c@example.net>"]
    assert not any(b"<b@" in c for f in flight.flights for c in f)


async def test_a_flight_out_of_step_with_the_clients_rcpts_never_sends_the_message(svc, flight, monkeypatch):
    """The safety net: should the look-ahead ever read another recipient than aiosmtpd hands over, the
    transaction is abandoned (451) before anything is sent on it."""
    import proxy.relay.server as server

    monkeypatch.setattr(server, "pipelined_rcpts", lambda _server: (["other@example.net"], False))
    client = await Client.open(svc)
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>")
    assert [r[:3] for r in replies] == [b"250", b"451"]
    assert (await client.send(b"DATA"))[0][:3] == b"503"  # no recipient was accepted
    await client.close()
    assert flight.flights[0] == [b"MAIL FROM:<app@example.com>", b"RCPT TO:<other@example.net>"]
    assert not flight.bodies and not any(b"DATA" in c for f in flight.flights for c in f)


async def test_data_after_fewer_rcpts_than_the_flight_sent_never_sends_the_message(svc, flight, monkeypatch):
    import proxy.relay.server as server

    monkeypatch.setattr(server, "pipelined_rcpts", lambda _server: (["ok@example.net", "other@example.net"], False))
    client = await Client.open(svc)
    replies = await client.send(b"MAIL FROM:<app@example.com>", b"RCPT TO:<ok@example.net>")
    assert [r[:3] for r in replies] == [b"250", b"250"]
    assert (await client.message()).startswith(b"451 4.4.1")  # never reported sent
    await client.close()
    assert not flight.bodies and not any(b"DATA" in c for f in flight.flights for c in f)
    (message,) = await svc.store.list_messages(MessageFilter(limit=10))
    assert message.status == "failed"


async def test_a_connection_whose_flight_opened_the_body_is_never_reused(svc, flight):
    """After a flight whose DATA got 354 the upstream reads everything as the body until the end of data:
    such a connection is not usable (released, it is closed), whatever happens to the session."""
    flight.rcpt[b"gone@example.net"] = b"550 5.1.1 <gone@example.net>: user unknown\r\n"
    conn = await svc.upstream.acquire()
    reply = await conn.mail("app@example.com", [], ["ok@example.net"], data=True)
    assert reply.code == 250 and conn.data_prefetched.code == 354
    assert conn.in_step and not conn.usable
    await svc.upstream.release(conn)
    assert conn not in svc.upstream._idle
    conn = await svc.upstream.acquire()  # a new one: all refused, DATA refused, the transaction stays usable
    await conn.mail("app@example.com", [], ["gone@example.net"], data=True)
    assert conn.data_prefetched.code == 554 and conn.usable
    await svc.upstream.release(conn)
    assert conn in svc.upstream._idle and flight.connections == 2
