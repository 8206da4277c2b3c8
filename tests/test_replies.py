"""Every reply a proper reply, on both listeners (RFC 5321 4.2, RFC 2034, RFC 3463).

A walk through every command and error path: each reply line carries a code, an enhanced status
and a sentence; none carries an exception's text. RFC 2034 exempts the 220 greeting and the
replies to HELO and EHLO (whose lines are keywords, checked against RFC 5321's ehlo-line instead),
and 3xx replies (354, 334) have no enhanced codes. Addresses are taken exactly or refused.
"""
from __future__ import annotations

import asyncio
import base64
import re

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.store import MessageFilter
from tests.conftest import make_config
from tests.test_inbound import inbound
from tests.test_protocol import RawUpstream

PROPER = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} \S")
EHLO_LINE = re.compile(rb"^250[ -][A-Za-z0-9][A-Za-z0-9-]*(?: [\x21-\x7e]+)*$")
INTERNAL = (b"Error: (", b"Exception", b"Traceback", b"NoneType", b"UnicodeEncodeError", b"ValueError",
            b"AttributeError", b"prohibited control character")


class Walker:
    """One raw session: sends a line, reads its whole reply, checks every line of it."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.seen: list[tuple[bytes, list[bytes]]] = []

    @classmethod
    async def open(cls, port: int) -> "Walker":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        walker = cls(reader, writer)
        greeting = await walker.reply()
        assert greeting[0].startswith(b"220 "), greeting  # RFC 2034: the greeting is exempt
        return walker

    async def reply(self) -> list[bytes]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            assert line.endswith(b"\r\n"), (lines, line)
            lines.append(line[:-2])
            if line[3:4] != b"-":
                return lines

    async def send(self, command: bytes, expect: bytes | None = None) -> list[bytes]:
        self.writer.write(command if command.endswith(b"\n") else command + b"\r\n")
        lines = await self.reply()
        self.seen.append((command[:60], lines))
        verb = command.split(b" ", 1)[0].strip().upper()
        for line in lines:
            assert not any(word in line for word in INTERNAL), (command, line)
            if verb in (b"EHLO", b"HELO") and line.startswith(b"250"):
                if verb == b"EHLO" and line is not lines[0]:
                    assert EHLO_LINE.match(line), (command, line)
                continue
            if line[:1] == b"3":  # 354, 334: intermediate, no enhanced code exists
                continue
            assert PROPER.match(line), (command, line)
        if expect is not None:
            assert lines[-1].startswith(expect), (command, lines)
        return lines

    async def close(self) -> None:
        self.writer.close()


COMMON = [  # (command, the start of the reply expected), before any HELO
    (b"MAIL FROM:<a@example.com>", b"503 5.5.1 "),
    (b"RCPT TO:<a@example.com>", b"503 5.5.1 "),
    (b"DATA", b"503 5.5.1 "),
    (b"NOOP", b"250 2.0.0 "),
    (b"RSET", b"250 2.0.0 "),
    (b"RSET now", b"501 5.5.4 "),
    (b"VRFY", b"501 5.5.4 "),
    (b"VRFY someone", b"252 2.0.0 "),
    (b"VRFY <", b"502 5.5.4 "),
    (b"EXPN list", b"502 5.5.1 "),
    (b"HELP", b"250 2.0.0 "),
    (b"HELP MAIL", b"250 2.0.0 Syntax: "),
    (b"HELP BOGUS", b"501 5.5.4 "),
    (b"ETRN example.com", b"500 5.5.1 "),
    (b"TURN", b"500 5.5.1 "),
    (b"", b"500 5.5.2 "),
    (b"\xff\xfe", b"500 5.5.2 "),
    (b"NOOP " + b"x" * 600, b"500 5.5.2 "),
    (b"NOOP " + b"x" * 5000, b"500 5.5.2 "),
    (b"STARTTLS now", b"501 5.5.4 "),
    (b"AUTH PLAIN", b"503 5.5.1 "),  # before HELO
    (b"HELO", b"501 5.5.4 "),
    (b"EHLO", b"501 5.5.4 "),
    (b"HELO client.test", b"250 "),
    (b"AUTH PLAIN", None),  # AUTH after HELO: an ESMTP command
    (b"MAIL FROM:<a@example.com> SIZE=10", b"501 5.5.4 "),  # no parameters after HELO
    (b"EHLO client.test", b"250 "),
    (b"MAIL", b"501 5.5.4 "),
    (b"MAIL TO:<a@example.com>", b"501 5.5.4 "),
    (b"MAIL FROM:", b"501 5.5.4 "),
    (b"MAIL FROM:<a@@b>", b"553 5.1.7 "),
    (b"MAIL FROM:<a@example.com> BODY=9BIT", b"501 5.5.4 "),
    (b"MAIL FROM:<a@example.com> SMTPUTF8=yes", b"501 5.5.4 "),
    (b"MAIL FROM:<a@example.com> SIZE=999999999999", b"552 5.3.4 "),
    (b"MAIL FROM:<a@example.com> SIZE=abc", b"501 5.5.4 "),
    (b"MAIL FROM:<a@example.com> FOO=bar", b"555 5.5.4 "),
    (b"MAIL FROM:<a\x00b@example.com>", b"553 5.1.7 "),
    (b"MAIL FROM:<ab@example.com\rX>", b"553 5.1.7 "),
    (b"MAIL FROM:<a\x1bb@example.com>", b"553 5.1.7 "),
    (b"MAIL FROM:<a\tb@example.com>", b"553 5.1.7 "),
    (b"MAIL FROM:<\xc3\xa4@example.com>", b"553 5.6.7 "),  # UTF-8 without SMTPUTF8
    (b"MAIL FROM:<\xff\xfe@example.com> SMTPUTF8", None),  # not UTF-8 at all (or SMTPUTF8 not offered)
    (b"MAIL FROM:<\xe4@example.com>", b"553 5.1.7 "),  # Latin-1, not UTF-8
    (b"RCPT TO:<b@example.net>", b"503 5.5.1 "),
    (b"STARTTLS", b"502 5.5.1 "),
]


async def walk_common(port: int) -> Walker:
    walker = await Walker.open(port)
    for command, expect in COMMON:
        await walker.send(command, expect)
    return walker


async def walk_transaction(w: Walker, sender: bytes, good_rcpt: bytes, other_rcpt: bytes, too_long: int,
                           accept: bytes) -> None:
    await w.send(b"MAIL FROM:<" + sender + b">", b"250 ")
    await w.send(b"MAIL FROM:<" + sender + b">", b"503 5.5.1 ")  # nested
    await w.send(b"RCPT", b"501 5.5.4 ")
    await w.send(b"RCPT FROM:<x@example.net>", b"501 5.5.4 ")
    await w.send(b"RCPT TO:<b@@x>", b"553 5.1.3 ")
    await w.send(b"RCPT TO:<x@example.test\rX>", b"501 5.1.3 ")
    await w.send(b"RCPT TO:<x\x00@example.test>", b"501 5.1.3 ")
    await w.send(b"RCPT TO:<x\x7f@example.test>", b"501 5.1.3 ")
    await w.send(b"RCPT TO:<j\xc3\xbcrgen@example.test>", b"553 5.6.7 ")
    await w.send(b"RCPT TO:<" + good_rcpt + b"> NOTIFY=NEVER", b"555 5.5.4 ")
    await w.send(b"DATA", b"503 5.5.1 ")
    await w.send(b"RCPT TO:<" + other_rcpt + b">", None)
    await w.send(b"RCPT TO:<" + good_rcpt + b">", b"250 ")
    await w.send(b"DATA now", b"501 5.5.4 ")
    await w.send(b"DATA", b"354")
    await w.send(b"Subject: long\r\n\r\n" + b"x" * too_long + b"\r\n.", b"554 5.6.0 ")
    await w.send(b"MAIL FROM:<" + sender + b">", b"250 ")
    await w.send(b"RCPT TO:<" + good_rcpt + b">", b"250 ")
    await w.send(b"DATA", b"354")
    await w.send(b"Subject: ok\r\nMessage-ID: <walk@example.com>\r\n\r\nfine\r\n.", accept)


async def test_relay_every_reply_is_proper(tmp_path):
    raw = await RawUpstream().start()  # an upstream whose own replies are proper
    try:
        async with Service(make_config(tmp_path, raw.port, relay={"max_message_size": 200_000})) as svc:
            w = await walk_common(svc.relay_address[1])
            ehlo = dict(w.seen)[b"EHLO client.test"]
            assert b"250-ENHANCEDSTATUSCODES" in ehlo and b"250-PIPELINING" in ehlo
            await walk_transaction(w, b"app@example.com", b"user@example.net", b"other@example.net", 1200, b"250 2.0.0 ")
            await w.send(b"MAIL FROM:<app@example.com>", b"250 ")
            await w.send(b"RCPT TO:<user@example.net>", b"250 ")
            await w.send(b"DATA", b"354")
            await w.send(b"Subject: big\r\n\r\n" + (b"y" * 900 + b"\r\n") * 300 + b".", b"552 5.3.4 ")
            await w.send(b"MAIL FROM:<app@example.com>", b"250 ")
            await w.send(b"RCPT TO:<user@example.net>", b"250 ")
            await w.send(b"DATA", b"354")
            await w.send(b"Subject: nul\r\n\r\n\x00\r\n.", b"554 5.6.0 ")
            await w.send(b"QUIT now", b"501 5.5.4 ")
            await w.send(b"QUIT", b"221 2.0.0 ")
            await w.close()
            # Addresses taken exactly: nothing with a control byte or non-ASCII reached the upstream
            assert raw.commands and all(c.isascii() and not re.search(rb"[\x00-\x1f\x7f]", c) for c in raw.commands)
            assert len(raw.bodies) == 1 and raw.bodies[0].endswith(b"\r\n\r\nfine\r\n")  # only the clean message
            sent = await svc.store.list_messages(MessageFilter(status="sent"))
            assert [m.message_id for m in sent] == ["walk@example.com"]
    finally:
        raw.close()


async def test_relay_auth_paths_are_proper(tmp_path, monkeypatch, upstream):
    monkeypatch.setenv("BOUNCEPROXY_RELAY_USERS", "app:right")
    async with Service(make_config(tmp_path, upstream.port)) as svc:
        w = await Walker.open(svc.relay_address[1])
        await w.send(b"EHLO client.test", b"250 ")
        await w.send(b"AUTH", b"501 5.5.4 ")
        await w.send(b"AUTH A B C", b"501 5.5.4 ")
        await w.send(b"AUTH CRAM-MD5", b"504 5.5.4 ")
        await w.send(b"AUTH PLAIN !!!notbase64", b"501 5.5.2 ")
        await w.send(b"AUTH PLAIN " + base64.b64encode(b"no-nuls"), b"501 5.5.2 ")
        await w.send(b"AUTH PLAIN " + base64.b64encode(b"\x00app\x00wrong"), b"535 5.7.8 ")
        await w.send(b"AUTH LOGIN", b"334 ")
        await w.send(b"*", b"501 5.7.0 ")
        await w.send(b"AUTH PLAIN", b"334 ")
        await w.send(b"not base64 at all", b"501 5.5.2 ")
        await w.send(b"AUTH PLAIN " + base64.b64encode(b"\x00app\x00right"), b"235 2.7.0 ")
        await w.send(b"AUTH PLAIN " + base64.b64encode(b"\x00app\x00right"), b"503 5.5.1 ")
        await w.send(b"QUIT", b"221 2.0.0 ")
        await w.close()


async def test_bounce_mx_every_reply_is_proper(tmp_path, upstream):
    config = make_config(tmp_path, upstream.port, inbound={"plain_addresses": ("bounce@bounces.test",),
                                                           "max_message_size": 300_000, "max_line_length": 20_000})
    async with Service(config) as svc:
        w = await walk_common(svc.inbound_address[1])
        await w.send(b"RCPT TO:<victim@example.net>", b"503 5.5.1 ")
        await w.send(b"MAIL FROM:<>", b"250 2.1.0 ")
        await w.send(b"RCPT TO:<victim@example.net>", b"550 5.7.1 ")
        await w.send(b"RCPT TO:<nobody@bounces.test>", b"550 5.1.1 ")
        await w.send(b"RSET", b"250 2.0.0 ")
        await walk_transaction(w, b"", b"bounce@bounces.test", b"victim@example.net", 20_001, b"250 2.0.0 ")
        await w.send(b"MAIL FROM:<>", b"250 ")
        await w.send(b"RCPT TO:<bounce@bounces.test>", b"250 ")
        await w.send(b"DATA", b"354")
        await w.send(b"Subject: big\r\n\r\n" + (b"y" * 900 + b"\r\n") * 400 + b".", b"552 5.3.4 ")
        await w.send(b"QUIT", b"221 2.0.0 ")
        await w.close()


async def test_internal_error_is_a_proper_451_without_its_text(service, monkeypatch):
    async def broken(*args):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(service.relay_handler, "handle_RSET", broken)
    w = await Walker.open(service.relay_address[1])
    await w.send(b"EHLO client.test", b"250 ")
    lines = await w.send(b"RSET", b"451 4.3.0 ")
    assert b"secret" not in b"".join(lines) and b"RuntimeError" not in b"".join(lines)
    await w.send(b"NOOP", b"250 2.0.0 ")  # the session goes on
    await w.close()


async def test_upstream_success_reply_passes_verbatim(service, upstream):
    """SES's `250 Ok <message id>` reaches the application as SES wrote it (apps read the id from it)."""
    smtp = aiosmtplib.SMTP(hostname=service.relay_address[0], port=service.relay_address[1], start_tls=False)
    await smtp.connect()
    code, text = await smtp.sendmail("app@example.com", ["user@example.net"], b"Subject: x\r\n\r\nhi\r\n")
    await smtp.quit()
    assert text.startswith("Ok 0100018c")


async def test_upstream_refusal_without_enhanced_code_gets_an_undefined_one(service):
    smtp = aiosmtplib.SMTP(hostname=service.relay_address[0], port=service.relay_address[1], start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    reply = await smtp.execute_command(b"MAIL", b"FROM:<unverified@example.com>")
    await smtp.quit()
    assert reply.code == 554 and reply.message.startswith("5.0.0 Message rejected: Email address is not verified.")


async def test_bounce_mx_stores_a_20000_byte_line_exactly(tmp_path, upstream):
    """A real client (smtplib) sends a bounce with one 20,000-byte line; the stored bytes are identical."""
    import smtplib

    config = make_config(tmp_path, upstream.port, inbound={"plain_addresses": ("bounce@bounces.test",)})
    line = b"<p>" + b"unwrapped html " * 1333 + b"</p>"
    assert len(line) >= 20_000
    raw = (b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounce@bounces.test\r\nSubject: Undelivered\r\n"
           b"Content-Type: text/html\r\n\r\n" + line + b"\r\n.a line smtplib dot-stuffs\r\nend\r\n")
    async with Service(config) as svc:
        host, port = svc.inbound_address

        def deliver():
            with smtplib.SMTP(host, port, timeout=10) as smtp:
                refused = smtp.sendmail("", ["bounce@bounces.test"], raw)
                return refused, smtp.noop()

        refused, noop = await asyncio.to_thread(deliver)
        assert refused == {}
        (stored,) = await inbound(svc)
        assert stored.raw == raw


async def test_bounce_mx_line_over_its_limit_gets_a_proper_permanent_refusal(tmp_path, upstream):
    config = make_config(tmp_path, upstream.port, inbound={"plain_addresses": ("bounce@bounces.test",),
                                                           "max_line_length": 5000})
    async with Service(config) as svc:
        smtp = aiosmtplib.SMTP(hostname=svc.inbound_address[0], port=svc.inbound_address[1], start_tls=False)
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail("", ["bounce@bounces.test"], b"Subject: x\r\n\r\n" + b"z" * 5001 + b"\r\n")
        assert refused.value.code == 554 and refused.value.message.startswith("5.6.0 ")
        assert "5000" in refused.value.message and "max_line_length" in refused.value.message
        await smtp.quit()
        assert await inbound(svc) == [] and await svc.store.count_rows("inbound") == 0


def test_max_line_length_is_checked_against_rfc_and_size(tmp_path):
    from proxy.config import ConfigError, load_config

    path = tmp_path / "c.toml"
    for value in (100, 99_999_999):
        path.write_text(f'[inbound]\nmax_line_length = {value}\n')
        with pytest.raises(ConfigError) as err:
            load_config(path, env={})
        assert "[inbound] max_line_length" in str(err.value) and str(path) in str(err.value)
    path.write_text('[inbound]\nmax_line_length = 20000\n')
    assert load_config(path, env={}).inbound.max_line_length == 20000


def test_walks_hold_under_uvloop(tmp_path):
    """`bounceproxy serve` runs both listeners on uvloop: the same walks, the same replies."""
    uvloop = pytest.importorskip("uvloop")

    async def both():
        await test_relay_every_reply_is_proper(tmp_path / "relay")
        up = await RawUpstream().start()
        try:
            await test_bounce_mx_every_reply_is_proper(tmp_path / "mx", up)
        finally:
            up.close()

    (tmp_path / "relay").mkdir()
    (tmp_path / "mx").mkdir()
    uvloop.run(both())


async def test_relay_tls_and_auth_paths_are_proper(tmp_path, upstream, server_cert, monkeypatch):
    import ssl

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    monkeypatch.setenv("BOUNCEPROXY_RELAY_USERS", "app:right")
    config = make_config(tmp_path, upstream.port, relay={"tls_cert": str(cert), "tls_key": str(key)})
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    async with Service(config) as svc:
        w = await Walker.open(svc.relay_address[1])
        assert b"250-STARTTLS" in await w.send(b"EHLO client.test", b"250 ")
        await w.send(b"AUTH PLAIN " + base64.b64encode(b"\x00app\x00right"), b"538 5.7.11 ")  # not before TLS
        await w.send(b"STARTTLS", b"220 2.0.0 ")
        await w.writer.start_tls(ctx)
        ehlo = await w.send(b"EHLO client.test", b"250 ")
        assert b"250-STARTTLS" not in ehlo and any(line.startswith(b"250-AUTH") for line in ehlo)
        await w.send(b"STARTTLS", b"5")  # once is enough: refused with a proper reply
        await w.send(b"AUTH PLAIN " + base64.b64encode(b"\x00app\x00right"), b"235 2.7.0 ")
        await w.send(b"QUIT", b"221 2.0.0 ")
        await w.close()


async def test_too_many_unknown_commands_end_the_session_properly(service):
    w = await Walker.open(service.relay_address[1])
    for verb in (b"ETRN x", b"TURN", b"ATRN", b"BDAT 10", b"XCLIENT NAME=x"):
        lines = await w.send(verb, b"5")
    assert lines[-1].startswith(b"502 5.5.1 Too many unrecognized commands")
    assert await asyncio.wait_for(w.reader.read(), 5) == b""  # and the connection is closed
    await w.close()


def stock_replies() -> list[str]:
    """Every reply text aiosmtpd's own source can push, f-strings and .format() filled with `X`."""
    import ast
    import inspect

    import aiosmtpd.smtp

    texts = []
    for node in ast.walk(ast.parse(inspect.getsource(aiosmtpd.smtp))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "push" and node.args):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            texts.append(arg.value)
        elif isinstance(arg, ast.JoinedStr):
            texts.append("".join(v.value if isinstance(v, ast.Constant) else "X" for v in arg.values))
        elif isinstance(arg, ast.Call) and getattr(arg.func, "attr", None) == "format":
            texts.append(arg.func.value.value.replace("{}", "X"))
        elif isinstance(arg, ast.BinOp) and isinstance(arg.left, ast.Constant):
            texts.append(arg.left.value + "X")
    return texts


def test_every_stock_reply_of_aiosmtpd_is_replaced_by_a_proper_one():
    """The table in smtp_guard is complete for the installed aiosmtpd: a new stock text fails here."""
    from proxy.smtp_guard import GuardedSMTP

    texts = stock_replies()
    assert len(texts) > 40 and "502 EXPN not implemented" in texts
    guard = GuardedSMTP.__new__(GuardedSMTP)
    guard.data_size_limit, guard._verb = 1000, "MAIL"
    texts += [code + t[1:] for t in texts if t.startswith("X ") for code in ("250", "501")]  # HELP's code
    for text in texts:
        if text[:1] in "3X" or text.startswith(("220 X", "250 X", "250-")):  # greeting, HELO/EHLO, 3xx: RFC 2034
            continue
        proper = guard._proper(text)
        assert PROPER.match(proper.encode()), (text, proper)
        assert "Error:" not in proper and "(X)" not in proper, (text, proper)
