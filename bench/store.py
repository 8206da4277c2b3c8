#!/usr/bin/env python3
"""The bounce log's backends under the relay, in one run, against one smtp-sink:

  sqlite      smtp-source → bounceproxy serve (SQLite, the default)             → smtp-sink
  postgresql  smtp-source → bounceproxy serve ([store] backend = "postgresql")   → smtp-sink
  pg × 2      two smtp-sources → two bounceproxy serve processes on one database → smtp-sink

then the database's own ceiling: how many write transactions per second PostgreSQL commits when
nothing but the store's record_message units load it (the relay's pattern: an in-flight record, then
the outcome), with as many concurrent writers as the relay has sessions. From the commits one relay
spends per message, that ceiling says how many relay instances one PostgreSQL would carry.

Every figure is a median of --repeat interleaved runs; ratios are against the baseline of the same run.
PostgreSQL is a private, durable server (fsync on, synchronous_commit on) from tests/pg.py.

    bench/store.py --quick
    bench/store.py --count 3000 --sessions 10 --repeat 3
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from relay import Bounceproxy, Result, Sink, smtp_source  # noqa: E402

from tests.pg import PostgresServer, find_postgres_bin, PG_SKIP_REASON  # noqa: E402


def pg_env(url: str) -> dict[str, str]:
    return {"BOUNCEPROXY_STORE__BACKEND": "postgresql", "BOUNCEPROXY_STORE__URL": url,
            "BOUNCEPROXY_API__ENABLED": "false"}


async def _xact_commits(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    finally:
        await conn.close()


def xact_commits(url: str) -> int:
    return asyncio.run(_xact_commits(url))


def run_relays(workdir: Path, sink: Sink, envs: list[dict[str, str]], count: int, size: int, sessions: int,
               timeout: float) -> Result:
    """Start one bounceproxy per env, send `count` messages split over them at once, stop them."""
    import concurrent.futures

    relays = []
    try:
        for i, env in enumerate(envs):
            d = workdir / f"relay{i}"
            d.mkdir(parents=True, exist_ok=True)
            relays.append(Bounceproxy(d, sink.port, 1, None, False, extra_env=env))
        share, per = count // len(relays), max(1, sessions // len(relays))
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(relays)) as pool:
            results = list(pool.map(lambda r: smtp_source(r.port, share, size, per, timeout), relays))
        elapsed = time.perf_counter() - start
        for r in relays:
            r.check_alive()
        failed = [r.error for r in results if r.error]
        if failed:
            return Result(error=failed[0])
        return Result(rate=share * len(relays) / elapsed, seconds=elapsed)
    finally:
        for r in relays:
            r.stop()


async def commit_ceiling(url: str, writers: int, seconds: float) -> float:
    """Write transactions per second the database commits for record_message units from `writers` tasks."""
    from proxy.model import MessageRecord, MessageStatus, RecipientRecord, RecipientStatus
    from proxy.store import store_for_url

    store = await store_for_url(url, pool_size=writers).open()
    stop = time.perf_counter() + seconds
    done = 0

    async def writer(w: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < stop:
            m = MessageRecord(id=f"ceil-{w}-{n}", created_at=time.time(), sender="app@bench.example.com",
                              status=MessageStatus.PENDING, size=2048,
                              recipients=[RecipientRecord("user@bench.example.net", RecipientStatus.ACCEPTED, "250 ok")])
            await store.record_message(m)
            m.status = MessageStatus.SENT
            await store.record_message(m, recipients=False)
            n += 1
            done += 2
    start = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - start
    await store.close()
    return done / elapsed


def median(results: list[Result]) -> Result:
    ok = [r.rate for r in results if r.rate is not None]
    if not ok:
        return results[0]
    return Result(rate=statistics.median(ok))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="600 messages, one run")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.repeat = 600, 1
    if find_postgres_bin() is None:
        print(PG_SKIP_REASON)
        return 2
    runs: dict[str, list[Result]] = {"sqlite": [], "postgresql": [], "pg x2": []}
    per_message: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bp-store-bench-") as tmp, PostgresServer(durable=True) as pg:
        workdir = Path(tmp)
        sink = Sink(workdir)
        try:
            for r in range(args.repeat):
                cell = (args.count, args.size, args.sessions, args.timeout)
                runs["sqlite"].append(run_relays(workdir / f"sqlite{r}", sink, [{}], *cell))
                url = pg.create_database_sync()
                before = xact_commits(url)
                runs["postgresql"].append(run_relays(workdir / f"pg{r}", sink, [pg_env(url)], *cell))
                per_message.append((xact_commits(url) - before) / args.count)
                shared = pg.create_database_sync()
                runs["pg x2"].append(run_relays(workdir / f"pg2-{r}", sink, [pg_env(shared), pg_env(shared)], *cell))
            ceiling = asyncio.run(commit_ceiling(pg.create_database_sync(), args.sessions, 5.0))
        finally:
            sink.stop()
    sqlite, postgres, two = (median(runs[k]) for k in ("sqlite", "postgresql", "pg x2"))
    print(f"relay, {args.count} × {args.size} B, {args.sessions} sessions, median of {args.repeat} (messages/s):")
    print(f"  sqlite                 {sqlite.cell()}")
    print(f"  postgresql             {postgres.cell()}")
    print(f"  postgresql, 2 relays   {two.cell()}")
    if sqlite.rate and postgres.rate:
        ratio = postgres.rate / sqlite.rate
        print(f"postgresql / sqlite      {ratio:.2f}  (bar ≥ 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")
    if two.rate and postgres.rate:
        print(f"2 relays / 1 relay       {two.rate / postgres.rate:.2f}  (one machine: 2 cores for the relays, "
              "smtp-source, smtp-sink and PostgreSQL together)")
    commits = statistics.median(per_message) if per_message else 0
    print(f"database commits per relayed message   {commits:.2f}  (pg_stat_database.xact_commit)")
    print(f"database ceiling, record_message units {ceiling:,.0f} commits/s with {args.sessions} writers")
    if commits and postgres.rate:
        print(f"  one relay at {postgres.rate:,.0f} msg/s spends {postgres.rate * commits:,.0f} commits/s: "
              f"this PostgreSQL would carry about {ceiling / (postgres.rate * commits):.1f} such relays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
