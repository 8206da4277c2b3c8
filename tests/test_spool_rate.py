"""The spool's pace, on a simulated clock: learning an upstream's per-second quota from its throttling replies.

No sleeping: a virtual upstream takes at most `quota` recipients in any one-second window (sliding, as the
scripted upstream of test_spool.py and SES do) and answers each attempt `latency` seconds after it starts."""
from __future__ import annotations

import heapq
from collections import deque

import pytest

from proxy.spool.rate import QuotaHold, RateController, retry_delay


def simulate(quota: float, seconds: float, latency: float = 0.05, max_rate: float = 0.0, concurrency: int = 16,
             change_at: float | None = None, new_quota: float | None = None):
    """Drive a RateController against a sliding-window upstream; returns (controller, attempts) with attempts as
    (started, answered, accepted)."""
    c = RateController(0.0, max_rate=max_rate)
    accepted: deque[float] = deque()
    attempts = []
    events: list[tuple[float, int, str]] = []  # (time, seq, what)
    seq = 0
    free = concurrency
    now = 0.0
    pacing = False  # one dispatcher: it books the next slot only once the previous one was used (as deliver.py)
    heapq.heappush(events, (0.0, seq, "free"))
    while events:
        now, _, what = heapq.heappop(events)
        if now > seconds:
            break
        q = new_quota if change_at is not None and now >= change_at else quota
        if what.startswith("answer"):
            started = float(what.split()[1])
            while accepted and accepted[0] <= now - 1.0:
                accepted.popleft()
            ok = len(accepted) < q
            if ok:
                accepted.append(now)
                c.success(now)
            else:
                c.throttled(now)
            attempts.append((started, now, ok))
            free += 1
        elif what == "launch":
            pacing = False
            seq += 1
            heapq.heappush(events, (now + latency, seq, f"answer {now}"))
        if free > 0 and not pacing:  # a worker is free (there is always work): book the next slot
            free -= 1
            pacing = True
            seq += 1
            heapq.heappush(events, (now + c.reserve(now), seq, "launch"))
    return c, attempts


def window_max(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize("quota", [14, 50, 200])
def test_learns_the_quota_from_a_cold_start(quota):
    c, attempts = simulate(quota, 180.0)
    learnt = [a for a in attempts if a[0] >= 10.0]
    throttled = sum(1 for a in learnt if not a[2])
    delivered = sum(1 for a in learnt if a[2])
    span = max(a[1] for a in learnt) - 10.0
    assert c.learnt_at is not None and c.learnt_at < 10.0
    assert throttled / len(learnt) < 0.05, (throttled, len(learnt))
    assert delivered / span >= 0.95 * quota, delivered / span
    # once learnt, attempts in any one second exceed the quota by one at most
    assert window_max([a[0] for a in learnt]) <= quota + 1


def test_a_configured_max_rate_is_never_exceeded():
    c, attempts = simulate(100, 30.0, max_rate=20)
    assert all(a[2] for a in attempts)  # far below the upstream's quota: never throttled
    assert window_max([a[0] for a in attempts]) <= 21
    assert c.rate == 20


def test_a_lowered_quota_is_followed_down_and_a_raised_one_found_again():
    c, attempts = simulate(60, 200.0, change_at=60.0, new_quota=30)
    later = [a for a in attempts if a[0] >= 70.0]
    assert sum(1 for a in later if not a[2]) / len(later) < 0.05
    assert 0.95 * 30 <= c.rate <= 31
    c, attempts = simulate(30, 300.0, change_at=60.0, new_quota=40)
    assert c.rate > 34  # probing found the room


def test_throttles_of_one_burst_slow_down_once():
    c = RateController(0.0, initial_rate=10)
    for t in range(10):
        c.success(0.5 + t * 0.05)
    c.throttled(1.0)
    assert c.rate == pytest.approx(10 * 0.97)
    c.throttled(1.2)
    c.throttled(1.4)
    assert c.rate == pytest.approx(10 * 0.97) and c.throttles == 3


def test_retry_schedule_and_quota_hold():
    assert [retry_delay(n, 3600, 0) for n in (1, 2, 3, 4)] == [5, 10, 30, 60]
    assert retry_delay(50, 3600, 0) == 3600 and retry_delay(50, 600, 1) == 600
    assert 4.0 <= retry_delay(1, 3600, -1) <= 6.0 and retry_delay(1, 3600, 1) == pytest.approx(6.0)
    hold = QuotaHold(900)
    assert not hold.held(0)
    assert hold.exceeded(100, "454 Throttling failure: Daily message quota exceeded.") == 1000
    assert hold.held(999) and not hold.held(1000)
    assert hold.cleared() and not hold.cleared()
