"""Signals as a mail daemon takes them: SIGHUP reloads what can change in place, SIGTERM drains.

SIGTERM: the listeners stop accepting; every idle session is told `421 4.3.2` and closed; a session in
the middle of a transaction keeps going for `[service] shutdown_grace` seconds and is told 421 as soon
as its transaction ends; what is still busy at the deadline is told 421 and closed (the relay then records
the message as it stands: a body that had gone upstream is `possibly_sent`). The tasks that record a
closed session's outcome are awaited before the bounce log closes, so nothing is left pending.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import weakref

log = logging.getLogger("bounceproxy")

REPLY_SHUTDOWN = b"421 4.3.2 Service shutting down, closing connection; please retry later\r\n"
# The coroutines that finish a session's work once its connection is gone (see connection_lost).
_SESSION_WORK = ("RelayHandler.finish", "SMTP._handle_client")


def client_tls(relay, source: str) -> ssl.SSLContext | None:
    """The relay's STARTTLS context from [relay] tls_cert/tls_key, or ConfigError naming the keys."""
    from proxy.errors import ConfigError

    if not relay.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(relay.tls_cert, relay.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{source}: [relay] tls_cert/tls_key: cannot load ({exc})") from None
    return ctx


class Sessions:
    """The SMTP sessions of the listeners, to drain on SIGTERM and to hand a new certificate on SIGHUP."""

    def __init__(self) -> None:
        self._all: weakref.WeakSet = weakref.WeakSet()
        self.draining = False

    def track(self, protocol):
        self._all.add(protocol)
        return protocol

    def live(self) -> list:
        return [p for p in list(self._all) if p.transport is not None and not p.transport.is_closing()]

    @staticmethod
    def busy(protocol) -> bool:
        """In a transaction (MAIL given, or the relay holding an upstream connection for it)."""
        session = protocol.session
        if session is not None and getattr(session, "tx", None) is not None:
            return True
        envelope = protocol.envelope
        return envelope is not None and (envelope.mail_from is not None or bool(envelope.rcpt_tos))

    @staticmethod
    def close(protocol) -> None:
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            transport.write(REPLY_SHUTDOWN)
            transport.close()

    def set_tls(self, ctx: ssl.SSLContext) -> None:
        """Sessions not yet in TLS take the new certificate at their STARTTLS."""
        for protocol in self.live():
            if getattr(protocol, "tls_context", None) is not None and protocol.transport.get_extra_info("sslcontext") is None:
                protocol.tls_context = ctx

    async def drain(self, grace: float) -> int:
        """421 to idle sessions now, to busy ones when their transaction ends or at the deadline.
        Returns how many were still busy at the deadline."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            live = self.live()
            for protocol in live:
                if not self.busy(protocol):
                    self.close(protocol)
            busy = [p for p in live if self.busy(p)]
            if not busy:
                return 0
            if loop.time() >= deadline:
                log.warning("shutdown: %d session(s) still in a transaction after [service] shutdown_grace = %gs: "
                            "closed with 421 4.3.2", len(busy), grace)
                for protocol in busy:
                    self.close(protocol)
                return len(busy)
            await asyncio.sleep(0.05)


async def settle_session_tasks(timeout: float = 5.0, sessions: Sessions | None = None) -> None:
    """Let the work of closed sessions (recording their outcome) finish before the store closes.

    With `sessions`, only the SMTP sessions those listeners accepted are waited for: another aiosmtpd
    server in the same process (a test's upstream, holding the relay's pooled connection open until
    the pool closes) is none of ours."""
    current = asyncio.current_task()
    ours = None
    if sessions is not None:
        ours = {getattr(p, "_handler_coroutine", None) for p in list(sessions._all)} - {None}

    def of_a_session(task: asyncio.Task) -> bool:
        name = getattr(task.get_coro(), "__qualname__", "")
        if not name.endswith(_SESSION_WORK):
            return False
        return ours is None or not name.endswith("SMTP._handle_client") or task in ours

    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done() and of_a_session(t)]
    if not pending:
        return
    done, still = await asyncio.wait(pending, timeout=timeout)
    for task in still:
        task.cancel()
    if still:
        await asyncio.wait(still, timeout=1)


# What SIGHUP changes in place; everything else is reported as needing a restart.
RELOADABLE = {
    "relay": {"tls_cert", "tls_key"},
    "suppression": {"mode", "reply_style", "act_on_correlations", "soft_threshold", "soft_window_days",
                    "soft_count_period_hours", "soft_suppress_days", "hard_expiry_days", "complaint_expiry_days",
                    "refresh_seconds", "warn_bounce_rate", "warn_complaint_rate", "pause_bounce_rate",
                    "pause_complaint_rate", "rate_window_hours", "rate_min_recipients"},
    "log": {"level"},
    "service": {"shutdown_grace"},
}


def changes(old, new) -> tuple[list[str], list[str]]:
    """The keys that differ: those applied in place, and those that need a restart."""
    applied, restart = [], []
    for f in dataclasses.fields(old):
        section = f.name
        if section == "source":
            continue
        a, b = getattr(old, section), getattr(new, section)
        if a == b:
            continue
        for key in dataclasses.fields(a):
            if getattr(a, key.name) != getattr(b, key.name):
                name = f"[{section}] {key.name}"
                (applied if key.name in RELOADABLE.get(section, ()) else restart).append(name)
    return applied, restart
