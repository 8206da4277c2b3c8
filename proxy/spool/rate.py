"""The spool's pace: how fast to send upstream, learnt from the upstream's throttling. Pure: the clock is passed in.

SES (and most smarthosts) refuse what exceeds a per-second rate with `454 Throttling failure` and say nothing of
the rate itself. Halving on each refusal (plain AIMD) would average three quarters of the quota; but a refusal
tells more than "too fast": the recipients the upstream took in the second before it are what it allows. So:

- slow start: from `initial_rate`, double each half second in which the pace, not the work, was the limit;
- on a throttling reply (or 421): the ceiling is what was accepted in the last second, and the pace drops at
  once to `TARGET` of it (refusals from the same burst, within one second, count once; a refusal at that pace
  means the estimate was high: the ceiling drops by `NUDGE` more each time);
- after `PROBE_AFTER` quiet seconds at the pace, creep up by `PROBE_STEP` of the ceiling, so that a raised quota
  is found and a few refusals per probe are all the learning costs;
- with `[spool] max_rate`, never above it.
"""
from __future__ import annotations

import random
from collections import deque

TARGET = 0.97  # of the learnt ceiling
NUDGE = 0.98  # a throttling reply at the target pace: the ceiling was lower than thought
PROBE_AFTER = 5.0  # quiet seconds at the pace before creeping up
PROBE_STEP = 0.01  # of the ceiling per probe
MIN_RATE = 0.05  # one message in 20 seconds: never stop altogether
WINDOW = 1.0  # seconds over which rates are counted, as SES counts them

# AWS advises retrying a 4xx after 5 s, 10 s, 30 s, then minutes
RETRY_SCHEDULE = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


def retry_delay(attempts: int, cap: float, jitter: float) -> float:
    """Seconds before the next try after `attempts` failed ones; `jitter` in [-1, 1] spreads retries by +-20 %."""
    base = RETRY_SCHEDULE[min(max(attempts, 1), len(RETRY_SCHEDULE)) - 1]
    return min(cap, base * (1.0 + 0.2 * max(-1.0, min(1.0, jitter))))


def jitter() -> float:
    return random.uniform(-1.0, 1.0)


class RateController:
    """Slots for attempts at the current pace (`reserve`), and what each outcome teaches (`success`, `throttled`)."""

    def __init__(self, now: float, max_rate: float = 0.0, initial_rate: float = 1.0):
        self.max_rate = max_rate  # 0: no cap
        self.rate = max_rate if max_rate > 0 else initial_rate
        self.ceiling: float | None = max_rate if max_rate > 0 else None  # learnt (or configured) upstream limit
        self.slow_start = max_rate <= 0
        self.learnt_at: float | None = None  # when the first throttling reply set the ceiling
        self.throttles = 0
        self._next = now  # when the next slot opens
        self._accepted: deque[tuple[float, int]] = deque()  # (at, recipients) the upstream took
        self._since_change = 0  # recipients whose attempts were booked since the pace last changed
        self._last_change = now
        self._quiet_since = now
        self._cooldown_until = 0.0

    def _cap(self, rate: float) -> float:
        rate = max(MIN_RATE, rate)
        return min(rate, self.max_rate) if self.max_rate > 0 else rate

    @staticmethod
    def _count(q: deque, now: float) -> int:
        while q and q[0][0] <= now - WINDOW:
            q.popleft()
        return sum(n for _, n in q)

    def accepted_last_second(self, now: float) -> int:
        return self._count(self._accepted, now)

    def reserve(self, now: float, cost: int = 1) -> float:
        """Book the next slot for an attempt of `cost` recipients; returns how long to wait before starting it."""
        self._grow(now)
        at = max(now, self._next)
        self._next = at + max(1, cost) / self.rate
        self._since_change += max(1, cost)
        return at - now

    def _grow(self, now: float) -> None:
        """Speed up when the pace, not the work, held the sends back: doubling each half second in slow start,
        then by a probe step after PROBE_AFTER quiet seconds."""
        elapsed = now - self._last_change
        if elapsed < WINDOW / 2:
            return
        busy = self._since_change >= 0.8 * self.rate * elapsed
        self._last_change, self._since_change = now, 0
        if not busy:
            self._quiet_since = now  # no work to learn from: probing would be a guess
            return
        if self.slow_start:
            self.rate = self._cap(self.rate * 2)
        elif self.ceiling is not None and now - self._quiet_since >= PROBE_AFTER:
            self.rate = self._cap(self.rate + max(PROBE_STEP * self.ceiling, 0.1))
            self._quiet_since = now

    def success(self, now: float, cost: int = 1) -> None:
        self._accepted.append((now, max(1, cost)))

    def throttled(self, now: float) -> None:
        """A throttling reply (454 Throttling failure, 421): slow down at once, to under what was just accepted."""
        self.throttles += 1
        self._quiet_since = now
        self._next = max(self._next, now)
        if now < self._cooldown_until:
            return  # the same burst: already slowed down for it
        taken = self.accepted_last_second(now)
        estimate = float(taken) if taken > 0 else self.rate / 2
        if not self.slow_start and self.ceiling is not None and self.rate <= self.ceiling * TARGET + 1e-9:
            estimate = min(estimate, self.ceiling * NUDGE)  # refused below the pace thought safe: it was high
        self.ceiling = max(MIN_RATE, estimate)
        self.rate = self._cap(self.ceiling * TARGET)
        if self.learnt_at is None:
            self.learnt_at = now
        self.slow_start = False
        self._cooldown_until = now + WINDOW
        self._last_change, self._since_change = now, 0


class QuotaHold:
    """`454 Throttling failure: Daily message quota exceeded`: nothing more goes until `until`; then one attempt
    probes, and the hold is renewed if the quota is still spent. Pure, like RateController."""

    def __init__(self, retry_seconds: float):
        self.retry_seconds = retry_seconds
        self.until: float | None = None
        self.reason = ""
        self.holds = 0  # quota replies seen

    def held(self, now: float) -> bool:
        return self.until is not None and now < self.until

    def exceeded(self, now: float, reply: str) -> float:
        """Hold from now; returns when the queue is tried again."""
        self.holds += 1
        self.until, self.reason = now + self.retry_seconds, reply
        return self.until

    def cleared(self) -> bool:
        """A message went: the quota is back. True when that ends a hold."""
        was = self.until is not None
        self.until, self.reason = None, ""
        return was
