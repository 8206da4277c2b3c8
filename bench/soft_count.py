#!/usr/bin/env python3
"""What deciding on one soft bounce costs when the address already has N soft bounces in the window
(issue 10, section 5), as `Suppressor.consider` does it, next to the plain COUNT(*) the suppressor ran
before, over the same rows of the same SQLite file.

The worst case is a flood: N distinct messages to one full mailbox (none a retry of another), as a
looping application would send before the address is suppressed. Within one day (`1 day`) the span
of the bounces alone shows that the threshold is out of reach (`Store.soft_bounce_span`); spread over
a little more than two days (`2 days`: up to three count, the decision that suppresses) every row is read
(`Store.soft_bounces` + `Policy.soft_count`).

    .venv/bin/python bench/soft_count.py                  # N = 100, 1000, 10000
    .venv/bin/python bench/soft_count.py --sizes 50000 --rounds 5
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.config import SuppressionConfig  # noqa: E402
from proxy.model import (  # noqa: E402
    BounceEvent, BounceType, Kind, MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, Source,
)
from proxy.store import SqliteStore  # noqa: E402
from proxy.suppression import SOFT_COUNTING_REASONS_EXCLUDED, Policy  # noqa: E402

ADDRESS = "flood@example.net"


async def one(n: int, days: int, rounds: int, directory: str) -> None:
    store = await SqliteStore(f"{directory}/soft{n}-{days}.db").open()
    policy = Policy(SuppressionConfig())
    now = time.time()
    for i in range(n):
        at = now - i * (days * 86400 + (400 if days > 1 else -400)) / max(n - 1, 1)
        event = BounceEvent(at=at, source=Source.SYNC, kind=Kind.BOUNCE, recipient=ADDRESS,
                            bounce_type=BounceType.SOFT, reason="mailboxfull", message_id=f"m{i}")
        await store.record_message(MessageRecord(
            id=f"m{i}", created_at=at, sender="app@example.com", status=MessageStatus.FAILED, message_id=f"<{i}@app>",
            recipients=[RecipientRecord(ADDRESS, RecipientStatus.DEFERRED)]), [event])
    since = now - 14 * 86400
    excluded = sorted(SOFT_COUNTING_REASONS_EXCLUDED)
    count_sql = (  # the query before issue 10
        "SELECT COUNT(*) AS n FROM events WHERE recipient = ? AND kind = 'bounce' AND bounce_type = 'soft' "
        f"AND reason NOT IN ({', '.join('?' * len(excluded))}) AND at >= MAX(?, COALESCE((SELECT MAX(at) FROM events "
        "WHERE recipient = ? AND kind = 'delivered'), 0))")
    t = time.perf_counter()
    for _ in range(rounds):
        (row,) = await store._fetch(count_sql, (ADDRESS, *excluded, since, ADDRESS))
    before = (time.perf_counter() - t) / rounds
    which = (ADDRESS, since, SOFT_COUNTING_REASONS_EXCLUDED, policy.trusted)
    t = time.perf_counter()
    for _ in range(rounds):
        counted = "-"  # the span alone rules the threshold out
        if policy.may_reach_threshold(await store.soft_bounce_span(*which)):
            counted = policy.soft_count(await store.soft_bounces(*which))
    after = (time.perf_counter() - t) / rounds
    await store.close()
    print(f"{n:>7} soft bounces over {days} day{'s' if days > 1 else ' '}  COUNT(*) {before * 1000:7.1f} ms "
          f"(counted {row['n']:>5})  now {after * 1000:7.1f} ms (counted {counted})  ratio {after / before:5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for days in (1, 2):
            for n in (int(s) for s in args.sizes.split(",")):
                asyncio.run(one(n, days, args.rounds, directory))


if __name__ == "__main__":
    main()
