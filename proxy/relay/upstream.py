"""The upstream side of the relay: SMTP replies, pooled aiosmtplib connections.

A connection carries many transactions (RSET between when one was left open), is checked with
NOOP after it idled, and is replaced when broken, idle too long, or after N messages.
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from dataclasses import dataclass

import aiosmtplib

log = logging.getLogger(__name__)

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


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
        lines = self.text.encode("ascii", "replace").decode("ascii").splitlines() or [""]
        head = [f"{self.code}-{part}" for part in lines[:-1]]
        return "\r\n".join([*head, f"{self.code} {lines[-1]}".rstrip()])


class UpstreamUnavailable(Exception):
    """No usable upstream connection: unreachable, TLS failure, timeout, or dropped mid-transaction."""


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


class UpstreamConnection:
    """One aiosmtplib connection and what the pool needs to know about it."""

    def __init__(self, client: aiosmtplib.SMTP):
        self.client = client
        self.messages = 0
        self.last_used = time.monotonic()
        self.in_transaction = False

    @property
    def max_size(self) -> int | None:
        size = self.client.esmtp_extensions.get("size", "")
        return int(size) if size.isdigit() and int(size) > 0 else None

    def supports(self, extension: str) -> bool:
        return self.client.supports_extension(extension)

    async def command(self, *args: bytes) -> Reply:
        try:
            response = await self.client.execute_command(*args)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            self.close()
            raise UpstreamUnavailable(_describe(exc)) from None
        if response.code == 421:
            self.close()
        return Reply(response.code, response.message)

    async def mail(self, sender: str, options: list[str]) -> Reply:
        self.in_transaction = True
        return await self.command(b"MAIL", f"FROM:<{sender}>".encode("utf-8"), *(o.encode() for o in options))

    async def rcpt(self, recipient: str) -> Reply:
        return await self.command(b"RCPT", f"TO:<{recipient}>".encode("utf-8"))

    async def data(self, content: bytes) -> Reply:
        try:
            response = await self.client.protocol.execute_data_command(content, timeout=self.client.timeout)
        except aiosmtplib.SMTPDataError as exc:
            self.in_transaction = False
            if exc.code == 421:
                self.close()
            return Reply(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, AttributeError) as exc:
            self.close()
            raise UpstreamUnavailable(_describe(exc)) from None
        self.in_transaction = False
        self.messages += 1
        return Reply(response.code, response.message)

    async def reset(self) -> None:
        if self.in_transaction and self.usable:
            reply = await self.command(b"RSET")
            if not reply.ok:
                self.close()
        self.in_transaction = False

    @property
    def usable(self) -> bool:
        return self.client.is_connected

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a broken transport may fail; it is gone either way
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return "the upstream did not answer in time"
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return f"cannot connect to the upstream ({exc})"
    if isinstance(exc, ssl.SSLError) or "SSL" in type(exc).__name__ or "certificate" in str(exc).lower():
        return f"TLS with the upstream failed ({exc})"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "the upstream closed the connection"
    return f"upstream error ({exc.__class__.__name__}: {exc})"


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
        self._slots = asyncio.Semaphore(cfg.pool_size)
        self.max_size: int | None = None
        self.extensions: set[str] = set()
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
            self._note_down(_describe(exc))
            raise UpstreamUnavailable(_describe(exc)) from None
        self.connects += 1
        conn = UpstreamConnection(client)
        self.max_size = conn.max_size
        self.extensions = set(client.esmtp_extensions)
        if self._down_since is not None:
            log.warning("upstream %s is reachable again after %.0fs", self.name, time.monotonic() - self._down_since)
            self._down_since = None
        return conn

    def _note_down(self, why: str) -> None:
        """Say it once per outage, not once per message."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("upstream %s unavailable: %s", self.name, why)

    async def acquire(self) -> UpstreamConnection:
        try:
            await asyncio.wait_for(self._slots.acquire(), self.cfg.command_timeout)
        except asyncio.TimeoutError:
            raise UpstreamUnavailable("all upstream connections are busy") from None
        try:
            now = time.monotonic()
            while self._idle:
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
