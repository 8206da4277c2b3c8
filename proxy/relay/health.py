"""Is the upstream usable? What the relay learned from its last attempt to get a connection.

The relay's attempts (and, while nothing else tries, a periodic probe) tell it; `/healthz` and
`/metrics` read it. A refused attempt counts under a short reason, so an outage shows as a moving
counter and a gauge at 0 instead of only a line in the log at its start.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter

# Reason labels of bounceproxy_upstream_failures_total: a fixed, small set (metric label values
# must not grow with what an upstream says).
REASONS = ("connect", "timeout", "tls", "closed", "protocol", "auth", "busy", "lost_during_data", "other")


def failure_reason(text: str) -> str:
    """The label for an UpstreamUnavailable's sentence (proxy.relay.upstream._describe); `other` for
    a sentence it does not know."""
    t = text.lower()
    for reason, words in (("busy", ("busy",)), ("tls", ("tls", "ssl", "certificate")),
                          ("timeout", ("in time", "timeout", "timed out")), ("connect", ("cannot connect",)),
                          ("closed", ("closed", "disconnect", "lost")),
                          ("protocol", ("malformed", "refused the connection setup", "out of step", "protocol"))):
        if any(w in t for w in words):
            return reason
    return "other"


class UpstreamHealth:
    """Up or down, since when and why, and refused attempts per reason.

    `busy` (every pooled connection in use) counts as a failure but does not mark the upstream down:
    it says the relay is loaded, not that the upstream is gone.
    """

    def __init__(self, name: str = "upstream"):
        self.name = name
        self.up = True
        self.reason = ""
        self.since = time.time()
        self.last_contact = 0.0  # monotonic time of the last attempt, whatever its outcome
        self.failures: Counter[str] = Counter({r: 0 for r in REASONS})

    def ok(self) -> None:
        self.last_contact = time.monotonic()
        if not self.up:  # the pool logs the recovery itself
            self.up, self.reason, self.since = True, "", time.time()

    def failed(self, reason: str, why: str, count: bool = True, down: bool = True) -> None:
        """A refused attempt; `count=False` for the probe's, which no client saw; `down=False` for a
        connection lost mid-transaction (the next attempt on a fresh one tells whether it is down)."""
        self.last_contact = time.monotonic()
        if count:
            self.failures[reason if reason in self.failures else "other"] += 1
        if reason == "busy" or not down:
            return
        if self.up:
            self.since = time.time()
        self.up, self.reason = False, why

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {"bounceproxy_upstream_up": 1 if self.up else 0,
                               "bounceproxy_upstream_state_since_timestamp_seconds": self.since}
        for reason, n in self.failures.items():
            m[f'bounceproxy_upstream_failures_total{{reason="{reason}"}}'] = n
        return m


async def probe_loop(upstream, health: UpstreamHealth, interval: float) -> None:
    """Try the upstream when nothing else has for `interval` seconds, so that `/healthz` sees an
    outage before a client does and sees the recovery without waiting for one."""
    from proxy.relay.upstream import UpstreamAuthFailed, UpstreamUnavailable

    while True:
        await asyncio.sleep(interval / 4)
        if time.monotonic() - health.last_contact < interval:
            continue
        try:
            conn = await upstream.acquire()
        except UpstreamAuthFailed as exc:
            health.failed("auth", f"upstream refused the relay's credentials: {exc}", count=False)
            continue
        except UpstreamUnavailable as exc:
            health.failed(failure_reason(str(exc)), str(exc), count=False)
            continue
        except Exception as exc:  # noqa: BLE001 - the probe must outlive whatever the upstream does
            health.failed("other", f"upstream error ({exc.__class__.__name__})", count=False)
            continue
        await upstream.release(conn)
        health.ok()
