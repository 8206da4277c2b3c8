"""The upstream side of the relay: SMTP replies, pooled aiosmtplib connections.

A connection carries many transactions (RSET between when one was left open), is checked with
NOOP after it idled, and is replaced when broken, idle too long, out of step, or after N messages.

In step: replies pair with commands by arrival. A reply the upstream sends beyond the one asked for
would be taken as the next command's answer (a stale 250 read as the answer to DATA), and a multi-line
reply whose lines disagree (`554-…` then `250 …`) must not pass for its last line's code. So each
connection reads and counts the upstream's replies from the raw bytes itself (ReplyAudit; aiosmtplib
only connects, says EHLO, authenticates and quits); a reply out of protocol closes the connection and
the client is told the message was not sent.
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import deque
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

from proxy.relay.busypoll import UPSTREAM, BusyPoll
from proxy.smtp_guard import UpstreamText

log = logging.getLogger(__name__)

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_DOT = re.compile(rb"(?m)^\.")  # dot-stuffing (RFC 5321 4.5.2)
_REPLY_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # never passed on to a client (lines split on LF)


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: the code and the text, lines joined by newlines, as the upstream sent them."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def enhanced(self) -> str | None:
        m = _ENHANCED.match(self.text)
        return m.group(0) if m else None

    def line(self) -> str:
        """One line for logs and the store: `550 5.1.1 text`, continuation lines joined by spaces."""
        return f"{self.code} {' '.join(part.strip() for part in self.text.splitlines())}".rstrip()

    def smtp(self) -> str:
        """The reply as aiosmtpd pushes it: multi-line replies keep their lines (ASCII only)."""
        text = self.text
        if text.isascii() and text.isprintable():  # one line, nothing to replace: the common case
            return UpstreamText(f"{self.code} {text}".rstrip())
        lines = _REPLY_CONTROL.sub(" ", self.text.encode("ascii", "replace").decode("ascii")).split("\n") or [""]
        head = [f"{self.code}-{part}" for part in lines[:-1]]
        return UpstreamText("\r\n".join([*head, f"{self.code} {lines[-1]}".rstrip()]))


class UpstreamUnavailable(Exception):
    """No usable upstream connection: unreachable, TLS failure, timeout, or dropped mid-transaction.

    Its text is a sentence for the client's 451 (never an exception's text)."""


class UpstreamOutOfStep(UpstreamUnavailable):
    """The upstream answered out of protocol (a reply nobody asked for, 250 to DATA, mixed codes):
    the connection is closed and the message counts as not sent. `body_sent` says whether the
    body had gone out before (then the upstream may still deliver it)."""

    def __init__(self, why: str, body_sent: bool = False):
        super().__init__(why)
        self.body_sent = body_sent


class UpstreamStale(UpstreamUnavailable):
    """A reused connection refused the RSET folded into the next MAIL: closed, and the transaction
    goes on a fresh connection (nothing of it was accepted: the connection is gone with it)."""


class UpstreamAuthFailed(Exception):
    """The upstream refused our credentials: an account problem, not the message's."""

    def __init__(self, reply: Reply):
        super().__init__(reply.line())
        self.reply = reply


_UPSTREAM_ID_PATTERNS = (
    re.compile(r"queued as\s+<?([\w.@-]{3,80})>?", re.I),  # Postfix, many MTAs
    re.compile(r"\bid=<?([\w.@-]{3,80})>?", re.I),  # Exim
    re.compile(r"^(?:2\.\d{1,3}\.\d{1,3}\s+)?Ok:?\s+<?([\w.@-]{8,80})>?\s*$", re.I),  # SES: "Ok <id>"
)


def upstream_id_from(reply: Reply) -> str | None:
    """The upstream's message id from its final 250 (SES `Ok <id>`, Postfix `queued as ID`)."""
    text = reply.line()[4:]
    for pattern in _UPSTREAM_ID_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


class ReplyAudit:
    """The upstream's replies, read and counted from the bytes it sends.

    Fed from the protocol's data_received: `replies` is the number of complete replies so far,
    `partial` bytes of one not yet complete. While an exchange waits (UpstreamConnection._send), each
    complete reply goes to `queue` as (first line's code, whether a later line carried another code,
    the text of the lines carrying the first code)."""

    __slots__ = ("partial", "replies", "malformed", "_first", "_mixed", "_lines", "_dropped", "queue", "want",
                 "waiter")

    def __init__(self):
        self.partial = bytearray()
        self.replies = 0
        self.malformed = False
        self._first: bytes | None = None
        self._mixed = False
        self._lines: list[bytes] = []
        self._dropped = 0  # lines of the reply under way beyond _MAX_REPLY_LINES
        # While an exchange waits: every complete reply, in order, and the future woken once `want` of
        # them are in (or a reply is malformed, or the connection is lost).
        self.queue: deque[tuple[int, bool, str]] | None = None
        self.want = 0
        self.waiter: asyncio.Future | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        buf = self.partial
        buf += data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = bytes(buf[start:end + 1])
            start = end + 1
            code = line[:3]
            if not (code.isdigit() and b"2" <= code[:1] <= b"5") or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                self.malformed = True
            if self._first is None:
                self._first, self._mixed, self._lines, self._dropped = code, False, [], 0
            elif code != self._first:
                self._mixed = True
            if code == self._first:
                if len(self._lines) < _MAX_REPLY_LINES:
                    self._lines.append(line[4:].strip(b" \t\r\n"))
                else:
                    self._dropped += 1
            if line[3:4] != b"-":
                self.replies += 1
                if self._dropped:
                    log.warning("upstream reply %s of %d lines: its text keeps the first %d", self._first.decode(
                        "ascii", "replace"), _MAX_REPLY_LINES + self._dropped, _MAX_REPLY_LINES)
                if self.queue is not None:
                    text = b"\n".join(self._lines).decode("utf-8", "replace")
                    self.queue.append((int(self._first) if self._first.isdigit() else 0, self._mixed, text))
                self._first = None
        del buf[:start]
        if len(buf) > _MAX_REPLY_LINE:  # bytes without a line end: no SMTP reply, and bounded memory
            self.malformed = True
            del buf[:]
        if self.queue is not None and (self.malformed or len(self.queue) >= self.want):
            self.wake()


_MAX_REPLY_LINE = 65536
_MAX_REPLY_LINES = 100  # lines of one reply kept for its text (a reply is seldom more than a few)
_JOIN_AT_MOST = 65536  # end_data: a rest up to this size goes in one write with the end of data


def _expire(waiter: asyncio.Future) -> None:
    """A command's reply did not come within [upstream] command_timeout."""
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())
_COMMAND_CONTROL = re.compile("[\x00-\x1f\x7f]")  # never in a command line (aiosmtplib refuses it too)
_COMMAND_CONTROL_BYTES = re.compile(b"[\x00-\x1f\x7f]")


class UpstreamConnection:
    """One aiosmtplib connection and what the pool needs to know about it."""

    def __init__(self, client: aiosmtplib.SMTP, busy_poll: BusyPoll | None = None):
        self.client = client
        self.busy_poll = busy_poll  # polled for each reply while it is due
        self._answer_due = 0.0
        self.messages = 0
        self.last_used = time.monotonic()
        self.in_transaction = False
        self.utf8 = False  # this transaction's MAIL carried SMTPUTF8 (so non-ASCII addresses may go)
        self.audit = ReplyAudit()
        self.consumed = 0  # replies handed to us, one per command (two for DATA and its end)
        self.pipelining = False  # the upstream offered PIPELINING and [upstream] pipelining allows it
        self.pending_rset = False  # the RSET that ends the last transaction, to go with the next MAIL
        self.prefetched: deque[tuple[str, Reply | UpstreamUnavailable]] = deque()  # RCPTs sent with MAIL
        # The command timeout: one timer per connection, re-armed only when it fires before the deadline
        # of the exchange under way (not a timer made and cancelled per command).
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self.in_body = False  # DATA went and no refusal of it or end of data was read: never reused
        self.data_prefetched: Reply | UpstreamUnavailable | None = None  # DATA's reply, from the MAIL flight
        protocol = client.protocol
        if protocol is not None:  # count from here on: the handshake's replies are all consumed
            original = protocol.data_received
            original_lost = protocol.connection_lost

            def data_received(data: bytes, _feed=self.audit.feed, _original=original) -> None:
                _feed(data)
                _original(data)

            def connection_lost(exc, _wake=self.audit.wake, _original=original_lost) -> None:
                _original(exc)
                _wake()  # a flight waiting for replies learns at once

            protocol.data_received = data_received
            protocol.connection_lost = connection_lost
            if protocol.transport is not None:
                # uvloop's transports keep the bound data_received they were given: hand them ours.
                protocol.transport.set_protocol(protocol)

    @property
    def in_step(self) -> bool:
        """Every reply the upstream sent was one we asked for, and nothing more is on its way."""
        audit = self.audit
        return audit.replies == self.consumed and not audit.partial and not audit.malformed

    def _out_of_step(self, why: str, body_sent: bool = False) -> UpstreamOutOfStep:
        log.warning("upstream out of step: %s; closing that connection", why)
        self.close()
        return UpstreamOutOfStep(f"the upstream answered out of protocol ({why})", body_sent)

    @property
    def max_size(self) -> int | None:
        size = self.client.esmtp_extensions.get("size", "")
        return int(size) if size.isdigit() and int(size) > 0 else None

    def supports(self, extension: str) -> bool:
        return self.client.supports_extension(extension)

    def _ready(self) -> None:
        if self.client.protocol is None or not self.client.is_connected:
            self.close()
            raise UpstreamUnavailable("the upstream closed the connection")
        if not self.in_step:
            raise self._out_of_step("it sent a reply nobody asked for")

    async def command(self, *args: bytes) -> Reply:
        """One command and its one reply."""
        if any(_COMMAND_CONTROL_BYTES.search(a) for a in args):
            raise UpstreamUnavailable("a command argument held a control character and was not sent")
        return (await self.flight([b" ".join(args) + b"\r\n"]))[0]

    async def _exchange(self, data: bytes, count: int) -> list[tuple[int, bool, str]]:
        """Write `data` and wait for `count` complete replies, read by the audit (never by aiosmtplib,
        whose parse, lock and wait_for per command were a tenth of the relay's own time per message)."""
        self._send(data, count)
        return await self._replies()

    def _send(self, data: bytes, count: int) -> None:
        """Write `data`; from now on the audit collects its `count` replies for _replies()."""
        self._ready()
        audit = self.audit
        loop = asyncio.get_running_loop()
        audit.waiter = loop.create_future()
        audit.queue, audit.want = deque(), count
        timeout = self.client.timeout
        if timeout:
            self._deadline = loop.time() + timeout
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._time_out)
        try:
            self.client.protocol.write(data)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._settle()
            self.close()
            raise UpstreamUnavailable(_describe(exc)) from None
        if self.busy_poll is not None:
            self._answer_due = self.busy_poll.expect(UPSTREAM)

    async def _replies(self) -> list[tuple[int, bool, str]]:
        audit = self.audit
        try:
            await audit.waiter
            if self._answer_due:
                self.busy_poll.answered(UPSTREAM, self._answer_due)
                self._answer_due = 0.0
            return list(audit.queue)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            self.close()
            raise UpstreamUnavailable(_describe(exc)) from None
        finally:
            self._settle()

    def _settle(self) -> None:
        audit = self.audit
        audit.queue, audit.waiter, audit.want = None, None, 0

    def _time_out(self) -> None:
        """The connection's timer: the exchange under way, if any, failed to get its replies in time."""
        self._timer = None
        waiter = self.audit.waiter
        if waiter is None or waiter.done():
            return  # nothing waits: the timer stays off until the next exchange
        loop = waiter.get_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._time_out)
            return
        _expire(waiter)

    async def flight(self, commands: list[bytes]) -> list[Reply | UpstreamUnavailable]:
        """Commands (each a whole line with its CRLF) in one write, their replies read in order.

        More than one only where the upstream offered PIPELINING (RFC 2920). The replies are taken
        from the audit, which counts every one: the in-step invariant holds. A refusal that closes the
        connection (421, a refusal with mixed codes) leaves the commands after it unanswered: they get
        UpstreamUnavailable; a single command's such reply is returned (the connection closed)."""
        return self._answers(await self._exchange(b"".join(commands), len(commands)), len(commands))

    def _answers(self, got: list[tuple[int, bool, str]], count: int) -> list[Reply | UpstreamUnavailable]:
        audit = self.audit
        if audit.malformed:
            self.consumed = audit.replies
            raise self._out_of_step("a reply line without a valid code")
        if len(got) < count:
            self.close()
            raise UpstreamUnavailable("the upstream closed the connection")
        self.consumed += count
        if audit.replies > self.consumed or audit.partial:
            raise self._out_of_step("it sent more replies than it was sent commands")
        replies: list[Reply | UpstreamUnavailable] = []
        gone: UpstreamUnavailable | None = None
        for first, mixed, text in got:
            if gone is not None:
                replies.append(gone)
                continue
            if mixed and first < 400:
                # RFC 5321 4.2.1: every line of a reply carries one code. The first line's decides:
                # a refusal stays a refusal; anything else cannot be trusted to mean sent.
                raise self._out_of_step(f"a reply whose lines carry {first} and another code")
            replies.append(Reply(first, text))
            if mixed or first == 421:
                self.close()
                gone = UpstreamUnavailable("the upstream closed the connection" if first == 421
                                           else "the upstream answered out of protocol")
        return replies

    def can_pipeline(self, recipient: str, utf8: bool) -> bool:
        """Whether this RCPT may go in a flight under MAIL (SMTPUTF8 or not): what rcpt() would send,
        not what it refuses itself."""
        return self.pipelining and (recipient.isascii() or utf8) and not _COMMAND_CONTROL.search(recipient)

    async def mail(self, sender: str, options: list[str], recipients: list[str] = (), data: bool = False) -> Reply:
        """MAIL; with a pending RSET (folded) and `recipients` (the client's pipelined RCPTs, each
        allowed by can_pipeline) in the same write where the upstream pipelines, and DATA after them
        when the client pipelined its DATA too (`data`, RFC 2920: the last command of a group). The
        RCPTs' replies wait in `prefetched` for rcpt(), DATA's in `data_prefetched` for data_reply().
        A refused RSET raises UpstreamStale: the transaction goes on a fresh connection."""
        self.utf8 = any(o.upper() == "SMTPUTF8" for o in options)
        if (self.utf8 or not sender.isascii()) and not self.supports("smtputf8"):
            # Offered to the client from what an earlier connection said: a mismatch of ours, temporary.
            self.utf8 = False
            return Reply(451, "4.5.4 The upstream does not offer SMTPUTF8 on this connection; "
                              "message not sent, please retry later")
        self.prefetched.clear()
        self.data_prefetched = None
        args = [b"MAIL", f"FROM:<{sender}>".encode("utf-8"), *(o.encode() for o in options)]
        recipients = [r for r in recipients if self.can_pipeline(r, self.utf8)]  # as the caller chose them
        if not (self.pending_rset or recipients) or any(_COMMAND_CONTROL_BYTES.search(a) for a in args):
            self.in_transaction = True
            return await self.command(*args)
        commands = [b" ".join(args) + b"\r\n", *(f"RCPT TO:<{r}>\r\n".encode("utf-8") for r in recipients)]
        data = data and bool(recipients)
        if data:
            commands.append(b"DATA\r\n")
            self.in_body = True  # until its reply says otherwise: a 354 leaves the upstream in the body
        rset = self.pending_rset
        if rset:
            commands.insert(0, b"RSET\r\n")
            self.pending_rset = False
        self.in_transaction = True
        replies = await self.flight(commands)
        if data:
            self.data_prefetched = replies.pop()
            self.in_body = isinstance(self.data_prefetched, Reply) and self.data_prefetched.code == 354
        if rset:
            first = replies.pop(0)
            if not isinstance(first, Reply) or first.code != 250:
                self.close()
                what = first.line() if isinstance(first, Reply) else str(first)
                log.info("upstream refused RSET on a reused connection (%s); taking a fresh one", what)
                raise UpstreamStale(f"the upstream refused RSET ({what})")
        reply = replies.pop(0)
        if isinstance(reply, UpstreamUnavailable):
            raise reply
        self.prefetched.extend(zip(recipients, replies))
        return reply

    async def rcpt(self, recipient: str) -> Reply:
        if self.prefetched and self.prefetched[0][0] == recipient:  # sent with MAIL: its reply is here
            reply = self.prefetched.popleft()[1]
            if isinstance(reply, UpstreamUnavailable):
                raise reply
            return reply
        if not recipient.isascii() and not self.utf8:
            # Never sent: a protocol mismatch, not the recipient's fault (failures.py: a send failure).
            return Reply(553, "5.6.7 A non-ASCII recipient needs SMTPUTF8, which this transaction does not use")
        return await self.command(b"RCPT", f"TO:<{recipient}>".encode("utf-8"))

    async def data(self, content: bytes) -> Reply:
        """DATA, then the whole body (un-stuffed, as aiosmtpd hands it over): for callers that hold it."""
        reply = await self.data_start()
        if reply.code != 354:
            return reply
        return await self.end_data(_DOT.sub(b"..", normalize_message_line_endings(content)))

    async def data_start(self) -> Reply:
        """DATA alone: only a 354 opens the body."""
        self.send_data()
        return await self.data_reply()

    def send_data(self) -> None:
        """Write DATA without waiting: its reply comes while the client is still sending the body (or
        nothing, when DATA went in the MAIL flight).

        Audited steps rather than aiosmtplib's execute_data_command, which reports a refusal of
        DATA and one of the end of data alike, and takes a 250 to DATA for a refusal of the body."""
        if self.prefetched:  # RCPTs sent upstream that the client never had answered: never send on them
            raise self._out_of_step("pipelined RCPTs were sent that the client's commands never reached")
        if self.data_prefetched is not None:
            return
        self._send(b"DATA\r\n", 1)
        self.in_body = True

    async def data_reply(self) -> Reply:
        """The reply to send_data's DATA: 354, or a refusal before any byte of the body (the transaction
        stays open: RSET)."""
        if self.data_prefetched is not None:
            reply, self.data_prefetched = self.data_prefetched, None
            if isinstance(reply, UpstreamUnavailable):
                raise reply
        else:
            reply = self._answers(await self._replies(), 1)[0]
        if reply.code != 354:
            self.in_body = False
        if reply.code != 354 and reply.code < 400:
            raise self._out_of_step(f"{reply.code} to DATA, where only 354 opens the body")
        return reply

    async def send_body(self, stretch: bytes) -> None:
        """Part of the body as the client sent it, dot-stuffed, ending with CRLF: nothing to re-stuff.
        Waits while the upstream's socket is full, so a slow upstream bounds the relay's memory."""
        protocol = self.client.protocol
        try:
            if protocol is None or not self.client.is_connected:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            protocol.write(stretch)
            await protocol._drain_helper()  # noqa: SLF001 - aiosmtplib's flow control, as StreamWriter.drain
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.close()
            raise UpstreamUnavailable(_describe(exc)) from None

    async def end_data(self, last: bytes = b"") -> Reply:
        """The rest of the body (dot-stuffed) and the end of data; only a 250 to it means sent."""
        self._ready()  # nothing of the end went out: an out-of-step here is no body sent
        if len(last) > _JOIN_AT_MOST:  # a large rest goes as it is, not copied to add five bytes
            await self.send_body(last)
            last = b""
        try:
            reply = (await self.flight([last + b".\r\n"]))[0]
        except UpstreamOutOfStep as exc:
            exc.body_sent = True
            raise
        self.in_transaction = self.in_body = False
        if reply.ok and reply.code != 250:
            raise self._out_of_step(f"{reply.code} to the end of data, where only 250 means sent", body_sent=True)
        if reply.ok:
            self.messages += 1
        return reply

    def abort(self) -> None:
        """Give up a body half sent: the connection closes without the end of data, so the upstream
        drops the transaction (RFC 5321 3.8) and never delivers half a message."""
        self.close()

    async def reset(self) -> None:
        """End a transaction left open. Where the upstream pipelines, the RSET waits for the next MAIL
        and goes in the same write (a round trip saved); else it goes now."""
        self.prefetched.clear()
        self.data_prefetched = None
        if self.in_transaction and self.usable:
            if self.pipelining:
                self.pending_rset = True
            else:
                reply = await self.command(b"RSET")
                if not reply.ok:
                    self.close()
        self.in_transaction = False

    @property
    def usable(self) -> bool:
        return self.client.is_connected and self.in_step and not self.in_body

    def close(self) -> None:
        waiter = self.audit.waiter  # an exchange under way learns at once that no reply will come
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a broken transport may fail; it is gone either way
            pass


def _describe(exc: BaseException) -> str:
    """A sentence for the client: what went wrong, never the exception's own text (that goes to the log)."""
    if isinstance(exc, (asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return "the upstream did not answer in time"
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return "cannot connect to the upstream"
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate" in str(exc).lower():
        return "TLS with the upstream failed (its certificate was not accepted)"
    if isinstance(exc, ssl.SSLError) or "SSL" in type(exc).__name__:
        return "TLS with the upstream failed"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "the upstream closed the connection"
    if "STARTTLS" in str(exc):
        return "the upstream does not offer STARTTLS, which [upstream] tls requires"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code == -1 or "malformed" in str(exc).lower() or "too long" in str(exc).lower():
            return "the upstream sent a malformed reply"
        return f"the upstream refused the connection setup with {exc.code}"
    return "the upstream connection failed"


def _detail(exc: BaseException) -> str:
    """The exception's own text, for the log only."""
    return f"{exc.__class__.__name__}: {exc}"


class UpstreamPool:
    """Bounded pool of authenticated upstream connections, reused across messages."""

    def __init__(self, cfg, local_hostname: str, username: str | None, password: str | None,
                 tls_context: ssl.SSLContext | None = None):
        self.cfg = cfg
        self.local_hostname = local_hostname
        self.username = username
        self.password = password
        self.tls_context = tls_context or self._tls_context(cfg)
        self._idle: list[UpstreamConnection] = []
        self.busy_poll: BusyPoll | None = None  # given to each connection (proxy.relay.busypoll)
        self._slots = asyncio.Semaphore(cfg.pool_size)
        self.max_size: int | None = None
        self.extensions: set[str] = set()
        self.extensions_known = False  # until a connection has said what it offers
        self._down_since: float | None = None
        self.connects = 0

    @staticmethod
    def _tls_context(cfg) -> ssl.SSLContext | None:
        if cfg.tls == "none":
            return None
        ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not cfg.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    @property
    def name(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    async def _connect(self) -> UpstreamConnection:
        cfg = self.cfg
        client = aiosmtplib.SMTP(
            hostname=cfg.host, port=cfg.port, local_hostname=self.local_hostname,
            timeout=cfg.command_timeout, use_tls=cfg.tls == "implicit",
            start_tls=True if cfg.tls == "starttls" else False,
            tls_context=self.tls_context, validate_certs=cfg.verify_tls,
        )
        try:
            await asyncio.wait_for(client.connect(timeout=cfg.connect_timeout), cfg.connect_timeout + 5)
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
            if self.username:
                await client.login(self.username, self.password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            self._note_down(f"authentication refused: {exc.code} {exc.message}")
            raise UpstreamAuthFailed(Reply(exc.code, exc.message)) from None
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            client.close()
            self._note_down(f"{_describe(exc)} ({_detail(exc)})")
            raise UpstreamUnavailable(_describe(exc)) from None
        self.connects += 1
        conn = UpstreamConnection(client, self.busy_poll)
        conn.pipelining = getattr(cfg, "pipelining", True) and client.supports_extension("pipelining")
        self.max_size = conn.max_size
        self.extensions = set(client.esmtp_extensions)  # remembered: what the relay may advertise
        self.extensions_known = True
        if self._down_since is not None:
            log.warning("upstream %s is reachable again after %.0fs", self.name, time.monotonic() - self._down_since)
            self._down_since = None
        return conn

    def _note_down(self, why: str) -> None:
        """Say it once per outage, not once per message."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("upstream %s unavailable: %s", self.name, why)

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        """A pooled connection, or a new one (`fresh`: always a new one)."""
        if self._slots.locked():  # all in use: wait for one, bounded (a free slot is taken at once)
            try:
                await asyncio.wait_for(self._slots.acquire(), self.cfg.command_timeout)
            except asyncio.TimeoutError:
                raise UpstreamUnavailable("all upstream connections are busy") from None
        else:
            await self._slots.acquire()
        try:
            now = time.monotonic()
            while self._idle and not fresh:
                conn = self._idle.pop()
                idle = now - conn.last_used
                if not conn.usable or idle > self.cfg.idle_timeout:
                    conn.close()
                    continue
                if idle > self.cfg.noop_after:
                    try:
                        if not (await conn.command(b"NOOP")).ok:
                            conn.close()
                            continue
                    except UpstreamUnavailable:
                        continue
                return conn
            return await self._connect()
        except BaseException:
            self._slots.release()
            raise

    async def release(self, conn: UpstreamConnection) -> None:
        try:
            if conn.usable:
                try:
                    await conn.reset()
                except UpstreamUnavailable:
                    pass
            if conn.usable and conn.messages < self.cfg.max_messages_per_connection:
                conn.last_used = time.monotonic()
                self._idle.append(conn)
            else:
                await self._quit(conn)
        finally:
            self._slots.release()

    @staticmethod
    async def _quit(conn: UpstreamConnection) -> None:
        if conn.usable:
            try:
                await asyncio.wait_for(conn.client.quit(), 5)
            except Exception:  # noqa: BLE001 - a polite QUIT that fails changes nothing
                pass
        conn.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(c) for c in idle), return_exceptions=True)
