"""Defences shared by both listeners: connection limits (total and per IP), a cap on the whole
session's length (slowloris), and AUTH failure rate limiting. aiosmtpd already bounds command
and line length and closes idle sessions."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP

log = logging.getLogger(__name__)


@dataclass
class Limits:
    max_connections: int
    max_per_ip: int
    max_session_seconds: float
    open_total: int = 0
    open_by_ip: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    refused: int = 0


_SMTP_NAMES: dict[type, list[str]] = {}
# `<local@domain> params` in its plain, everyday form; anything else takes aiosmtpd's full parser.
_PLAIN_PATH = re.compile(r"<((?![.])(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|\.(?![.@])){1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,252})>[ \t]*(.*)",
                         re.DOTALL)


def handler_dir(obj) -> list[str]:
    """The hook names aiosmtpd collects from a handler at every connection, computed once a class."""
    names = _SMTP_NAMES.get(type(obj))
    if names is None:
        names = _SMTP_NAMES[type(obj)] = [n for n in object.__dir__(obj) if n.startswith(("handle_", "auth_"))]
    return names


class GuardedSMTP(SMTP):
    """aiosmtpd's SMTP behind connection limits and a total-session deadline."""

    def __dir__(self):
        """Only the smtp_*/auth_* names aiosmtpd looks for when it builds each session's command
        table (with inspect.getmembers and dir): computed once per class, not once per connection,
        which was a fifth of the relay's time per message."""
        names = _SMTP_NAMES.get(type(self))
        if names is None:
            names = _SMTP_NAMES[type(self)] = [n for n in object.__dir__(self) if n.startswith(("smtp_", "auth_"))]
        return names

    def __init__(self, handler, *args, limits: Limits, **kwargs):
        super().__init__(handler, *args, **kwargs)
        self._limits = limits
        self._peer_ip: str | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def _getaddr(self, arg: str):
        """aiosmtpd's address parser (email._header_value_parser) was a fifth of the relay's time;
        plain `<local@domain>` paths are read by one regex with the same result."""
        if arg.startswith("<>"):
            return "<>", arg[2:]
        m = _PLAIN_PATH.fullmatch(arg)
        if m:
            return m.group(1), m.group(2)
        return super()._getaddr(arg)

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
        super().connection_made(transport)
        self._deadline = asyncio.get_running_loop().call_later(limits.max_session_seconds, self._session_too_long)

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
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)

    def eof_received(self):
        if not self._peer_ip:
            return False
        return super().eof_received()


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
