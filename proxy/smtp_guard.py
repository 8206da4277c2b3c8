"""Defences shared by both listeners: connection limits (total and per IP), a cap on the whole
session's length (slowloris), AUTH failure rate limiting, addresses taken exactly or refused, and
every reply a proper reply (RFC 3463 enhanced code and a sentence, never an exception's text).
aiosmtpd already bounds command and line length and closes idle sessions."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, _AuthMechAttr, syntax

from proxy.relay.busypoll import CLIENT

log = logging.getLogger(__name__)

REPLY_INTERNAL = "451 4.3.0 Internal error while handling that command; please retry later"
# A reply line that carries an RFC 3463 enhanced status code and then some text.
PROPER_REPLY = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3} \S")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# aiosmtpd's own replies, as it words them, and what each listener says instead.
STOCK_REPLIES: dict[str, str] = {
    "250 OK": "250 2.0.0 OK",
    "221 Bye": "221 2.0.0 Bye",
    "500 Error: bad syntax": "500 5.5.2 Syntax error: an empty or unreadable command line",
    "500 Command line too long": "500 5.5.2 Command line too long",
    "500 Error: strict ASCII mode": "500 5.5.2 Non-ASCII bytes in a command line",
    "500 Error: Cannot describe error": REPLY_INTERNAL,
    "554 Command refused due to lack of security": "554 5.7.0 Command refused: the TLS handshake did not complete",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "454 TLS not available": "502 5.5.1 STARTTLS is not offered here",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "500 Error: command 'AUTH' not recognized": "503 5.5.1 AUTH needs EHLO, not HELO",
    "503 Already authenticated": "503 5.5.1 Already authenticated",
    "501 Not enough value": "501 5.5.4 AUTH needs a mechanism name",
    "501 Too many values": "501 5.5.4 Too many arguments to AUTH",
    "252 Cannot VRFY user, but will accept message and attempt delivery":
        "252 2.0.0 Cannot VRFY addresses; RCPT says whether mail for one is accepted",
    "503 Error: nested MAIL command": "503 5.5.1 A transaction is already open: send RSET first",
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": "501 5.5.4 BODY takes 7BIT or 8BITMIME",
    "501 Error: SMTPUTF8 takes no arguments": "501 5.5.4 SMTPUTF8 takes no value",
    "501 Error: SMTPUTF8 disabled": "555 5.5.4 SMTPUTF8 is not offered here",
    "555 MAIL FROM parameters not recognized or not implemented":
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
    "555 RCPT TO parameters not recognized or not implemented":
        "555 5.5.4 RCPT TO parameters not recognized or not implemented",
    "503 Error: need MAIL command": "503 5.5.1 Need MAIL command first",
    "503 Error: need RCPT command": "503 5.5.1 Need RCPT command first: no recipient was accepted",
    "502 EXPN not implemented": "502 5.5.1 EXPN not implemented",
}
# Stock replies with a variable tail: (prefix, what replaces the prefix, whether the tail is kept).
STOCK_PREFIXES: tuple[tuple[str, str, bool], ...] = (
    ("501 Syntax: ", "501 5.5.4 Syntax: ", True),
    ("250 Syntax: ", "250 2.0.0 Syntax: ", True),
    ("250 Supported commands: ", "250 2.0.0 Supported commands: ", True),
    ("501 Supported commands: ", "501 5.5.4 No help for that command; supported commands: ", True),
    ("503 Error: send ", "503 5.5.1 Send HELO or EHLO first", False),
    ('500 Error: command "', "500 5.5.1 Command not recognized", False),
    ("502 Could not VRFY ", "502 5.5.4 Could not VRFY that address", False),
    ("500 Error: (", REPLY_INTERNAL, False),
)
_DEFAULT_ENHANCED = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}  # RFC 3463 X.0.0: other or undefined status


class UpstreamText(str):
    """A reply relayed from the upstream. A success goes out verbatim: applications read SES's
    `250 Ok <message id>` as it is. A refusal without an enhanced code gets X.0.0 (undefined)."""

    __slots__ = ()


@dataclass
class Limits:
    max_connections: int
    max_per_ip: int
    max_session_seconds: float
    open_total: int = 0
    open_by_ip: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    refused: int = 0


# `<local@domain> params` in its plain, everyday form; anything else takes aiosmtpd's full parser.
_PLAIN_PATH = re.compile(r"<((?![.])(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|\.(?![.@])){1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,252})>[ \t]*(.*)",
                         re.DOTALL)


# What aiosmtpd's SMTP.__init__ sets that belongs to one session; everything else it sets is the same for
# every session a listener opens with the same arguments (see _SessionTemplate).
_SESSION_ATTRS = ("session", "envelope", "transport", "_handler_coroutine", "_timeout_handle",
                  "_tls_handshake_okay", "_tls_protocol", "_original_transport")


@dataclass
class _SessionTemplate:
    """aiosmtpd's SMTP.__init__ builds each session's command, hook and AUTH tables with inspect.getmembers,
    dir and inspect.signature, and logs the mechanisms: a tenth of the relay's time per message. The first
    session of a listener runs it; the next ones, made with the same handler, arguments and loop, copy its
    result and bind the command methods to themselves."""

    handler: object
    kwargs: dict
    loop: asyncio.AbstractEventLoop
    shared: dict  # attributes taken as they are
    commands: dict[str, str]  # command -> method name on the session
    auth: list[tuple[str, str | None, object]]  # (mechanism, builtin method name or None, the handler's)

    @classmethod
    def of(cls, session: SMTP, handler, kwargs: dict) -> "_SessionTemplate":
        own = set(vars(asyncio.StreamReaderProtocol(asyncio.StreamReader(), client_connected_cb=print,
                                                    loop=session.loop)))
        shared = {k: v for k, v in vars(session).items()
                  if k not in own and k not in _SESSION_ATTRS and k not in ("_smtp_methods", "_auth_methods")}
        shared.update(dict.fromkeys(_SESSION_ATTRS), _tls_handshake_okay=True)  # a new session's state
        commands = {cmd: method.__name__ for cmd, method in session._smtp_methods.items()}
        auth = [(mech, impl.method.__name__ if impl.is_builtin else None, impl)
                for mech, impl in session._auth_methods.items()]
        return cls(handler, dict(kwargs), session.loop, shared, commands, auth)

    def fits(self, handler, kwargs: dict, loop) -> bool:
        # The arguments are plain values and objects that compare by identity (TLS context, authenticator).
        return handler is self.handler and loop is self.loop and kwargs == self.kwargs

    def apply(self, session: SMTP) -> None:
        """What SMTP.__init__ would do, from the first session's result."""
        asyncio.StreamReaderProtocol.__init__(
            session, asyncio.StreamReader(loop=self.loop, limit=session.line_length_limit),
            client_connected_cb=session._cb_client_connected, loop=self.loop)
        session.__dict__.update(self.shared)  # the hook table too: aiosmtpd only reads it
        session.command_size_limits.clear()  # as SMTP.__init__ (a table of the class)
        session._smtp_methods = _Commands(session, self.commands)
        session._auth_methods = {mech: _AuthMechAttr(getattr(session, name), True) if name else impl
                                 for mech, name, impl in self.auth}


class _Commands(Mapping):
    """A session's command table (command -> its bound smtp_* method), bound when a command is used
    rather than all twenty at every connection."""

    __slots__ = ("_session", "_names")

    def __init__(self, session: SMTP, names: dict[str, str]):
        self._session, self._names = session, names

    def get(self, command, default=None):
        name = self._names.get(command)
        return default if name is None else getattr(self._session, name)

    def __getitem__(self, command):
        return getattr(self._session, self._names[command])

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class GuardedSMTP(SMTP):
    """aiosmtpd's SMTP behind connection limits and a total-session deadline."""

    max_line_length = 998  # RFC 5321 4.5.3.1.6: 1000 with CRLF (aiosmtpd's 1001 also lets a stuffed dot in)
    # What this listener says when a message is too big or holds a line too long (end of data).
    size_reply = "552 5.3.4 Message too big for this server (limit {limit} bytes)"
    line_reply = ("554 5.6.0 Message refused: a line is longer than {limit} bytes (RFC 5321 4.5.3.1.6 allows "
                  "1000 with its CRLF); encode long lines, e.g. as quoted-printable or base64")
    # proxy.relay.busypoll.BusyPoll, where the listener polls while the client's next command is due
    busy_poll = None
    _answer_due = 0.0  # when the last reply went out, while the client's answer to it is due

    def __init__(self, handler, *args, limits: Limits, **kwargs):
        self._smtp_init(handler, args, kwargs)
        self._limits = limits
        self._peer_ip: str | None = None
        self._session_end = float("inf")  # loop time when the whole session must end (max_session_seconds)
        self._greeted = False
        self._in_ehlo = ""  # "EHLO"/"HELO" while pushing that reply: RFC 2034 exempts it from enhanced codes
        self._offered: set[str] = set()  # EHLO keywords this session was offered
        self._verb = ""

    def _smtp_init(self, handler, args: tuple, kwargs: dict) -> None:
        """SMTP.__init__, from the listener's template when this session's arguments are its."""
        cls = type(self)
        template: _SessionTemplate | None = cls.__dict__.get("_template")
        try:
            loop = kwargs.get("loop") or asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if not args and loop is not None and template is not None and template.fits(handler, kwargs, loop):
            template.apply(self)
            return
        super().__init__(handler, *args, **kwargs)
        if not args and loop is not None and self.loop is loop:
            cls._template = _SessionTemplate.of(self, handler, kwargs)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd re-arms the idle timer at every command (a cancelled handle and a new one); here the
        deadline moves and the session's one timer, which also keeps the session's whole-length limit,
        waits again when it fires before the nearer of the two."""
        if self._answer_due:  # a command: the client's answer to the last reply
            self.busy_poll.answered(CLIENT, self._answer_due)
            self._answer_due = 0.0
        loop = self.loop
        self._idle_deadline = loop.time() + (duration or self._timeout_duration)
        deadline = min(self._idle_deadline, self._session_end)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        now = self.loop.time()
        if now >= self._session_end:
            self._session_too_long()
        elif now < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(min(self._idle_deadline, self._session_end), self._idle_check)
        else:
            self._timeout_cb()

    # -- replies ------------------------------------------------------------------------------
    def _proper(self, status: str) -> str:
        """The reply as it goes out: aiosmtpd's stock texts replaced, an enhanced code on every line."""
        if status.startswith("553 5.1.3 Error: malformed address"):  # aiosmtpd says 5.1.3 at MAIL too
            return ("553 5.1.7 Malformed sender address" if self._verb == "MAIL"
                    else "553 5.1.3 Malformed recipient address")
        if "\r" not in status and PROPER_REPLY.match(status) and not _CONTROL.search(status):
            return status  # the handlers' own replies: the hot path
        proper = STOCK_REPLIES.get(status)
        if proper is not None:
            return proper
        if status[:3] == "552" and status.startswith("552 Error:"):
            return self.size_reply.format(limit=self.data_size_limit)
        if status.startswith("500 Line too long"):
            return self.line_reply.format(limit=self.max_line_length)
        for prefix, replacement, keep_tail in STOCK_PREFIXES:
            if status.startswith(prefix):
                return replacement + status[len(prefix):] if keep_tail else replacement
        lines = status.split("\r\n")
        for i, line in enumerate(lines):
            line = _CONTROL.sub(" ", line)
            if not PROPER_REPLY.match(line) and line[:1] in _DEFAULT_ENHANCED and line[:3].isdigit():
                text = line[4:].strip() or "OK"
                line = f"{line[:3]}{line[3:4] if line[3:4] == '-' else ' '}{_DEFAULT_ENHANCED[line[0]]} {text}"
            lines[i] = line
        return "\r\n".join(lines)

    async def push(self, status) -> None:
        if isinstance(status, str):
            code = status[:3]
            if not self._greeted and code == "220":
                self._greeted = True  # the greeting: RFC 2034 exempts it
            elif self._in_ehlo and code == "250":
                keyword = status[4:].split(" ", 1)[0].upper()
                if self._in_ehlo == "EHLO" and status[3:4] == " " and "ENHANCEDSTATUSCODES" not in self._offered:
                    self._offered.add("ENHANCEDSTATUSCODES")  # every reply here carries one
                    await super().push("250-ENHANCEDSTATUSCODES")
                self._offered.add(keyword)
            elif code[:1] in "45" or (code[:1] == "2" and type(status) is not UpstreamText):
                status = self._proper(status)  # 354 and 334 are intermediate: no enhanced code exists
        await super().push(status)
        if self.busy_poll is not None:
            self._answer_due = self.busy_poll.expect(CLIENT)

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected error: logged with its traceback, never shown to the client."""
        log.error("%s: error while handling a command", self._peer_ip, exc_info=error)
        return REPLY_INTERNAL

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str):
        self._offered = set()
        self._in_ehlo = "EHLO"
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = ""

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str):
        self._offered = set()
        self._in_ehlo = "HELO"
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_ehlo = ""

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str):
        if self._tls_protocol is not None:  # aiosmtpd would try TLS inside TLS (RFC 3207: once per session)
            await self.push("503 5.5.1 TLS is already active")
            return
        await super().smtp_STARTTLS(arg)

    # -- addresses ----------------------------------------------------------------------------
    def _path_refusal(self, arg: str | None, verb: str) -> str | None:
        """Addresses are taken exactly or refused: never a control character, never bytes that are
        not UTF-8, non-ASCII only under SMTPUTF8 (RFC 6531), SMTPUTF8 only when it was offered."""
        if not arg or not self.session or not self.session.host_name:
            return None  # aiosmtpd's own checks answer first (send HELO, syntax)
        what = "Sender" if verb == "MAIL" else "Recipient"
        bad = "553 5.1.7" if verb == "MAIL" else "501 5.1.3"
        if _CONTROL.search(arg):
            return f"{bad} {what} address refused: it contains a control character"
        tokens = arg.upper().split()
        utf8 = "SMTPUTF8" in tokens[1:] if verb == "MAIL" else bool(self.envelope and self.envelope.smtp_utf8)
        if verb == "MAIL":
            if utf8 and "SMTPUTF8" not in self._offered:
                return "555 5.5.4 SMTPUTF8 was not offered in this session"
            if "BODY=8BITMIME" in tokens[1:] and "8BITMIME" not in self._offered:
                return "555 5.5.4 8BITMIME was not offered in this session"
        if not arg.isascii():
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                return f"{bad} {what} address refused: it is not valid UTF-8"
            if not utf8:
                return f"553 5.6.7 {what} address refused: non-ASCII needs the SMTPUTF8 parameter on MAIL (RFC 6531)"
        return None

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        self._verb = "MAIL"
        refusal = self._path_refusal(arg, "MAIL")
        if refusal is not None:
            await self.push(refusal)
            return
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        self._verb = "RCPT"
        refusal = self._path_refusal(arg, "RCPT") if self.envelope and self.envelope.mail_from else None
        if refusal is not None:
            await self.push(refusal)
            return
        await super().smtp_RCPT(arg)

    def _getaddr(self, arg: str):
        """aiosmtpd's address parser (email._header_value_parser) was a fifth of the relay's time;
        plain `<local@domain>` paths are read by one regex with the same result."""
        if arg.startswith("<>"):
            return "<>", arg[2:]
        m = _PLAIN_PATH.fullmatch(arg)
        if m:
            return m.group(1), m.group(2)
        try:
            return super()._getaddr(arg)
        except (IndexError, ValueError):  # the stdlib parser on a truncated path (`<`): malformed, not a crash
            return None, None

    def connection_made(self, transport) -> None:
        if self._peer_ip is not None:  # STARTTLS calls this again for the TLS transport
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        limits = self._limits
        if limits.open_total >= limits.max_connections or limits.open_by_ip[ip] >= limits.max_per_ip:
            limits.refused += 1
            transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            self._peer_ip = ""
            self.transport = None
            return
        self._peer_ip = ip
        limits.open_total += 1
        limits.open_by_ip[ip] += 1
        self._session_end = self.loop.time() + limits.max_session_seconds  # kept by the idle timer
        super().connection_made(transport)

    def _session_too_long(self) -> None:
        log.info("%s: session exceeded %.0fs, closing", self._peer_ip, self._limits.max_session_seconds)
        if self.transport is not None:
            self.transport.write(b"421 4.4.2 Session too long, closing connection\r\n")
            self.transport.close()

    def connection_lost(self, error) -> None:
        if not self._peer_ip:  # refused at connect: nothing was started
            return
        limits = self._limits
        limits.open_total -= 1
        limits.open_by_ip[self._peer_ip] -= 1
        if limits.open_by_ip[self._peer_ip] <= 0:
            del limits.open_by_ip[self._peer_ip]
        super().connection_lost(error)  # cancels the session's timer

    def eof_received(self):
        """The client closed its side: aiosmtpd stops the session but keeps the transport open (half-open
        TCP), so the session would count against the limits, and hold its upstream connection, until
        the idle timeout. Nothing more can be said to a client that sends nothing more: close."""
        if self._peer_ip:
            super().eof_received()
        return False


class AuthThrottle:
    """Refuses AUTH from an IP after too many failures in a window."""

    def __init__(self, max_failures: int = 5, window: float = 300.0, clock=time.monotonic):
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, ip: str) -> bool:
        recent = self._failures.get(ip)
        if not recent:
            return False
        cutoff = self.clock() - self.window
        while recent and recent[0] < cutoff:
            recent.popleft()
        if not recent:
            del self._failures[ip]
            return False
        return len(recent) >= self.max_failures

    def failed(self, ip: str) -> None:
        self._failures[ip].append(self.clock())
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures.pop(next(iter(self._failures)))


_READ_SIZE = 256 * 1024
_END = b"\r\n.\r\n"


def _has_long_line(stretch: bytes, max_line: int) -> bool:
    """Whether a line of this stretch of whole lines runs past `max_line` bytes before its CRLF. From each
    line start, the last LF within max_line + 2 bytes: none means the line there is too long; else every
    line starting before it ends by it. A jump of about max_line bytes a step, not a split into lines."""
    start, end = 0, len(stretch)
    while start < end:
        last = stretch.rfind(b"\n", start, start + max_line + 2)
        if last < 0:
            return True
        start = last + 1
    return False


class MessageData:
    """The data of one DATA command, read in large chunks instead of aiosmtpd's line-by-line loop
    (one Python iteration per line was most of the cost of a 100 KB message).

    The end of data, the line and size limits and `check` (the smuggling rules) are bytes scans over
    each stretch of whole lines; `stretches()` hands on each stretch once it passed, still
    dot-stuffed as it arrived, and nothing after the first failure. After the end of data, `refusal`
    is the reply aiosmtpd's loop would have given (a long line or too much data, whichever came
    first, then the worst thing `check` found), or None. Leaves pipelined commands after the end of
    data in the reader, for the command loop."""

    def __init__(self, reader: asyncio.StreamReader, size_limit: int | None, max_line: int,
                 size_reply: str, line_reply: str, check=None, rank=None):
        self._reader = reader
        self.size_limit = size_limit or 0
        self.max_line = max_line  # bytes of one line as sent (a stuffing dot included), CRLF not counted
        self.size_reply, self.line_reply = size_reply, line_reply
        self.check = check  # stretch of whole lines -> a refusal or None
        self.rank = rank or (lambda reply: 0)  # lower wins when several refusals were found
        self.size = 0  # bytes of the data as sent, up to the CRLF before the final dot
        self.limit_hit: str | None = None  # a size or line refusal: from then on nothing is checked or kept
        self.found: str | None = None  # the worst refusal `check` found
        self.ended = False
        self._buf = bytearray()  # received, not yet judged; always starts at a line start
        self._searched = 0  # how much of it was searched for the end of data

    @property
    def refusal(self) -> str | None:
        return self.limit_hit or self.found

    async def stretches(self):
        """Yield each stretch of whole lines that passed every check, until the end of data."""
        buf = self._buf
        while not self.ended:
            if not buf.startswith(b".\r\n"):  # a dot line right at a line start: the end of data
                chunk = await self._reader.read(_READ_SIZE)
                if not chunk:  # the client closed: aiosmtpd cancels this task, this only covers a race
                    raise ConnectionResetError("the client closed the connection during DATA")
                buf += chunk
            if buf.startswith(b".\r\n"):
                end = 0
            else:
                end = buf.find(_END, max(0, self._searched - 4))
                end = -1 if end < 0 else end + 2
                self._searched = len(buf)
            if end >= 0:
                self._give_back(buf, end + 3)
                stretch = bytes(buf[:end])
                del buf[:]
                self.ended = True
                if stretch and self._judge(stretch):
                    yield stretch
                return
            cut = buf.rfind(b"\r\n") + 2
            if cut >= 2:
                stretch = bytes(buf[:cut])
                del buf[:cut]
                self._searched -= cut
                if self._judge(stretch):
                    yield stretch
            if len(buf) > self.max_line + 1 and self.limit_hit is None:  # a line that never ends in time
                self.limit_hit = self.line_reply
            if self.limit_hit is not None:
                await self._discard(buf)
                return

    async def drain(self) -> None:
        """Read what is left of the data without handing anything on."""
        async for _ in self.stretches():
            pass

    def _judge(self, stretch: bytes) -> bool:
        """Account a stretch of whole lines; True when it may be handed on."""
        if self.limit_hit is not None:
            return False
        before = self.size
        self.size += len(stretch)
        if len(stretch) > self.max_line + 2 and _has_long_line(stretch, self.max_line):
            lines = stretch.split(b"\r\n")
            if max(map(len, lines)) > self.max_line:
                offset = before
                for line in lines:  # rare: where the long line starts decides which limit came first
                    if len(line) > self.max_line:
                        break
                    offset += len(line) + 2
                self.limit_hit = self.size_reply if self.size_limit and offset > self.size_limit else self.line_reply
                return False
        if self.size_limit and self.size > self.size_limit:
            self.limit_hit = self.size_reply
            return False
        if self.check is not None:
            refusal = self.check(stretch)
            if refusal is not None and (self.found is None or self.rank(refusal) < self.rank(self.found)):
                self.found = refusal
        return self.found is None

    async def _discard(self, buf: bytearray) -> None:
        """Past a limit: read to the end of data, keeping nothing but the bytes that may start it."""
        tail = b"\r\n" + bytes(buf)  # buf starts at a line start: a dot line there ends the data too
        while True:
            end = tail.find(_END)
            if end >= 0:
                self._give_back(bytearray(tail), end + 5)
                del buf[:]
                self.ended = True
                return
            chunk = await self._reader.read(_READ_SIZE)
            if not chunk:
                raise ConnectionResetError("the client closed the connection during DATA")
            tail = tail[-4:] + chunk

    def _give_back(self, buf: bytearray, consumed: int) -> None:
        """Pipelined commands after the end of data go back in front of the reader's buffer."""
        rest = buf[consumed:]
        if rest:
            self._reader._buffer[0:0] = rest  # noqa: SLF001 - asyncio.StreamReader has no unread
