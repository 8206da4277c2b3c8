#!/usr/bin/env python3
"""What deciding on one soft bounce costs when the address already has N soft bounces in the window
(issue 10, section 5): `Store.soft_bounces` + `Policy.soft_count` (retries and periods), next to the
plain COUNT(*) the suppressor ran before, over the same rows of the same SQLite file.

The worst case is a flood: N distinct messages to one full mailbox within a day (none a retry of
another, one counts), as a looping application would send before the address is suppressed.

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


async def one(n: int, rounds: int, directory: str) -> None:
    store = await SqliteStore(f"{directory}/soft{n}.db").open()
    policy = Policy(SuppressionConfig())
    now = time.time()
    for i in range(n):
        at = now - i * 80000 / n  # all within one day
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
    t = time.perf_counter()
    for _ in range(rounds):
        bounces = await store.soft_bounces(ADDRESS, since, SOFT_COUNTING_REASONS_EXCLUDED, policy.trusted)
        counted = policy.soft_count(bounces)
    after = (time.perf_counter() - t) / rounds
    await store.close()
    print(f"{n:>7} soft bounces  COUNT(*) {before * 1000:7.1f} ms (counted {row['n']})  "
          f"soft_bounces+soft_count {after * 1000:7.1f} ms (counted {counted})  ratio {after / before:5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for n in (int(s) for s in args.sizes.split(",")):
            asyncio.run(one(n, args.rounds, directory))


if __name__ == "__main__":
    main()
