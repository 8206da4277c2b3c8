"""Spool mode (`[relay] mode = "spool"`): bounceproxy as a careful MTA in front of SES.

The listener (SpoolHandler) answers 250 once the message is committed to the spool: a table in the store, not
files, so that it works on both backends, shares one queue between instances on one PostgreSQL (claimed with a
lease, `FOR UPDATE SKIP LOCKED`), and is committed in the same transaction as the message's row in the bounce log
(a queued message is never missing from the log, nor a logged one from the queue). Delivery workers
(SpoolWorkers) drain it over the upstream pool at a pace learnt from the upstream's throttling (rate.py).
"""
from __future__ import annotations

import time

from proxy.spool.accept import SpoolHandler
from proxy.spool.deliver import SpoolWorkers

__all__ = ["SpoolHandler", "SpoolWorkers", "start_spool", "queue_summary"]


async def start_spool(config, store, upstream, suppressor=None, health=None) -> SpoolWorkers:
    """The delivery workers, started; `stop(grace)` finishes what is in flight. Hand `workers.notify` to the
    SpoolHandler as `on_queued` so that a message queued here goes at once."""
    return await SpoolWorkers(config, store, upstream, suppressor=suppressor, health=health).start()


async def queue_summary(store, workers: SpoolWorkers | None = None, now: float | None = None) -> dict:
    """The spool at a glance, for `stats`, the API, the dashboard and /metrics: depth, age, and (from this
    process's workers) the pace and any daily-quota hold."""
    now = time.time() if now is None else now
    c = await store.spool_counts(now)
    out = {"queued": c.queued, "held": c.held, "recipients": c.recipients, "due": c.due, "in_flight": c.in_flight,
           "oldest_age_seconds": round(now - c.oldest_at, 1) if c.oldest_at is not None else None}
    if workers is not None:
        out.update({f"delivery_{k}": v for k, v in workers.status().items()})
    return out
