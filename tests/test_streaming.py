"""DATA streamed (issue 15): read in chunks, checked with bytes scans, sent upstream as it arrived.

The upstream must get exactly what aiosmtpd's line-by-line reading gave before, a message refused or
cut off midway must never reach it (not even in part as a delivered message), and the limits and the
end of data must be found wherever the chunks happen to split the stream."""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from proxy.app import Service
from proxy.relay.server import STREAM_AFTER, refusal_rank, smuggling_refusal, unstuffed
from proxy.smtp_guard import MessageData
from proxy.store import MessageFilter
from tests.conftest import make_config
from tests.test_hardening import raw_session


def stuff(content: bytes) -> bytes:
    """What a client sends for `content`: every line that starts with a dot gets one more."""
    lines = content.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def big_body(size: int) -> bytes:
    """Headers with a Message-ID, then lines of every awkward kind up to `size` bytes."""
    lines = [b".leading dot", b"..two dots", b".", b"...", b"trailing spaces   ", b"", b"\tTAB. and a dot",
             b"x" * 998, b"=?utf-8?q?Caf=C3=A9?=", b"\xc3\xa9t\xc3\xa9 8bit"]
    body = bytearray(b"From: app@example.com\r\nTo: user@example.net\r\nMessage-ID: <big@example.com>\r\n"
                     b"Subject: big\r\n\r\n")
    i = 0
    while len(body) < size:
        body += lines[i % len(lines)] + b"\r\n"
        i += 1
    return bytes(body)


async def reader_of(pieces: list[bytes]) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1001)
    for piece in pieces:
        reader.feed_data(piece)
    reader.feed_eof()
    return reader


def data_for(reader, size_limit=10_000_000):
    return MessageData(reader, size_limit, 999, size_reply="552 size", line_reply="554 line",
                       check=smuggling_refusal, rank=refusal_rank)


async def read_all(data: MessageData) -> bytes:
    return b"".join([s async for s in data.stretches()])


@pytest.mark.parametrize("split", [1, 2, 3, 5, 7, 4096])
async def test_end_of_data_and_pipelined_commands_wherever_the_chunks_split(split):
    content = stuff(big_body(20_000))
    stream = content + b".\r\nQUIT\r\n"
    reader = await reader_of([stream[i:i + split] for i in range(0, len(stream), split)])
    data = data_for(reader)
    got = await read_all(data)
    assert got == content and data.refusal is None and data.size == len(content)
    assert await reader.readline() == b"QUIT\r\n"  # left for the command loop


async def test_an_empty_message_ends_at_the_first_dot_line():
    reader = await reader_of([b".\r\nQUIT\r\n"])
    data = data_for(reader)
    assert await read_all(data) == b"" and data.ended and data.refusal is None
    assert await reader.readline() == b"QUIT\r\n"


@pytest.mark.parametrize("length,refused", [(999, False), (1000, True), (5000, True), (200_000, True)])
async def test_line_limit_is_aiosmtpds(length, refused):
    """aiosmtpd took 999 bytes of a line as sent (a stuffing dot included) plus CRLF, and no more."""
    reader = await reader_of([b"Subject: a\r\n\r\n" + b"y" * length + b"\r\nbye\r\n.\r\n"])
    data = data_for(reader)
    await read_all(data)
    assert data.ended and data.refusal == ("554 line" if refused else None)


async def test_size_limit_counts_the_data_as_sent():
    content = b"Subject: a\r\n\r\n" + b"z" * 98 + b"\r\n"
    for limit, refused in ((len(content), False), (len(content) - 1, True)):
        data = data_for(await reader_of([content + b".\r\n"]), size_limit=limit)
        await read_all(data)
        assert data.refusal == ("552 size" if refused else None)


async def test_the_worst_smuggling_refusal_wins_across_stretches():
    """A control-dot line early and a NUL late: the NUL's refusal, as the whole-buffer check says."""
    first = b"Subject: a\r\n\r\n\x0c.\r\n" + b"a" * 900 + b"\r\n"
    second = b"x\x00y\r\n"
    data = data_for(await reader_of([first, second, b".\r\n"]))
    assert await read_all(data) == b""  # nothing after the first failure is handed on
    assert data.refusal == smuggling_refusal(first + second)


def test_unstuffed_removes_one_dot_per_line_start():
    assert unstuffed(b"..a\r\n.\r\nb\r\n...\r\n") == b".a\r\n\r\nb\r\n..\r\n"


@pytest.mark.parametrize("size", [2048, STREAM_AFTER + 10_000, 3 * 1024 * 1024])
async def test_big_bodies_reach_the_upstream_byte_for_byte(service, upstream, size):
    content = big_body(size)
    out = await raw_session(service.relay_address[1], [
        b"EHLO x\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        stuff(content), b".\r\n", b"QUIT\r\n",
    ], timeout=30)
    assert b"\r\n250 Ok 0100018c" in out
    [(sender, rcpts, got)] = upstream.handler.messages
    assert got == content  # un-stuffed by the upstream, exactly the client's message
    [msg] = await service.store.list_messages(MessageFilter())
    assert msg.status == "sent" and msg.size == len(content) and msg.message_id == "big@example.com"
    assert msg.content_sha256 == hashlib.sha256(content).hexdigest()


async def test_a_message_id_is_prepended_to_a_streamed_body(service, upstream):
    content = big_body(STREAM_AFTER * 3).replace(b"Message-ID: <big@example.com>\r\n", b"")
    out = await raw_session(service.relay_address[1], [
        b"EHLO x\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        stuff(content), b".\r\n", b"QUIT\r\n",
    ])
    assert b"\r\n250 Ok 0100018c" in out
    [(_, _, got)] = upstream.handler.messages
    assert got.startswith(b"Message-ID: <") and got.endswith(content)
    assert got.count(b"\r\n") == content.count(b"\r\n") + 1


@pytest.mark.parametrize("size", [600, STREAM_AFTER * 4])
async def test_smuggling_after_the_stream_started_never_reaches_the_upstream(service, upstream, size):
    """DATA went upstream when the client sent it, and a long body had begun to follow: the connection
    is closed without an end of data, and never reused for the next message (which arrives alone)."""
    head = stuff(big_body(size))
    out = await raw_session(service.relay_address[1], [
        b"EHLO x\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        head, b"late\r\n\x00.\r\nMAIL FROM:<evil@example.com>\r\n", b".\r\n",
        b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        b"Subject: next\r\nMessage-ID: <next@example.com>\r\n\r\nfine\r\n.\r\n", b"QUIT\r\n",
    ])
    assert b"554 5.6.0 Message refused: a NUL byte" in out
    assert [m[2] for m in upstream.handler.messages] == [b"Subject: next\r\nMessage-ID: <next@example.com>\r\n\r\nfine\r\n"]
    assert "evil@example.com" not in upstream.handler.mail_from


@pytest.mark.parametrize("size", [600, STREAM_AFTER * 4])
async def test_a_client_that_aborts_mid_data_leaves_no_upstream_message(service, upstream, size):
    """Small: the upstream had DATA (sent at the client's DATA) and no body; large: part of the body.
    Either way its connection closes without an end of data and is never used again: the next
    message goes out alone, byte for byte."""
    reader, writer = await asyncio.open_connection(*service.relay_address)
    await reader.readline()
    writer.write(b"EHLO x\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<user@example.net>\r\nDATA\r\n")
    writer.write(stuff(big_body(size)))  # no end of data
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.transport.abort()
    await asyncio.sleep(0.5)
    assert upstream.handler.messages == []
    rows = await service.store.list_messages(MessageFilter())
    assert all(m.status in ("failed", "pending") for m in rows) and not any(m.status == "sent" for m in rows)
    out = await raw_session(service.relay_address[1], [
        b"EHLO x\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        b"Subject: next\r\nMessage-ID: <next@example.com>\r\n\r\nfine\r\n.\r\n", b"QUIT\r\n",
    ])
    assert b"\r\n250 " in out.split(b"354")[-1]
    assert [m[2] for m in upstream.handler.messages] == [b"Subject: next\r\nMessage-ID: <next@example.com>\r\n\r\nfine\r\n"]


async def test_an_upstream_lost_mid_stream_is_a_451_and_not_sent(tmp_path, upstream):
    async with Service(make_config(tmp_path, upstream.port)) as svc:
        out = await raw_session(svc.relay_address[1], [
            b"EHLO x\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<lostdata@example.net>\r\n", b"DATA\r\n",
            stuff(big_body(STREAM_AFTER * 4)), b".\r\n", b"QUIT\r\n",
        ])
        assert b"\r\n451 4.4.1 " in out and b"\r\n221 " in out
        [msg] = await svc.store.list_messages(MessageFilter())
        assert msg.status in ("failed", "possibly_sent")
