"""The relay against upstreams that answer out of protocol (RFC 5321 4.2, 4.3.2), byte by byte.

Rule under test: only a 354 opens the body; only the reply to the end of data can make a message
sent; a reply nobody asked for, a 250 to DATA, or a multi-line reply whose lines carry different
codes closes that upstream connection and the client hears 451 4.4.1 (a mixed reply that starts
with a refusal is that refusal); the next message, over the pool, goes through.
"""
from __future__ import annotations

import asyncio
import re

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.store import EventFilter, MessageFilter, SuppressionFilter
from tests.conftest import make_config

MESSAGE = b"From: app@example.com\r\nTo: user@example.net\r\nMessage-ID: <m1@example.com>\r\nSubject: t\r\n\r\nHello\r\n"
PROPER = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} \S")  # aiosmtplib strips the code: the text starts with the enhanced one


class RawUpstream:
    """An upstream written byte by byte, so that it can answer out of protocol.

    `script[verb]` lists the raw replies for that verb's next occurrences (verb b"." is the end of
    data); `later[verb]` is written a moment after that verb's reply, as a separate segment;
    `close_after[verb]` closes the connection right after its reply. Defaults are proper replies.
    """

    def __init__(self, ehlo: bytes = b"250-raw.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10000000\r\n"):
        self.ehlo = ehlo
        self.script: dict[bytes, list[bytes]] = {}
        self.later: dict[bytes, list[bytes]] = {}
        self.close_after: set[bytes] = set()
        self.bodies: list[bytes] = []
        self.commands: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def start(self, port: int = 0) -> "RawUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return self

    def _next(self, verb: bytes, default: bytes) -> bytes:
        queued = self.script.get(verb)
        return queued.pop(0) if queued else default

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 raw.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line.split(b" ", 1)[0].strip().upper()
                self.commands.append(line.rstrip(b"\r\n"))
                if verb == b"EHLO":
                    reply = self._next(verb, self.ehlo)
                elif verb == b"DATA":
                    reply = self._next(verb, b"354 End data with <CR><LF>.<CR><LF>\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    break
                else:
                    reply = self._next(verb, b"250 2.0.0 Ok\r\n")
                writer.write(reply)
                await writer.drain()
                await self._after(verb, writer)
                if verb in self.close_after:
                    break
                last = reply.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
                if verb == b"DATA" and last.startswith(b"354"):
                    body = bytearray()
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        body += chunk
                    if chunk == b"":
                        break  # the client went away before the end of data: nothing was sent
                    self.bodies.append(bytes(body))
                    writer.write(self._next(b".", b"250 2.0.0 Ok: queued as RAW%d\r\n" % len(self.bodies)))
                    await writer.drain()
                    await self._after(b".", writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _after(self, verb: bytes, writer: asyncio.StreamWriter) -> None:
        queued = self.later.get(verb)
        if queued:
            await asyncio.sleep(0.05)  # a separate segment, after the reply was read
            writer.write(queued.pop(0))
            await writer.drain()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def raw():
    up = await RawUpstream().start()
    yield up
    up.close()


@pytest.fixture
async def relay(tmp_path, raw):
    async with Service(make_config(tmp_path, raw.port)) as svc:
        yield svc


async def send(svc: Service, rcpt: str = "user@example.net", body: bytes = MESSAGE):
    """One message through the relay; the client's view: (code, text) of the reply that decided."""
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False, timeout=10)
    await smtp.connect()
    try:
        await smtp.ehlo()
        for command in (b"MAIL", b"FROM:<app@example.com>"), (b"RCPT", f"TO:<{rcpt}>".encode()):
            reply = await smtp.execute_command(*command)
            if reply.code >= 400:
                return reply.code, reply.message
        try:
            reply = await smtp.data(body)
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
        return reply.code, reply.message
    finally:
        try:
            await smtp.quit()
        except aiosmtplib.SMTPException:
            smtp.close()


async def statuses(svc: Service) -> list[str]:
    """The logged messages' statuses, oldest first, read through the Store."""
    return [m.status for m in reversed(await svc.store.list_messages(MessageFilter(limit=10**6)))]


async def no_events(svc: Service) -> bool:
    return await svc.store.list_events(EventFilter()) == [] and await svc.store.count_rows("events") == 0


async def no_suppressions(svc: Service) -> bool:
    return await svc.store.list_suppressions(SuppressionFilter(limit=None)) == []


async def assert_next_message_goes_through(svc: Service, raw: RawUpstream, bodies_before: int) -> None:
    code, text = await send(svc, "next@example.net")
    assert (code, text) == (250, f"2.0.0 Ok: queued as RAW{bodies_before + 1}")
    assert len(raw.bodies) == bodies_before + 1 and raw.bodies[-1].endswith(b"\r\nHello\r\n")
    assert (await statuses(svc))[-1] == "sent"


async def test_proper_upstream_message_is_sent(relay, raw):
    assert await send(relay) == (250, "2.0.0 Ok: queued as RAW1")
    assert (await statuses(relay)) == ["sent"]


@pytest.mark.parametrize("reply", [
    b"250 2.0.0 Ok: queued as FAKE1\r\n",  # SMTPDataError for aiosmtplib, once reported as a sent message
    b"251 2.1.5 Ok\r\n",
    b"220 raw.test ready\r\n",
])
async def test_anything_but_354_to_data_that_is_not_a_refusal_is_out_of_protocol(relay, raw, reply):
    raw.script[b"DATA"] = [reply]
    code, text = await send(relay)
    assert code == 451 and text.startswith("4.4.1 ") and "out of protocol" in text
    assert raw.bodies == []  # nothing went out
    assert "sent" not in (await statuses(relay)) and (await statuses(relay)) != []
    await assert_next_message_goes_through(relay, raw, 0)
    assert raw.connections >= 2  # the connection that answered out of protocol was never reused


async def test_refusal_of_data_itself_is_passed_on_and_the_connection_stays(relay, raw):
    raw.script[b"DATA"] = [b"554 5.5.1 No valid recipients\r\n"]
    assert await send(relay) == (554, "5.5.1 No valid recipients")
    assert raw.bodies == [] and (await statuses(relay)) == ["rejected"]
    await assert_next_message_goes_through(relay, raw, 0)
    assert b"RSET" in raw.commands  # refused at DATA: the open transaction was reset before reuse


@pytest.mark.parametrize("reply", [b"354 go on\r\n", b"251 2.0.0 maybe\r\n", b"220 what\r\n"])
async def test_end_of_data_reply_other_than_250_or_a_refusal_is_not_sent(relay, raw, reply):
    raw.script[b"."] = [reply]
    code, text = await send(relay)
    assert code == 451 and text.startswith("4.4.1 ")
    assert "sent" not in (await statuses(relay))
    await assert_next_message_goes_through(relay, raw, 1)


async def test_extra_reply_to_rcpt_in_the_same_segment_is_caught_at_rcpt(relay, raw):
    raw.script[b"RCPT"] = [b"250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as STALE\r\n"]
    code, text = await send(relay)
    assert code == 451 and text.startswith("4.4.1 ") and "more replies than" in text
    assert raw.bodies == [] and "sent" not in (await statuses(relay))
    await assert_next_message_goes_through(relay, raw, 0)


async def test_extra_reply_to_rcpt_arriving_later_never_counts_as_the_answer_to_data(relay, raw):
    raw.later[b"RCPT"] = [b"250 2.0.0 Ok: queued as STALE\r\n"]
    code, text = await send(relay)
    assert code == 451 and text.startswith("4.4.1 ")
    assert raw.bodies == [] and "sent" not in (await statuses(relay))
    await assert_next_message_goes_through(relay, raw, 0)


async def test_reply_that_arrives_while_the_connection_idles_in_the_pool_retires_it(relay, raw):
    raw.later[b"."] = [b"250 2.0.0 Ok: queued as GHOST\r\n"]  # after the real 250 of the first message
    assert await send(relay) == (250, "2.0.0 Ok: queued as RAW1")
    await asyncio.sleep(0.2)  # let the unsolicited reply land while the connection is idle
    connections = raw.connections
    await assert_next_message_goes_through(relay, raw, 1)
    assert raw.connections == connections + 1  # not reused: its next reply would have been the ghost's
    assert (await statuses(relay)) == ["sent", "sent"]


@pytest.mark.parametrize("stage, mixed, code, enhanced", [
    (b".", b"554-5.6.0 Message rejected: content\r\n250 2.0.0 Ok: queued as X\r\n", 554, "5.6.0"),
    (b".", b"450-4.2.0 later\r\n250 2.0.0 Ok\r\n", 450, "4.2.0"),
    (b"RCPT", b"550-5.1.1 <user@example.net>: no such user\r\n250 2.1.5 Ok\r\n", 550, "5.1.1"),
    (b"DATA", b"554-5.5.1 no valid recipients\r\n354 go ahead\r\n", 554, "5.5.1"),
])
async def test_mixed_reply_that_starts_with_a_refusal_is_that_refusal(relay, raw, stage, mixed, code, enhanced):
    raw.script[stage] = [mixed]
    got_code, text = await send(relay)
    assert got_code == code and text.startswith(enhanced + " ")
    assert "250" not in text.split(" ", 1)[1] and "354" not in text  # only the first line's code speaks
    assert "sent" not in (await statuses(relay)) and "partial" not in (await statuses(relay))
    await assert_next_message_goes_through(relay, raw, len(raw.bodies))


@pytest.mark.parametrize("stage, mixed", [
    (b".", b"250-2.0.0 Ok\r\n554 5.6.0 rejected after all\r\n"),
    (b"DATA", b"354-go\r\n250 2.0.0 Ok: queued as Y\r\n"),
    (b"MAIL", b"250-2.1.0 Ok\r\n451 4.3.0 or not\r\n"),
])
async def test_mixed_reply_that_starts_with_success_is_out_of_protocol(relay, raw, stage, mixed):
    raw.script[stage] = [mixed]
    code, text = await send(relay)
    assert code == 451 and text.startswith("4.4.1 ") and "out of protocol" in text
    assert "sent" not in (await statuses(relay))
    await assert_next_message_goes_through(relay, raw, len(raw.bodies))


async def test_upstream_that_closes_after_rcpt_gives_a_plain_451(relay, raw):
    raw.close_after.add(b"RCPT")
    code, text = await send(relay)
    assert code == 451 and PROPER.match(text)
    for internal in ("Error", "NoneType", "Attribute", "Traceback", "Exception"):
        assert internal not in text
    assert "sent" not in (await statuses(relay))
    raw.close_after.clear()
    await assert_next_message_goes_through(relay, raw, 0)


async def test_malformed_reply_line_closes_the_connection(relay, raw):
    raw.script[b"RCPT"] = [b"2x0 Ok\r\n"]
    code, text = await send(relay)
    assert code == 451 and text.startswith("4.4.1 ") and "x0" not in text
    await assert_next_message_goes_through(relay, raw, 0)


# -- SMTPUTF8: advertised only when the upstream offers it (RFC 6531) ---------------------------------

async def ehlo_keywords(svc: Service) -> set[str]:
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False, timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    keywords = set(smtp.esmtp_extensions)
    await smtp.quit()
    return keywords


async def test_smtputf8_advertised_and_a_utf8_address_arrives_exactly(relay, raw):
    assert "smtputf8" in await ehlo_keywords(relay)
    smtp = aiosmtplib.SMTP(hostname=relay.relay_address[0], port=relay.relay_address[1], start_tls=False, timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    assert (await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>", b"SMTPUTF8")).code == 250
    assert (await smtp.execute_command(b"RCPT", "TO:<jürgen@bücher.example>".encode())).code == 250
    assert (await smtp.data(MESSAGE)).code == 250
    await smtp.quit()
    assert "RCPT TO:<jürgen@bücher.example>".encode() in raw.commands
    assert b"MAIL FROM:<app@example.com> SMTPUTF8" in raw.commands


async def test_upstream_without_smtputf8_means_none_advertised_and_utf8_refused_before_upstream(tmp_path):
    raw = await RawUpstream(ehlo=b"250-raw.test\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n").start()
    try:
        async with Service(make_config(tmp_path, raw.port)) as svc:
            assert "smtputf8" not in await ehlo_keywords(svc)
            smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False, timeout=10)
            await smtp.connect()
            await smtp.ehlo()
            utf8 = await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>", b"SMTPUTF8")
            assert (utf8.code, utf8.message[:6]) == (555, "5.5.4 ")
            assert (await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>")).code == 250
            rcpt = await smtp.execute_command(b"RCPT", "TO:<jürgen@bücher.example>".encode())
            assert (rcpt.code, rcpt.message[:6]) == (553, "5.6.7 ")
            await smtp.quit()
            assert not any(not c.isascii() for c in raw.commands)  # nothing non-ASCII reached the upstream
            assert await no_events(svc) and await no_suppressions(svc)
    finally:
        raw.close()


async def test_upstream_dropping_smtputf8_later_is_a_temporary_refusal_never_a_bounce(tmp_path):
    raw = await RawUpstream().start()
    try:
        config = make_config(tmp_path, raw.port, upstream={"idle_timeout": 0.0})  # every message: a new connection
        async with Service(config) as svc:
            smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False, timeout=10)
            await smtp.connect()
            await smtp.ehlo()
            assert smtp.supports_extension("smtputf8")  # the start-up connection offered it
            raw.ehlo = b"250-raw.test\r\n250 8BITMIME\r\n"  # the upstream changes its mind
            reply = await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>", b"SMTPUTF8")
            assert reply.code == 451 and reply.message.startswith("4.5.4 ")
            await smtp.quit()
            assert "smtputf8" not in await ehlo_keywords(svc)  # the next session is told the truth
            assert await no_events(svc) and await no_suppressions(svc)
    finally:
        raw.close()


async def test_upstream_unknown_at_start_then_without_smtputf8(tmp_path):
    """Down at start: nothing is known, SMTPUTF8 is offered; the first connection tells the truth, and
    the session that was offered too much gets a temporary refusal, not a bounce."""
    from tests.postfix import free_port

    port = free_port()
    async with Service(make_config(tmp_path, port)) as svc:
        smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False, timeout=10)
        await smtp.connect()
        await smtp.ehlo()
        assert smtp.supports_extension("smtputf8")
        raw = await RawUpstream(ehlo=b"250-raw.test\r\n250 8BITMIME\r\n").start(port)
        try:
            reply = await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>", b"SMTPUTF8")
            assert reply.code == 451 and reply.message.startswith("4.5.4 ")
            await smtp.quit()
            assert "smtputf8" not in await ehlo_keywords(svc)
            assert await send(svc) == (250, "2.0.0 Ok: queued as RAW1")  # plain mail flows
            assert not any(b"SMTPUTF8" in c for c in raw.commands)
            assert await no_events(svc)
        finally:
            raw.close()


async def test_upstream_refusing_a_utf8_recipient_is_not_held_against_it(relay, raw):
    raw.script[b"RCPT"] = [b"553 5.6.7 Non-ASCII addresses not permitted for that recipient\r\n"] * 3
    for _ in range(3):
        smtp = aiosmtplib.SMTP(hostname=relay.relay_address[0], port=relay.relay_address[1], start_tls=False, timeout=10)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.execute_command(b"MAIL", b"FROM:<app@example.com>", b"SMTPUTF8")
        reply = await smtp.execute_command(b"RCPT", "TO:<jürgen@bücher.example>".encode())
        assert reply.code == 553
        await smtp.quit()
    assert await no_events(relay)  # a protocol mismatch, recorded as a send failure
    assert await no_suppressions(relay)
    assert all("SMTPUTF8" in (m.send_failure or "") for m in await relay.store.list_messages(MessageFilter(limit=10**6)))


def test_out_of_step_is_caught_under_uvloop_too(tmp_path):
    """`bounceproxy serve` runs on uvloop, whose transports keep the data_received they were given."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario():
        raw = await RawUpstream().start()
        try:
            async with Service(make_config(tmp_path, raw.port)) as svc:
                assert await send(svc) == (250, "2.0.0 Ok: queued as RAW1")
                raw.script[b"DATA"] = [b"250 2.0.0 Ok: queued as FAKE\r\n"]
                code, text = await send(svc)
                assert code == 451 and "out of protocol" in text
                raw.script[b"RCPT"] = [b"250 2.1.5 Ok\r\n250 2.0.0 stale\r\n"]
                code, text = await send(svc)
                assert code == 451 and "more replies than" in text
                await assert_next_message_goes_through(svc, raw, 1)
                assert (await statuses(svc)).count("sent") == 2
        finally:
            raw.close()

    uvloop.run(scenario())
