"""The relay listener: mirrors each client transaction onto one pooled upstream connection.

MAIL -> MAIL, each RCPT -> RCPT, DATA -> DATA; the client gets the upstream's reply to each.
Every refusal becomes a synchronous event (or a send failure on the message) and the message
is committed to the store before the client sees the final 250.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass, field

from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from proxy.dsn.classify import classify
from proxy.dsn.classify.providers import RECIPIENT_DOMAINS
from proxy.logging_setup import log_auth_failure, log_message
from proxy.model import (
    BounceEvent, Kind, MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, Source, settle_status,
)
from proxy.relay.busypoll import BusyPoll
from proxy.relay.failures import send_failure
from proxy.relay.health import UpstreamHealth, failure_reason
from proxy.relay.headers import MAX_HEADER_SCAN, new_message_id, prepend_headers, read_headers
from proxy.relay.upstream import Reply, UpstreamAuthFailed, UpstreamStale, UpstreamUnavailable, upstream_id_from
from proxy.smtp_guard import _PLAIN_PATH, AuthThrottle, GuardedSMTP, MessageData, syntax
from proxy.store import StoreError
from proxy.suppression import content_digest, refusal

log = logging.getLogger(__name__)

REPLY_UPSTREAM_DOWN = "451 4.4.1 Upstream unavailable: {why}; message not sent, please retry later"
REPLY_TX_BROKEN = "451 4.4.1 Upstream connection lost earlier in this transaction; message not sent, send RSET and retry"
REPLY_STORE_DOWN = "451 4.3.0 Cannot record the message in the bounce log; please retry later"
REPLY_NOT_ALLOWED = "530 5.7.0 Authentication required"
REPLY_AUTH_UPSTREAM = "454 4.7.0 Upstream refused the relay's credentials ({reply}); message not sent"
REPLY_SMUGGLING = ("554 5.6.11 Message refused: bare CR or LF in the message data "
                   "(each line must end with CRLF; SMTP smuggling protection)")
REPLY_NUL = ("554 5.6.0 Message refused: a NUL byte in the message data (RFC 5321 forbids it; "
             "SMTP smuggling protection)")
REPLY_CONTROL_DOT = ("554 5.6.0 Message refused: a line holding only a dot and control characters "
                     "(an end-of-data look-alike; SMTP smuggling protection)")
REPLY_AUTH_THROTTLED = "454 4.7.0 Too many authentication failures from your address, try again later"


def has_bare_line_ending(content: bytes) -> bool:
    """A CR or LF that is not part of a CRLF pair: how SMTP smuggling hides a second message."""
    crlf = content.count(b"\r\n")
    return content.count(b"\r") != crlf or content.count(b"\n") != crlf


# A line that is a dot once an upstream drops control characters (TAB, CR and LF are not among them).
# Only lines that start with a control: one that starts with the dot goes out dot-stuffed (`..`).
_CONTROL_DOT_LINE = rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]+\.[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]*(?:\r|\Z)"
_CONTROL_DOT = re.compile(rb"\n" + _CONTROL_DOT_LINE)  # a literal first byte: re scans for it fast
_CONTROL_DOT_FIRST = re.compile(_CONTROL_DOT_LINE)


# Every byte but the controls (TAB aside): what is left of clean data once these are deleted is CR LF pairs.
_ORDINARY = bytes(b for b in range(256) if (0x20 <= b != 0x7F) or b == 0x09)


def smuggling_refusal(content: bytes) -> str | None:
    """The refusal for data another server could read as an earlier end of data, or None.

    Bare CR or LF, NUL (servers that strip it turn `<CRLF><NUL>.<CRLF>` into the end of data), and
    a line that is only a dot among control characters. Whole-buffer scans, no per-line loop: clean
    data (no control character but TAB, every CR and LF in a CRLF pair) is recognised in two passes,
    the controls left by deleting every other byte and the CRLF pairs counted; only other data is
    looked at closely."""
    controls = content.translate(None, _ORDINARY)
    if controls.count(b"\r\n") * 2 == len(controls) and content.count(b"\r\n") * 2 == len(controls):
        return None  # only CRs and LFs, alternating, each CR right before its LF
    return smuggling_found(content)


def smuggling_found(content: bytes) -> str | None:
    """smuggling_refusal without its shortcut for clean data: which refusal, by the rules one by one."""
    if b"\0" in content:
        return REPLY_NUL
    if has_bare_line_ending(content):
        return REPLY_SMUGGLING
    if _CONTROL_DOT.search(content) or _CONTROL_DOT_FIRST.match(content):
        return REPLY_CONTROL_DOT
    return None


_REFUSAL_RANK = {REPLY_NUL: 0, REPLY_SMUGGLING: 1, REPLY_CONTROL_DOT: 2}  # smuggling_refusal's order


def refusal_rank(reply: str) -> int:
    """Which smuggling refusal wins when several stretches of one message hold different ones."""
    return _REFUSAL_RANK.get(reply, 3)


def unstuffed(stretch: bytes) -> bytes:
    """A stretch of whole lines as sent (it starts at a line start) without its dot-stuffing."""
    out = stretch.replace(b"\r\n.", b"\r\n")
    return out[1:] if stretch[:1] == b"." else out


# Data held before any of it goes upstream: a message that ends within it goes out as before, in
# one write after its last byte; a longer one streams from here on, so memory stays bounded.
STREAM_AFTER = 64 * 1024


MAX_PIPELINED_RCPTS = 100  # RCPTs taken from the client's buffer into one flight with MAIL


def pipelined_rcpts(server) -> tuple[list[str], bool]:
    """The recipients of the RCPT lines the client already sent after its MAIL (aiosmtpd's reader holds
    them), up to the first line that is not a plain `RCPT TO:<local@domain>`: only lines aiosmtpd is sure
    to hand to handle_RCPT with that very address (no parameters, no control or non-ASCII bytes); and
    whether the line right after them is DATA (RFC 2920: the last command of a pipelined group)."""
    buf = getattr(getattr(server, "_reader", None), "_buffer", None)
    found: list[str] = []
    if not buf:
        return found, False
    start = 0
    while len(found) < MAX_PIPELINED_RCPTS:
        end = buf.find(b"\n", start)
        if end < 0 or end - start > 510 or buf[end - 1:end] != b"\r" or bytes(buf[start:start + 8]).upper() != b"RCPT TO:":
            break
        line = bytes(buf[start + 8:end - 1])
        start = end + 1
        if not line.isascii():
            break
        m = _PLAIN_PATH.fullmatch(line.decode("ascii"))
        if m is None or m.group(2):
            return found, False
        found.append(m.group(1))
    return found, bytes(buf[start:start + 6]).upper() == b"DATA\r\n"


def new_id() -> str:
    """Sortable, unique message id: 48 bits of milliseconds, 40 random bits, base32."""
    raw = int(time.time() * 1000).to_bytes(6, "big") + secrets.token_bytes(5)
    return base64.b32encode(raw).decode("ascii").lower()[:17]


@dataclass
class Transaction:
    """One client transaction and the upstream connection it holds until it ends."""

    message: MessageRecord
    conn: object | None
    events: list[BounceEvent] = field(default_factory=list)
    broken: bool = False
    in_flight: list[tuple] | None = None  # the recipients as the in-flight record committed them
    # The client's pipelined RCPTs seen at MAIL, in order, with the relay's own check of each (done before
    # the flight: one the relay refuses never goes upstream); handle_RCPT takes them one by one.
    planned: list[tuple[str, tuple]] = field(default_factory=list)


class RelayHandler:
    """aiosmtpd handler hooks; one instance serves every session of a listener."""

    def __init__(self, config, store, upstream, verp=None, suppressor=None, preflight=None, health=None):
        self.config = config
        self.health = health or UpstreamHealth(getattr(upstream, "name", "upstream"))  # /healthz, /metrics
        self.store = store
        self.upstream = upstream
        self.verp = verp  # VerpSigner: the signed return path written on every message
        self.suppressor = suppressor  # proxy.suppression.Suppressor: refuses suppressed recipients
        self.preflight = preflight  # proxy.relay.preflight.Preflight: refuses dead domains
        self.enforce = config.suppression.mode == "enforce"
        self.reply_style = config.suppression.reply_style
        self.allow_networks = [ipaddress.ip_network(n, strict=False) for n in config.relay.allow_networks]
        self.message_id_domain = config.message_id_domain
        self.keeps_messages = getattr(upstream, "keeps_messages", False)
        self.is_ses = config.upstream.profile == "ses"

    # -- access ---------------------------------------------------------------------------------
    def _may_send(self, session: Session) -> bool:
        if session.authenticated:
            return True
        if not getattr(session, "auth_needed", False):
            return True
        try:
            peer = ipaddress.ip_address(session.peer[0])
        except (ValueError, TypeError, IndexError):
            return False
        return any(peer in net for net in self.allow_networks)

    # -- hooks ----------------------------------------------------------------------------------
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        hidden = ["250-AUTH"] if server._authenticator is None else []  # AUTH only with users to check
        for keyword in ("SMTPUTF8", "8BITMIME"):  # never more than the upstream offers (RFC 6531, 6152)
            if not self._upstream_offers(keyword.lower()):
                hidden.append(f"250-{keyword}")
        if hidden:
            responses = [r for r in responses if not r.startswith(tuple(hidden))]
        # aiosmtpd reads pipelined commands in order; say so, after the greeting line.
        return [responses[0], "250-PIPELINING", *responses[1:]]

    def _upstream_offers(self, extension: str) -> bool:
        """What the upstream offered on its last connection. Before the first one (it was down at start)
        the relay offers it: MAIL cannot succeed before a connection, and one without it then answers
        451 4.5.4, so the client retries, sees a new EHLO and decides: a mismatch never becomes a bounce."""
        if not getattr(self.upstream, "extensions_known", True):
            return True
        return extension in getattr(self.upstream, "extensions", ())

    async def _new_message(self, session: Session, address: str) -> MessageRecord | str:
        """MAIL's checks before anything goes anywhere (the client's right to send, the reputation guard)
        and the previous transaction closed: the new message, or the reply that refuses it."""
        if not self._may_send(session):
            return REPLY_NOT_ALLOWED
        await self.finish(session)
        if self.suppressor is not None:
            paused = self.suppressor.paused_reply(address)
            if paused:
                return paused
        return MessageRecord(id=new_id(), created_at=time.time(), client_peer=_peer(session),
                             client_user=_user(session), sender=address)

    async def handle_MAIL(self, server, session, envelope: Envelope, address: str, options: list[str]):
        message = await self._new_message(session, address)
        if isinstance(message, str):
            return message
        try:
            conn = await self.upstream.acquire()
        except UpstreamAuthFailed as exc:
            self.health.failed("auth", f"the upstream refused the relay's credentials ({exc.reply.line()})")
            message.status, message.send_failure = MessageStatus.FAILED, f"upstream authentication: {exc.reply.line()}"
            message.upstream_reply = exc.reply.line()
            await self._record_quietly(message)
            return REPLY_AUTH_UPSTREAM.format(reply=exc.reply.line())
        except UpstreamUnavailable as exc:
            # An outage must show: a failed message row with the 451 the client got, and the health counters.
            self.health.failed(failure_reason(str(exc)), str(exc))
            reply = REPLY_UPSTREAM_DOWN.format(why=exc)
            message.status, message.send_failure = MessageStatus.FAILED, f"upstream unavailable: {exc}"
            message.upstream_reply = reply
            await self._record_quietly(message)
            return reply
        self.health.ok()
        tx = Transaction(message, conn)
        session.tx = tx
        null_sender = address in ("", "<>")  # a notification itself: it must never be bounced to
        envelope_sender = "" if null_sender else address
        if self.verp is not None and not self.is_ses and not null_sender:
            # Recipients are not known yet at MAIL: this token names the message only.
            envelope_sender = message.verp_token = self.verp.address(message.id)
        passed = self._mail_options(conn, options)
        recipients: list[str] = []
        data = False  # the client's DATA follows its RCPTs: it goes in the flight too
        if getattr(conn, "pipelining", False) is True:
            utf8 = any(o.upper() == "SMTPUTF8" for o in passed)
            planned, data = pipelined_rcpts(server)
            for rcpt in planned:
                check = await self._relay_check(address, rcpt)
                tx.planned.append((rcpt, check))
                if not self._check_refuses(check) and conn.can_pipeline(rcpt, utf8):
                    recipients.append(rcpt)
            data = data and len(recipients) == len(planned)  # every RCPT of the group goes upstream with it
        try:
            try:
                reply = await (conn.mail(envelope_sender, passed, recipients, data) if recipients
                               else conn.mail(envelope_sender, passed))
            except UpstreamStale:  # a reused connection refused the folded RSET: closed; a fresh one
                await self.upstream.release(conn)
                tx.conn = None
                try:
                    conn = tx.conn = await self.upstream.acquire(fresh=True)
                except UpstreamAuthFailed as exc:
                    raise UpstreamUnavailable(f"the upstream refused the relay's credentials ({exc.reply.line()})") from None
                reply = await conn.mail(envelope_sender, self._mail_options(conn, options), recipients, data)
        except UpstreamUnavailable as exc:
            await self._drop(session)
            return REPLY_UPSTREAM_DOWN.format(why=exc)
        if not reply.ok:
            message.upstream_reply = reply.line()
            message.status = MessageStatus.FAILED
            message.send_failure = send_failure(reply) or f"sender refused: {reply.line()}"
            await self.finish(session, record=True)
            if reply.code == 421:
                _close_after_reply(server)
            return reply.smtp()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return reply.smtp()

    @staticmethod
    def _mail_options(conn, options: list[str]) -> list[str]:
        """Pass on the client's MAIL parameters the upstream understands."""
        passed = []
        for option in options:
            name = option.split("=", 1)[0].upper()
            if name == "BODY" and conn.supports("8bitmime"):
                passed.append(option)
            elif name == "SMTPUTF8":  # always: the connection refuses it (451 4.5.4) when it lacks it
                passed.append(option)
            elif name == "SIZE" and conn.supports("size"):
                passed.append(option)
        return passed

    async def handle_RCPT(self, server, session, envelope: Envelope, address: str, options: list[str]):
        tx: Transaction | None = getattr(session, "tx", None)
        if tx is None or tx.conn is None:
            return "503 5.5.1 Error: need MAIL command"
        if tx.broken:
            return REPLY_TX_BROKEN
        message = tx.message
        if tx.planned:
            planned, check = tx.planned.pop(0)
            if planned != address:  # aiosmtpd and the flight disagree: the upstream may hold another recipient
                log.warning("%s: a pipelined RCPT was not the one sent upstream; transaction abandoned", _peer(session))
                tx.planned.clear()
                tx.broken = True
                tx.conn.close()
                return REPLY_TX_BROKEN
            refused = self._apply_check(tx, address, check)
        else:
            refused = await self._refused_before_upstream(tx, address)
        if refused is not None:
            return refused
        try:
            reply = await tx.conn.rcpt(address)
        except UpstreamUnavailable as exc:
            tx.broken = True
            return REPLY_UPSTREAM_DOWN.format(why=exc)
        if reply.ok:
            envelope.rcpt_tos.append(address)
            message.recipients.append(RecipientRecord(address, RecipientStatus.ACCEPTED, reply.line()))
        else:
            status = RecipientStatus.REJECTED if reply.permanent else RecipientStatus.DEFERRED
            message.recipients.append(RecipientRecord(address, status, reply.line()))
            self._refusal(tx, reply, [address], "RCPT")
            if reply.code == 421:  # the upstream is closing; a 421 obliges us to close too
                tx.broken = True
                await self.finish(session, record=True)
                _close_after_reply(server)
        return reply.smtp()

    async def _refused_before_upstream(self, tx: Transaction, address: str) -> str | None:
        """Suppression list, then DNS preflight: a refusal here costs no upstream send."""
        return self._apply_check(tx, address, await self._relay_check(tx.message.sender, address))

    async def _relay_check(self, sender: str, address: str) -> tuple:
        """The lookups behind the relay's own refusal of a recipient, without their effects (the
        suppression row, the preflight verdict): done at MAIL for RCPTs that go in its flight."""
        row = verdict = None
        if self.suppressor is not None:
            row = await self.suppressor.lookup(sender, address)
            if row is not None and self.enforce:
                return row, None
        if self.preflight is not None:
            verdict = await self.preflight.check(address.rpartition("@")[2])
        return row, verdict

    def _check_refuses(self, check: tuple) -> bool:
        row, verdict = check
        return (row is not None and self.enforce) or (verdict is not None and verdict.refuse)

    def _apply_check(self, tx: Transaction, address: str, check: tuple) -> str | None:
        """The relay's refusal of a recipient from its check (recorded on the message), or None."""
        message = tx.message
        row, verdict = check
        if row is not None:
            reply = refusal(row, address, self.reply_style)
            if self.enforce:
                self.suppressor.hits += 1
                message.recipients.append(RecipientRecord(address, RecipientStatus.SUPPRESSED, reply))
                return reply
            self.suppressor.observed += 1
            log.info("observe mode: %s is suppressed (%s), sent anyway", address, row.reason)
        if verdict is not None:
            if verdict.refuse:
                line = verdict.reply(address)
                reply = Reply(int(line[:3]), line[4:])
                message.recipients.append(RecipientRecord(address, RecipientStatus.REJECTED, reply.line()))
                self._refusal(tx, reply, [address], "RCPT", remote_mta="dns-preflight")
                return line
        return None

    async def handle_DATA(self, server, session, envelope: Envelope):
        """The whole message at once (envelope.original_content, un-stuffed): RelaySMTP streams instead
        (stream_DATA) and comes here only for upstreams that take a whole message (the simulator)."""
        tx: Transaction | None = getattr(session, "tx", None)
        if tx is None or tx.conn is None:
            return "503 5.5.1 Error: need MAIL command"
        if tx.broken:
            await self.finish(session, record=True)
            return REPLY_TX_BROKEN
        message = tx.message
        accepted = [r for r in message.recipients if r.status == RecipientStatus.ACCEPTED]
        content: bytes = envelope.original_content or b""
        refused = smuggling_refusal(content)
        if refused is not None:
            return await self._refuse_data(session, refused)
        body = prepend_headers(content, self._header_lines(tx, accepted, content))
        message.content_sha256 = content_digest(content)  # the client's bytes: the same on each retry
        message.size = len(body)
        if not await self._record_in_flight(session, tx):
            return REPLY_STORE_DOWN
        try:
            reply = await tx.conn.data(body)
        except (UpstreamUnavailable, asyncio.CancelledError) as exc:
            return await self._lost_at_end_of_data(session, tx, exc)
        return await self._data_outcome(session, tx, accepted, reply, body)

    async def stream_DATA(self, server, session, envelope: Envelope, data: MessageData) -> str:
        """DATA as it arrives (MessageData): sent upstream still dot-stuffed, never re-serialised.

        Nothing goes upstream before the header block is read (the lines to prepend depend on it) and
        STREAM_AFTER bytes are held: a message that ends by then goes out in one write, as before. A
        longer one streams, the end of data going only after the in-flight record is committed; one
        refused or cut off midway never gets its end of data: its upstream connection is closed."""
        tx: Transaction | None = getattr(session, "tx", None)
        if tx is None or tx.conn is None or tx.broken:
            await data.drain()
            return data.limit_hit or await self.handle_DATA(server, session, envelope)
        if not hasattr(tx.conn, "end_data") or self.keeps_messages:  # an upstream that takes whole messages
            stretches = [unstuffed(s) async for s in data.stretches()]
            if data.refusal is not None:
                return data.limit_hit or await self._refuse_data(session, data.found)
            envelope.original_content = b"".join(stretches)
            return await self.handle_DATA(server, session, envelope)
        message, conn = tx.message, tx.conn
        accepted = [r for r in message.recipients if r.status == RecipientStatus.ACCEPTED]
        head, prefix = bytearray(), None
        held: list[bytes] = []
        held_size = plain_size = 0
        digest = hashlib.sha256()  # of the client's bytes, un-stuffed: the same on each retry
        early: Reply | UpstreamUnavailable | None = None  # the upstream's refusal of DATA, or its loss, midway
        try:
            conn.send_data()  # its 354 comes back while the client is still sending the body
        except UpstreamUnavailable as exc:
            early = exc
        opened = early is None  # the upstream may be in the body: only the end of data or a close ends it
        streaming = False  # the 354 was read and the body is going upstream
        try:
            async for stretch in data.stretches():
                plain = unstuffed(stretch)
                digest.update(plain)
                plain_size += len(plain)
                if prefix is None:
                    head += plain
                    if head.find(b"\r\n\r\n", 0, MAX_HEADER_SCAN) >= 0 or len(head) >= MAX_HEADER_SCAN:
                        prefix = prepend_headers(b"", self._header_lines(tx, accepted, bytes(head)))
                if early is not None:
                    continue  # read to the end of data; the client hears why afterwards
                held.append(stretch)
                held_size += len(stretch)
                if prefix is None or held_size < STREAM_AFTER:
                    continue
                try:
                    if not streaming:
                        reply = await conn.data_reply()
                        if reply.code != 354:
                            early, opened = reply, False
                            continue
                        streaming = True
                        held.insert(0, prefix)
                    await conn.send_body(b"".join(held))
                except UpstreamUnavailable as exc:  # the connection is closed
                    early, opened = exc, False
                held.clear()
                held_size = 0
            if data.refusal is not None:
                if opened:
                    conn.abort()
                return data.limit_hit or await self._refuse_data(session, data.found)
            if prefix is None:
                prefix = prepend_headers(b"", self._header_lines(tx, accepted, bytes(head)))
            if early is None and not streaming:
                try:
                    reply = await conn.data_reply()
                except UpstreamUnavailable as exc:
                    early = exc
                else:
                    if reply.code != 354:
                        early = reply
                    held.insert(0, prefix)
            if early is not None:
                opened = False
                if isinstance(early, UpstreamUnavailable):  # the end of data never went: nothing was sent
                    return await self._lost_before_end_of_data(session, tx, early)
                return await self._data_outcome(session, tx, accepted, early, None)
            message.content_sha256 = digest.hexdigest()
            message.size = len(prefix) + plain_size
            if not await self._record_in_flight(session, tx):
                return REPLY_STORE_DOWN
        except BaseException:  # the client vanished or the session ended: never half a message upstream
            if opened:
                conn.abort()
            raise
        try:
            reply = await conn.end_data(b"".join(held))
        except (UpstreamUnavailable, asyncio.CancelledError) as exc:
            return await self._lost_at_end_of_data(session, tx, exc)
        return await self._data_outcome(session, tx, accepted, reply, None)

    def _header_lines(self, tx: Transaction, accepted: list[RecipientRecord], content: bytes) -> list[tuple[str, str]]:
        """Read the header block; the lines to prepend (Return-Path for SES, Message-ID when missing)."""
        message = tx.message
        facts = read_headers(content)
        added: list[tuple[str, str]] = []
        if self.is_ses and self.verp is not None and message.sender not in ("", "<>"):
            # SES replaces the envelope sender but sends bounces and complaints to Return-Path.
            index = None
            if len(accepted) == 1:
                index = message.recipients.index(accepted[0])
            message.verp_token = self.verp.address(message.id, index)
            added.append(("Return-Path", f"<{message.verp_token}>"))
        if not facts.message_id:
            facts.message_id = new_message_id(self.message_id_domain)
            added.append(("Message-ID", f"<{facts.message_id}>"))
        message.message_id, message.header_from, message.subject = facts.message_id, facts.header_from, facts.subject
        return added

    async def _refuse_data(self, session: Session, refused: str) -> str:
        log.warning("%s: refused a message (smuggling protection): %s", _peer(session), refused[10:60])
        await self.finish(session)
        return refused

    async def _record_in_flight(self, session: Session, tx: Transaction) -> bool:
        """In flight (pending, with recipients, Message-ID and VERP token), in the next group commit, before
        the end of data goes upstream: a crash between the upstream's 250 and the final commit then
        leaves a row the next start marks possibly_sent, instead of a delivery missing from the log."""
        try:
            await self.store.record_message(tx.message)
        except StoreError:
            await self.finish(session)  # nothing went upstream: the client retries
            return False
        tx.in_flight = _recipient_rows(tx.message)
        return True

    async def _lost_before_end_of_data(self, session: Session, tx: Transaction, exc: UpstreamUnavailable) -> str:
        """The upstream connection failed before the end of data went: nothing was sent."""
        tx.broken = True
        self.health.failed(failure_reason(str(exc)), str(exc), down=False)
        message = tx.message
        message.status, message.upstream_reply = MessageStatus.FAILED, f"connection lost during DATA: {exc}"
        await self.finish(session, record=True)
        return REPLY_UPSTREAM_DOWN.format(why=exc)

    async def _lost_at_end_of_data(self, session: Session, tx: Transaction, exc: BaseException) -> str:
        message = tx.message
        if isinstance(exc, asyncio.CancelledError):  # the client vanished: connection_lost records it as it is
            message.status = MessageStatus.POSSIBLY_SENT
            message.upstream_reply = "the client's connection was lost while the message went upstream"
            if tx.conn is not None:
                tx.conn.close()  # out of step: never reused
            raise exc
        # An out-of-protocol answer says whether the body had gone out; a lost connection cannot tell, and
        # the body may have reached the upstream: possibly_sent, not failed.
        body_sent = getattr(exc, "body_sent", None)
        tx.broken = True
        self.health.failed("lost_during_data" if body_sent is None else "protocol", str(exc), down=False)
        message.status = MessageStatus.FAILED if body_sent is False else MessageStatus.POSSIBLY_SENT
        lost = "connection lost" if body_sent is None else "connection closed by the relay"
        message.upstream_reply = f"{lost} during DATA: {exc}"
        await self.finish(session, record=True)
        return REPLY_UPSTREAM_DOWN.format(why=exc)

    async def _data_outcome(self, session: Session, tx: Transaction, accepted: list[RecipientRecord],
                            reply: Reply, body: bytes | None) -> str:
        """The upstream's answer to DATA or to the end of data, recorded before the client hears it."""
        message = tx.message
        message.upstream_reply = reply.line()
        if reply.ok:
            message.upstream_id = upstream_id_from(reply)
        else:
            for r in accepted:
                r.status = RecipientStatus.REJECTED if reply.permanent else RecipientStatus.DEFERRED
                r.reply = reply.line()
            self._refusal(tx, reply, [r.address for r in accepted], "DATA")
        message.status = settle_status(message.recipients, reply.code, message.send_failure)
        raw = body if (self.keeps_messages and reply.ok) else None
        # A plain success needs no wait for the disk: its in-flight row was, and covers a crash before this.
        durable = not (reply.ok and not tx.events and not message.send_failure and raw is None)
        try:
            await self.finish(session, record=True, raw=raw, strict=True, durable=durable)
        except StoreError:
            return REPLY_STORE_DOWN
        if reply.ok and body is not None and hasattr(self.upstream, "accepted"):
            self.upstream.accepted(message, [r.address for r in accepted], body)
        return reply.smtp()

    async def handle_RSET(self, server, session, envelope):
        await self.finish(session, record=True)
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server, session, envelope):
        await self.finish(session, record=True)
        return "221 2.0.0 Bye"

    # -- bookkeeping ------------------------------------------------------------------------------
    def _refusal(self, tx: Transaction, reply: Reply, recipients: list[str], command: str,
                 remote_mta: str | None = None) -> None:
        """A refusal is a send failure on the message, or a synchronous bounce per recipient."""
        failure = send_failure(reply)
        if failure:
            tx.message.send_failure = f"{failure}: {reply.line()}"
            return
        shared = classify(reply.enhanced, reply.code, reply.line(), Kind.BOUNCE, command=command)
        now = time.time()
        for rcpt in recipients:
            verdict = shared
            if rcpt.rpartition("@")[2].lower() in RECIPIENT_DOMAINS:  # a provider whose refusals mean one thing
                verdict = classify(reply.enhanced, reply.code, reply.line(), Kind.BOUNCE, command=command, recipient=rcpt)
            tx.events.append(BounceEvent(
                at=now, source=Source.SYNC, kind=Kind.BOUNCE, recipient=rcpt.lower(),
                bounce_type=verdict.bounce_type, reason=verdict.reason, status=verdict.status,
                status_source=verdict.status_source, smtp_code=reply.code, diagnostic=reply.line(),
                remote_mta=remote_mta or getattr(self.upstream, "name", None), relay_id=tx.message.id,
                evidence=verdict.evidence, smtp_command=verdict.stage or command, decided_by=verdict.decided_by,
            ))

    async def finish(self, session: Session, record: bool = False, raw: bytes | None = None, strict: bool = False,
                     durable: bool = True):
        """End the session's transaction: release the upstream connection and record what happened."""
        tx: Transaction | None = getattr(session, "tx", None)
        if tx is None:
            return
        session.tx = None
        if tx.conn is not None:
            conn, tx.conn = tx.conn, None
            await self.upstream.release(conn)
        message = tx.message
        if not record or (not message.recipients and message.status == MessageStatus.PENDING):
            return  # nothing reached a recipient: nothing to record
        if message.status == MessageStatus.PENDING:  # abandoned after RCPT replies (RSET, QUIT, lost)
            message.status = settle_status(message.recipients, None, message.send_failure)
        changed = tx.in_flight != _recipient_rows(message)  # most often not: the final commit is one row
        if strict:
            await self.store.record_message(message, tx.events, raw, recipients=changed, durable=durable)
            log_message(message, getattr(self.upstream, "name", "upstream"))
        else:
            await self._record_quietly(message, tx.events, recipients=changed)
        if self.suppressor is not None and tx.events:
            try:
                await self.suppressor.consider(tx.events, message.sender)
            except StoreError as exc:
                log.error("could not update the suppression list for message %s: %s", message.id, exc)

    async def _record_quietly(self, message: MessageRecord, events=(), recipients: bool = True) -> None:
        try:
            await self.store.record_message(message, events, recipients=recipients)
        except StoreError as exc:
            log.error("could not record message %s: %s", message.id, exc)
        log_message(message, getattr(self.upstream, "name", "upstream"))  # the outcome the client was told

    async def _drop(self, session: Session) -> None:
        tx: Transaction | None = getattr(session, "tx", None)
        if tx is not None and tx.conn is not None:
            tx.conn.close()
            await self.upstream.release(tx.conn)
            tx.conn = None
        session.tx = None


def _recipient_rows(message: MessageRecord) -> list[tuple]:
    return [(r.address, r.status, r.reply) for r in message.recipients]


def _close_after_reply(server) -> None:
    """Close the client's connection once the reply being pushed has been written."""
    asyncio.get_running_loop().call_soon(lambda: server.transport and server.transport.close())


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def _user(session: Session) -> str | None:
    data = session.auth_data
    if isinstance(data, LoginPassword):
        return data.login.decode("utf-8", "replace")
    return None


class RelaySMTP(GuardedSMTP):
    """aiosmtpd's SMTP, finishing the transaction when the client vanishes mid-way."""

    def __init__(self, handler: RelayHandler, *args, auth_needed: bool = False, busy_poll: BusyPoll | None = None,
                 **kwargs):
        super().__init__(handler, *args, **kwargs)
        self._relay_handler = handler
        self._auth_needed = auth_needed
        self.busy_poll = busy_poll

    def _create_session(self) -> Session:
        session = super()._create_session()
        session.auth_needed = self._auth_needed
        session.tx = None
        return session

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the same checks and replies, the data read by MessageData and handed
        to the handler as it arrives (stream_DATA) instead of collected line by line."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = MessageData(self._reader, self.data_size_limit, self.line_length_limit - 2,
                           size_reply=self.size_reply.format(limit=self.data_size_limit),
                           line_reply=self.line_reply.format(limit=self.max_line_length),
                           check=smuggling_refusal, rank=refusal_rank)
        try:
            status = await self._relay_handler.stream_DATA(self, self.session, self.envelope, data)
        except asyncio.CancelledError:
            self._writer.close()  # as aiosmtpd: the connection was lost during DATA
            raise
        except ConnectionError:  # the client closed mid-DATA: nothing more to say to it
            self._writer.close()
            return
        except Exception as error:  # noqa: BLE001 - never read the rest of the data as commands
            await data.drain()
            status = await self.handle_exception(error)
        self._set_post_data_state()
        await self.push(status)

    def connection_lost(self, error) -> None:
        session = self.session
        super().connection_lost(error)
        if session is not None and getattr(session, "tx", None) is not None:
            asyncio.get_running_loop().create_task(self._relay_handler.finish(session, record=True))


class Authenticator:
    """Checks AUTH PLAIN/LOGIN against the users named in the environment (`user:password,...`)."""

    def __init__(self, users: dict[str, str], throttle: AuthThrottle | None = None):
        self.users = users
        self.throttle = throttle or AuthThrottle()

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ip = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        if self.throttle.blocked(ip):
            log_auth_failure(session.peer, None, "throttled: too many failures from this address")
            return AuthResult(success=False, handled=False, message=REPLY_AUTH_THROTTLED)
        if not isinstance(auth_data, LoginPassword):
            log_auth_failure(session.peer, None, f"unsupported mechanism {mechanism}")
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        expected = self.users.get(login)
        ok = expected is not None and secrets.compare_digest(expected.encode(), password.encode())
        if not ok:
            self.throttle.failed(ip)
            log_auth_failure(session.peer, login, "unknown user" if expected is None else "wrong password")
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def parse_users(text: str | None) -> dict[str, str]:
    users = {}
    for item in (text or "").replace("\n", ",").split(","):
        login, sep, password = item.strip().partition(":")
        if login and sep:
            users[login] = password
    return users
