"""Spool mode's figures (issue 16), each a ratio to a baseline measured in the same run.

1. Accept rate: smtp-source, 2 KB x 10 sessions, into spool mode (250 once committed to the spool, the delivery
   workers draining to smtp-sink meanwhile) as a ratio to pass-through mode (`bounceproxy serve`, each message
   mirrored to smtp-sink before its 250). Bar: >= 1.5.
2. Delivered rate against an upstream that throttles above a fixed quota (a sliding one-second window of
   recipients, `454 Throttling failure` after DATA beyond it), from a cold start ([spool] max_rate = 0), as a ratio
   to that quota after the first ten seconds; throttled attempts after the first ten seconds; nothing lost.
   Bars: >= 0.95 of the quota, zero lost, < 5 % throttled.
3. Time to learn the rate: from the first attempt to the first throttling reply that set the ceiling, and to the
   pace settling within 5 % of the quota.

    .venv/bin/python bench/spool.py [--count 3000] [--quota 50] [--seconds 40]

Both modes run as `bounceproxy serve` (SQLite in a temporary directory), first with the sink on loopback, then
(--rtt, default 20 ms) with the sink a round trip away, as SES is from an application's host: pass-through waits
for that round trip on every command, spool mode only in its delivery workers.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.relay import Bounceproxy, DelayProxy, Sink, smtp_source  # noqa: E402


def accept_figure(count: int, runs: int, rtt_ms: float = 0.0) -> float:
    """`bounceproxy serve` in each mode, the same smtp-sink behind it (with `rtt_ms`, one round trip of
    that many milliseconds away, as SES is: a DelayProxy holds each direction rtt_ms / 2)."""
    work = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    sink = Sink(work)
    delayed = DelayProxy(sink.port, rtt_ms / 2000) if rtt_ms else None
    upstream_port = delayed.port if delayed else sink.port
    try:
        results: dict[str, list] = {"passthrough": [], "spool": []}
        for run in range(runs):
            for mode in results:
                d = work / f"{mode}{run}"
                d.mkdir()
                bp = Bounceproxy(d, upstream_port, 1, None, verp=True, extra_env={"BOUNCEPROXY_RELAY__MODE": mode})
                try:
                    smtp_source(bp.port, 50, 2048, 10, 120)  # warm-up
                    results[mode].append(smtp_source(bp.port, count, 2048, 10, 900))
                finally:
                    bp.stop()
        t, s = (sorted(r.rate for r in results[m])[runs // 2] for m in ("passthrough", "spool"))
        where = f"the upstream {rtt_ms:g} ms away (a round trip)" if rtt_ms else "the upstream on loopback"
        print(f"accept, 2 KB x 10 sessions, {count} messages, median of {runs}, {where}:")
        for mode, rate in (("pass-through", t), ("spool", s)):
            each = ", ".join(f"{r.rate:.0f}" for r in results["passthrough" if mode == "pass-through" else "spool"])
            print(f"  {mode:13} {rate:8.0f} msg/s   (each run: {each})")
        print(f"  ratio spool / pass-through = {s / t:.2f}   (bar >= 1.5: {'met' if s / t >= 1.5 else 'NOT met'})")
        return s / t
    finally:
        if delayed:
            delayed.stop()
        sink.stop()


async def throttle_figures(quota: int, seconds: float, backlog: int) -> None:
    import dataclasses

    from proxy.config import SpoolConfig
    from proxy.model import MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, SpoolEntry, SpoolRecipient
    from proxy.model import SpoolState
    from proxy.relay.upstream import UpstreamPool
    from proxy.spool import SpoolWorkers
    from proxy.store import store_for_config
    from tests.conftest import make_config, start_upstream
    from tests.test_spool import ThrottlingUpstream, mail

    work = Path(tempfile.mkdtemp(prefix="bench-spool-throttle-"))
    handler = ThrottlingUpstream(quota)
    up = await start_upstream(handler)
    config = make_config(work, up.port, relay={"mode": "spool"})
    config = dataclasses.replace(config, upstream=dataclasses.replace(config.upstream, pool_size=16),
                                 spool=SpoolConfig(concurrency=8, max_rate=0.0))
    store = await store_for_config(config.store).open()
    now = time.time()
    for i in range(backlog):  # the backlog a burst above the quota leaves (accepted in the spool)
        rid = f"b{i:06d}"
        body = mail(f"{rid}@bench")
        msg = MessageRecord(id=rid, created_at=now, sender="app@example.com", status=MessageStatus.QUEUED,
                            recipients=[RecipientRecord(f"r{i}@example.org", RecipientStatus.QUEUED)])
        await store.spool_accept(msg, [], SpoolEntry(rid, now, "app@example.com", [], SpoolState.QUEUED, now,
                                                     now + 86400, len(body), recipients=[SpoolRecipient(f"r{i}@example.org", 0)],
                                                     body=body))
    pool = UpstreamPool(config.upstream, "relay.bench.test", None, None)
    workers = await SpoolWorkers(config, store, pool).start()
    t0 = time.monotonic()
    settled = None
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.1)
        if settled is None and workers.rate.ceiling and abs(workers.rate.rate - quota) <= 0.05 * quota:
            settled = time.monotonic() - t0
    await workers.stop(5)
    counts = await store.spool_counts(time.time())
    first = handler.attempts[0][0] if handler.attempts else t0
    after = [(at, ok) for at, ok in handler.attempts if at >= first + 10]
    ok_after = sum(1 for _, ok in after if ok)
    span = (max(at for at, _ in after) - (first + 10)) if after else 1
    delivered = sum(len(v) for v in handler.copies.values())
    copies_twice = sum(1 for v in handler.copies.values() if len(v) > 1)
    left = counts.recipients
    learnt = (time.monotonic() - (time.time() - workers.rate.learnt_at) - first) if workers.rate.learnt_at else None
    print(f"throttling upstream, quota {quota} recipients/s, cold start (max_rate = 0), {seconds:.0f} s, "
          f"backlog {backlog}:")
    print(f"  delivered after the first 10 s: {ok_after / span:.1f}/s = {ok_after / span / quota:.3f} of the quota "
          f"(bar >= 0.95)")
    print(f"  throttled attempts after the first 10 s: {len(after) - ok_after} of {len(after)} = "
          f"{(len(after) - ok_after) / max(1, len(after)):.2%} (bar < 5 %)")
    print(f"  lost: {backlog - delivered - left} (delivered {delivered}, still queued {left}, sent twice {copies_twice})")
    print(f"  time to learn: first throttling reply (ceiling set) after {learnt:.1f} s; pace within 5 % of the quota "
          f"after {settled:.1f} s; final pace {workers.rate.rate:.1f}/s, ceiling {workers.rate.ceiling:.1f}"
          if learnt is not None and settled is not None else "  never learnt")
    await pool.close()
    await store.close()
    up.server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quota", type=int, default=50)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--skip-accept", action="store_true")
    p.add_argument("--rtt", type=float, default=20.0, metavar="MS",
                   help="also measure accept with the upstream this many ms away (default 20; 0: only loopback)")
    args = p.parse_args(argv)
    if not args.skip_accept:
        accept_figure(args.count, args.runs)
        if args.rtt:
            accept_figure(args.count, args.runs, args.rtt)
    backlog = int(args.quota * args.seconds * 1.3)
    asyncio.run(throttle_figures(args.quota, args.seconds, backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
