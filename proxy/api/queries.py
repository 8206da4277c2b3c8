"""Read-only aggregate queries behind /metrics, run through the store's `_fetch`.

Each is one GROUP BY over a table; /metrics caches their result for a few seconds.
"""
from __future__ import annotations

import time

from proxy.store.sqlite import StoreError


async def metric_counts(store) -> dict:
    """Row counts of the bounce log by the labels /metrics exposes."""
    fetch = store._fetch
    counts = {
        "messages": await fetch("SELECT status, COUNT(*) AS n FROM messages GROUP BY status"),
        "recipients": await fetch("SELECT status, COUNT(*) AS n FROM recipients GROUP BY status"),
        "events": await fetch(
            "SELECT source, kind, bounce_type, COUNT(*) AS n FROM events GROUP BY source, kind, bounce_type"
        ),
        "inbound": await fetch("SELECT state, COUNT(*) AS n FROM inbound GROUP BY state"),
        "correlations": await fetch("SELECT correlation, COUNT(*) AS n FROM events WHERE source = 'async' "
                                    "GROUP BY correlation"),
        "inbound_flags": await fetch(
            "SELECT 'foreign_recipients' AS flag, COUNT(*) AS n FROM inbound WHERE foreign_recipients > 0 "
            "UNION ALL SELECT 'truncated', COUNT(*) FROM inbound WHERE truncated IS NOT NULL"),
        "last_event_at": (await fetch("SELECT MAX(at) AS at FROM events"))[0]["at"],
        "last_message_at": (await fetch("SELECT MAX(created_at) AS at FROM messages"))[0]["at"],
        "suppressions": None,
    }
    # The suppression list arrives with a later migration: count it only where it exists.
    if await fetch("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'suppressions'"):
        try:
            counts["suppressions"] = await fetch(
                "SELECT kind, COUNT(*) AS n FROM suppressions WHERE expires_at IS NULL OR expires_at > ? GROUP BY kind",
                (time.time(),),
            )
        except StoreError:  # a schema this module does not know yet: leave the family out
            pass
    return counts
