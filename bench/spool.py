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

The spool-mode listener runs in its own process (`bench/spool.py --serve`, what proxy/app.py builds in spool mode),
like `bounceproxy serve` for pass-through, both on uvloop with SQLite in a temporary directory.
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

from bench.relay import Bounceproxy, Sink, _terminate, smtp_source, wait_port  # noqa: E402
from tests.postfix import free_port  # noqa: E402


async def serve(port: int, upstream_port: int, db: str) -> None:
    """The spool-mode stack on `port`: SpoolHandler, SQLite store, workers to the upstream."""
    import dataclasses

    from proxy.config import Address, SpoolConfig
    from proxy.relay.server import RelaySMTP
    from proxy.relay.upstream import UpstreamPool
    from proxy.relay.verp import VerpSigner
    from proxy.smtp_guard import Limits
    from proxy.spool import SpoolHandler, start_spool
    from proxy.store import store_for_config
    from tests.conftest import make_config

    config = make_config(Path(db).parent, upstream_port, relay={"mode": "spool", "listen": Address("127.0.0.1", port)})
    config = dataclasses.replace(config, store=dataclasses.replace(config.store, path=db, commit_interval_ms=0),
                                 upstream=dataclasses.replace(config.upstream, pool_size=16),
                                 spool=SpoolConfig(concurrency=8, max_rate=10_000.0))
    store = await store_for_config(config.store).open()
    pool = UpstreamPool(config.upstream, "relay.bench.test", None, None)
    workers = await start_spool(config, store, pool)
    handler = SpoolHandler(config, store, pool, verp=VerpSigner(b"bench-" + b"k" * 40, "bounce", "bounces.test"),
                           on_queued=workers.notify)
    limits = Limits(1000, 1000, 3600)
    await asyncio.get_running_loop().create_server(
        lambda: RelaySMTP(handler, hostname="relay.bench.test", enable_SMTPUTF8=True, limits=limits, ident="spool"),
        "127.0.0.1", port, backlog=1024)
    await asyncio.Event().wait()


def accept_figure(count: int, runs: int) -> float:
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    sink = Sink(work)
    try:
        through, spooled = [], []
        for run in range(runs):
            d = work / f"pass{run}"
            d.mkdir()
            bp = Bounceproxy(d, sink.port, 1, None, verp=True)
            try:
                smtp_source(bp.port, 50, 2048, 10, 60)  # warm-up
                through.append(smtp_source(bp.port, count, 2048, 10, 600))
            finally:
                bp.stop()
            d = work / f"spool{run}"
            d.mkdir()
            port = free_port()
            proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(sink.port), str(d / "b.db")],
                                    cwd=ROOT, start_new_session=True)
            try:
                wait_port(port, proc=proc)
                smtp_source(port, 50, 2048, 10, 60)
                spooled.append(smtp_source(port, count, 2048, 10, 600))
            finally:
                _terminate(proc, group=True)
        t = sorted(r.rate for r in through)[len(through) // 2]
        s = sorted(r.rate for r in spooled)[len(spooled) // 2]
        print(f"accept, 2 KB x 10 sessions, {count} messages, median of {runs}:")
        print(f"  pass-through  {t:8.0f} msg/s   (each run: {', '.join(f'{r.rate:.0f}' for r in through)})")
        print(f"  spool         {s:8.0f} msg/s   (each run: {', '.join(f'{r.rate:.0f}' for r in spooled)})")
        print(f"  ratio spool / pass-through = {s / t:.2f}   (bar >= 1.5: {'met' if s / t >= 1.5 else 'NOT met'})")
        return s / t
    finally:
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
    p.add_argument("--serve", nargs=3, metavar=("PORT", "UPSTREAM_PORT", "DB"), help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quota", type=int, default=50)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--skip-accept", action="store_true")
    args = p.parse_args(argv)
    if args.serve:
        import uvloop

        port, upstream, db = args.serve
        uvloop.run(serve(int(port), int(upstream), db))
        return 0
    if not args.skip_accept:
        accept_figure(args.count, args.runs)
    backlog = int(args.quota * args.seconds * 1.3)
    asyncio.run(throttle_figures(args.quota, args.seconds, backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
