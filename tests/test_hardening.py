"""The relay and the bounce MX under attack: each defence has a test that fails without it."""
from __future__ import annotations

import asyncio
import socket
import ssl

import aiosmtplib
import pytest

from proxy.app import Service
from tests.conftest import make_config


async def raw_session(port: int, lines: list[bytes], read_until_close: bool = False, timeout: float = 5) -> bytes:
    """Speak SMTP byte for byte (what smuggling needs: no client library normalises anything)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = await asyncio.wait_for(reader.readline(), timeout)
    for line in lines:
        writer.write(line)
        await writer.drain()
        await asyncio.sleep(0.05)
    try:
        if read_until_close:
            out += await asyncio.wait_for(reader.read(), timeout)
        else:
            await asyncio.sleep(0.3)
            out += await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()
    return out


@pytest.mark.parametrize("smuggled", [
    b"Subject: a\r\n\r\nhello\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.net>\nDATA\nforged\n.\r\n",
    b"Subject: a\r\n\r\nhello\r\n.\nMAIL FROM:<evil@example.com>\r\n",
    b"Subject: a\r\n\r\nhello\r.\rMAIL FROM:<evil@example.com>\r\n",
])
async def test_smtp_smuggling_is_refused_and_never_passed_upstream(service, upstream, smuggled):
    out = await raw_session(service.relay_address[1], [
        b"EHLO attacker\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        smuggled, b".\r\n", b"QUIT\r\n",
    ])
    assert b"554 5.6.11 " in out
    assert upstream.handler.messages == []  # nothing, neither the carrier nor a smuggled second message
    assert "evil@example.com" not in upstream.handler.mail_from


async def test_clean_crlf_message_still_goes_through_raw(service, upstream):
    out = await raw_session(service.relay_address[1], [
        b"EHLO ok\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
        b"Subject: fine\r\n\r\nline one\r\n..leading dot\r\n.\r\n", b"QUIT\r\n",
    ])
    assert b"250 Ok 0100018c" in out
    # dot-unstuffed from the client, re-stuffed upstream: the content arrives exact (after our Message-ID)
    assert upstream.handler.messages[0][2].endswith(b"\r\nSubject: fine\r\n\r\nline one\r\n.leading dot\r\n")


@pytest.mark.parametrize("rcpt", [
    "victim@example.net", "<@bounces.test:victim@example.net>", "victim%example.net@bounces.test",
    "\"victim@example.net\"@bounces.test", "victim@[192.0.2.1]", "bounce+x@bounces.test.example.net",
    "postmaster@bücher.example",
])
async def test_bounce_mx_is_no_relay_for_any_address_trick(tmp_path, upstream, rcpt):
    async with Service(make_config(tmp_path, upstream.port)) as svc:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=svc.inbound_address[1], start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail("")
        wrapped = rcpt if rcpt.startswith("<") else f"<{rcpt}>"
        reply = await smtp.execute_command(b"RCPT", f"TO:{wrapped}".encode())
        assert reply.code >= 500, (rcpt, reply)
        await smtp.quit()


async def test_relay_needs_auth_beyond_loopback_for_every_trick(tmp_path, upstream, monkeypatch):
    """With allow_networks excluding the client, no recipient form gets through without AUTH."""
    from proxy.config import Address

    config = make_config(tmp_path, upstream.port, relay={"listen": Address("0.0.0.0", 0), "allow_networks": ("10.9.0.0/16",)})
    async with Service(config) as svc:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=svc.relay_address[1], start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        for sender in ("app@example.com", "", "@a,@b:u@c.example"):
            reply = await smtp.execute_command(b"MAIL", f"FROM:<{sender}>".encode())
            assert reply.code >= 500, (sender, reply)
        reply = await smtp.execute_command(b"RCPT", b"TO:<victim@example.net>")
        assert reply.code >= 500
        await smtp.quit()
    assert upstream.handler.mail_from == []


async def test_connection_limits_per_ip(tmp_path, upstream):
    config = make_config(tmp_path, upstream.port, relay={"max_connections_per_ip": 3})
    async with Service(config) as svc:
        held = [await asyncio.open_connection("127.0.0.1", svc.relay_address[1]) for _ in range(3)]
        for reader, _ in held:
            assert (await reader.readline()).startswith(b"220 ")
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.relay_address[1])
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"421 4.7.0 Too many connections")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(0.2)
        assert svc.relay_limits.open_total == 0  # the slots were given back
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=svc.relay_address[1], start_tls=False)
        await smtp.connect()  # and new clients are served again
        await smtp.quit()


async def test_slowloris_session_is_cut_at_the_deadline(tmp_path, upstream):
    config = make_config(tmp_path, upstream.port, inbound={"max_session_seconds": 0.5, "session_timeout": 60})
    async with Service(config) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.inbound_address[1])
        await reader.readline()
        heard = b""
        try:
            for _ in range(10):  # busy enough that the idle timeout never fires
                writer.write(b"NOOP\r\n")
                await writer.drain()
                heard += await asyncio.wait_for(reader.readline(), 2)
                await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        assert heard.count(b"250 ") >= 2 and b"421 4.4.2 Session too long" in heard
        writer.close()


async def test_idle_session_times_out(tmp_path, upstream):
    config = make_config(tmp_path, upstream.port, relay={"session_timeout": 0.3})
    async with Service(config) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.relay_address[1])
        await reader.readline()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after 0.3 s of silence
        writer.close()


async def test_each_command_moves_the_idle_deadline(tmp_path, upstream):
    """One idle timer per session whose deadline each command moves (not a new timer per command): a
    session that keeps talking outlives the first deadline many times, then closes once silent."""
    config = make_config(tmp_path, upstream.port, relay={"session_timeout": 0.4})
    async with Service(config) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.relay_address[1])
        await reader.readline()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(6):  # 1.2 s of NOOPs 0.2 s apart: three times the idle timeout
            await asyncio.sleep(0.2)
            writer.write(b"NOOP\r\n")
            assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"250 ")
        silent = loop.time()
        assert silent - started >= 1.2
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.3 <= loop.time() - silent < 2.0  # closed after the timeout of silence, not before
        writer.close()


async def test_overlong_command_and_line_are_refused(service):
    out = await raw_session(service.relay_address[1], [b"EHLO x\r\n", b"MAIL FROM:<" + b"a" * 2000 + b"@example.com>\r\n"])
    assert b"500 " in out.split(b"\r\n", 2)[-1] or b"Line too long" in out


async def test_auth_failures_are_rate_limited(tmp_path, upstream, server_cert, monkeypatch):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    monkeypatch.setenv("BOUNCEPROXY_RELAY_USERS", "app:right")
    config = make_config(tmp_path, upstream.port, relay={"require_auth": True, "tls_cert": str(cert), "tls_key": str(key)})
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    async with Service(config) as svc:
        import base64

        codes = []
        for password in ["w1", "w2", "w3", "w4", "w5", "right"]:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=svc.relay_address[1], start_tls=True, tls_context=ctx)
            await smtp.connect()
            await smtp.ehlo()
            token = base64.b64encode(f"\0app\0{password}".encode())
            codes.append((await smtp.execute_command(b"AUTH", b"PLAIN", token)).code)
            await smtp.quit()
        assert codes[:5] == [535] * 5
        assert codes[5] == 454  # even the right password waits out the window


async def test_tls_below_1_2_is_refused(tmp_path, upstream, server_cert):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    config = make_config(tmp_path, upstream.port, relay={"tls_cert": str(cert), "tls_key": str(key)})
    async with Service(config) as svc:
        # this client's OpenSSL may refuse TLS 1.1 by itself, so check the relay's own floor too
        assert svc._client_tls().minimum_version == ssl.TLSVersion.TLSv1_2
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=svc.relay_address[1], start_tls=False, tls_context=old)
        await smtp.connect()
        await smtp.ehlo()
        with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError, OSError)):
            await smtp.starttls(tls_context=old)
        smtp.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("arg", [
    "<>", "<> SIZE=10", "<a@b.c>", "<a@b.c> SIZE=100 BODY=8BITMIME", "a@b.c", '<"q x"@b.c>', "<@r:a@b.c>",
    "<a@[1.2.3.4]>", "<User.Name+tag@Example.COM>", "<.a@b.c>", "<a.@b.c>", "<a..b@c.d>", "<a@b.c", "<a b@c.d>",
    "<bücher@example.com>", "<a@bücher.example>", "<" + "x" * 65 + "@b.c>", "<a@b.c>\tSIZE=1", "<a(comment)@b.c>",
])
def test_fast_address_path_agrees_with_aiosmtpd(arg):
    """The relay's fast path for MAIL/RCPT arguments gives exactly aiosmtpd's answer."""
    from aiosmtpd.smtp import SMTP

    from proxy.smtp_guard import GuardedSMTP, Limits

    class Handler:
        pass

    fast = GuardedSMTP(Handler(), limits=Limits(1, 1, 1))
    slow = SMTP(Handler())
    assert fast._getaddr(arg) == slow._getaddr(arg)


async def test_a_client_that_closes_its_side_frees_its_session_at_once(tmp_path, upstream):
    """A health check that connects and closes, or a client that closes mid-transaction, leaves a
    half-open connection; under `serve` (uvloop) aiosmtpd kept it open, counted against the limits and
    holding its upstream connection, until the idle timeout. It must be freed at once."""
    import urllib.request

    from tests.daemon import Daemon

    daemon = Daemon(tmp_path, f"""
[relay]
max_connections_per_ip = 3
[upstream]
profile = "smtp"
host = "127.0.0.1"
port = {upstream.port}
tls = "none"
pool_size = 1
probe_interval = 0
""")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, daemon.start)
    try:
        def open_sessions() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{daemon.api_port}/metrics", timeout=5) as r:
                return next(line for line in r.read().decode().splitlines()
                            if line.startswith("bounceproxy_relay_open_sessions"))

        for _ in range(5):  # more than the per-IP limit
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.relay_port)
            writer.close()
            await writer.wait_closed()
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.relay_port)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220 ")
        writer.write(b"EHLO x\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<user@example.net>\r\n")
        for _ in range(3):  # EHLO's, MAIL's and RCPT's replies
            line = await asyncio.wait_for(reader.readline(), 5)
            while line[3:4] == b"-":
                line = await asyncio.wait_for(reader.readline(), 5)
            assert line.startswith(b"250 ")
        writer.write_eof()  # FIN, no QUIT: the transaction holds the only upstream connection
        await asyncio.sleep(0.5)
        assert await loop.run_in_executor(None, open_sessions) == "bounceproxy_relay_open_sessions 0.0"
        # the per-IP limit is not spent and the one upstream connection is free for the next message
        out = await raw_session(daemon.relay_port, [
            b"EHLO x\r\n", b"MAIL FROM:<app@example.com>\r\n", b"RCPT TO:<user@example.net>\r\n", b"DATA\r\n",
            b"Subject: next\r\n\r\nhi\r\n.\r\n", b"QUIT\r\n"])
        assert out.startswith(b"220 ") and b"421" not in out and b"451" not in out
        assert b"\r\n250 " in out.split(b"\r\n354 ", 1)[1]  # the message went out
        writer.close()
    finally:
        await loop.run_in_executor(None, daemon.stop)
