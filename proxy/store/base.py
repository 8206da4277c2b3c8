"""The Store protocol once, over any driver that can run a unit (proxy.store.units) in a transaction.

A backend gives `_read(unit, *args)` and `_write(unit, *args)`; everything else, every SQL
statement and every record built, is shared, so both backends mean the same thing.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence

from proxy.model import (
    BounceEvent, EventEntry, IdentityStats, InboundRecord, InboundResult, LogStats, MessageRecord, MetricCounts,
    OutboxEntry, SoftBounce, Suppression, WebhookTarget,
    SpoolCounts, SpoolEntry,
)
from proxy.store import units
from proxy.store.dialect import Dialect
from proxy.store.errors import StoreError
from proxy.store.migrations import MIGRATIONS
from proxy.store.query import EventFilter, InboundFilter, MessageFilter, SuppressionFilter


class SqlStore:
    """Store protocol (proxy.store.Store) over a driver's `_read` and `_write`."""

    dialect: Dialect
    url: str = ""

    def __init__(self) -> None:
        # `[webhooks]` URLs: what they want is queued in the transaction of the event it tells (the app sets it)
        self.webhook_targets: tuple[WebhookTarget, ...] = ()
        # called after a write that may have queued webhooks commits: this process's dispatcher wakes at once
        self.on_queued = None
        self.commits = 0  # write transactions committed, for stats and benchmarks
        self.failed_batches = 0
        self._failing_since: float | None = None

    @property
    def failing(self) -> bool:
        """True from a refused write until the next one commits (`/healthz` reports it)."""
        return self._failing_since is not None

    async def _read(self, unit, *args):
        raise NotImplementedError

    async def _write(self, unit, *args):
        raise NotImplementedError

    async def schema_version(self) -> tuple[int, int]:
        rows = await self._read(_schema_version)
        return rows, len(MIGRATIONS)

    # -- the relay ---------------------------------------------------------------------------
    async def record_message(self, message: MessageRecord, events: Iterable[BounceEvent] = (),
                             raw: bytes | None = None, recipients: bool = True, durable: bool = True) -> None:
        """Commit a message, its recipients (unless `recipients` is False: unchanged since its in-flight
        record) and its synchronous events in one transaction.

        `durable=False`: committed (every reader sees it, a crash of the process keeps it) without waiting
        for the disk, so an outage of the machine itself may lose it. Only for what a durable record
        already covers: the relay's final record of a plain success, whose in-flight row then becomes
        possibly_sent at the next start, as for any crash between the upstream's 250 and that commit."""
        await self._write(units.record_message, message, list(events), raw, recipients, self.webhook_targets,
                          time.time(), durable=durable)
        self._queued()

    async def mark_possibly_sent(self, before: float) -> int:
        return await self._write(units.mark_possibly_sent, before)

    async def outbox_raw(self, relay_id: str) -> bytes | None:
        return await self._read(units.outbox_raw, relay_id)

    # -- the bounce MX -----------------------------------------------------------------------
    async def store_inbound(self, peer: str, mail_from: str, rcpt_tos: list[str], raw: bytes) -> int:
        """Commit a received mail's raw bytes; returns its id. Called before the 250 is sent."""
        return await self._write(units.store_inbound, time.time(), peer, mail_from, list(rcpt_tos), raw,
                                 hashlib.sha256(raw).hexdigest())

    async def get_inbound(self, inbound_id: int) -> InboundRecord | None:
        return await self._read(units.get_inbound, inbound_id)

    async def first_inbound_with_sha(self, sha256: str, other_than: int) -> int | None:
        """The first other inbound row with these bytes whose events were recorded (None: there is none)."""
        return await self._read(units.first_inbound_with_sha, sha256, other_than)

    async def inbound_ids(self, states: Sequence[str] | None = None) -> list[int]:
        return await self._read(units.inbound_ids, tuple(states) if states else None)

    async def list_inbound(self, flt: InboundFilter) -> list[InboundRecord]:
        return await self._read(units.list_inbound, flt)

    async def record_inbound_result(self, inbound_id: int, result: InboundResult) -> bool:
        recorded = await self._write(units.record_inbound_result, inbound_id, result, self.webhook_targets, time.time())
        self._queued()
        return recorded

    async def record_notification(self, keys: Sequence[str], events: Iterable[BounceEvent]) -> bool:
        """Record an outside notification's events once (keys: its SNS MessageId, SES feedbackId...)."""
        if not keys:
            raise StoreError("a notification needs at least one key to be recorded once")
        recorded = await self._write(units.record_notification, time.time(), list(keys), list(events),
                                     self.webhook_targets)
        self._queued()
        return recorded

    async def events_to_reclassify(self) -> list[BounceEvent]:
        return await self._read(units.events_to_reclassify)

    async def update_events_verdicts(self, events: Iterable[BounceEvent]) -> None:
        await self._write(units.update_events_verdicts, list(events))

    # -- correlation and the message story ---------------------------------------------------
    async def get_message(self, relay_id: str) -> MessageRecord | None:
        return await self._read(units.get_message, relay_id)

    async def find_message_by_upstream_id(self, upstream_id: str) -> MessageRecord | None:
        return await self._read(units.find_message_by_upstream_id, upstream_id)

    async def find_message_by_message_id(self, message_id: str) -> MessageRecord | None:
        return await self._read(units.find_message_by_message_id, message_id)

    async def find_latest_message_to(self, address: str, since: float) -> MessageRecord | None:
        return await self._read(units.find_latest_message_to, address, since)

    async def message_events(self, relay_id: str) -> list[BounceEvent]:
        return await self._read(units.message_events, relay_id)

    # -- the log as listed -------------------------------------------------------------------
    async def list_events(self, flt: EventFilter) -> list[EventEntry]:
        return await self._read(units.list_events, flt)

    async def list_messages(self, flt: MessageFilter) -> list[MessageRecord]:
        return await self._read(units.list_messages, flt)

    async def stats(self, since: float) -> LogStats:
        return await self._read(units.stats, since)

    async def identity_stats(self, since: float, identity: str | None = None) -> list[IdentityStats]:
        return await self._read(units.identity_stats, since, identity)

    async def metric_counts(self, now: float) -> MetricCounts:
        return await self._read(units.metric_counts, now)

    async def activity(self, since: float, bucket_seconds: int) -> list[dict]:
        """Counts per time bucket for the dashboard's charts (units.activity)."""
        if bucket_seconds < 1:
            raise StoreError("a bucket is at least one second")
        return await self._read(units.activity, since, bucket_seconds)

    # -- the suppression list ----------------------------------------------------------------
    def suppression_keys(self, chunk: int = 20_000) -> AsyncIterator[list[tuple[str, str]]]:
        """(scope, address) of every suppression, in chunks, so a million never sit in memory at once."""
        raise NotImplementedError

    async def suppression_seq(self) -> int:
        return await self._read(units.suppression_seq)

    async def suppressions_after(self, seq: int) -> list[tuple[str, str, int]]:
        return await self._read(units.suppressions_after, seq)

    async def get_suppression(self, scope: str, address: str) -> Suppression | None:
        return await self._read(units.get_suppression, scope, address)

    async def upsert_suppressions(self, rows: Iterable[Suppression]) -> None:
        await self._write(units.upsert_suppressions, list(rows), self.webhook_targets, time.time())
        self._queued()

    async def delete_suppression(self, scope: str, address: str) -> bool:
        removed = await self._write(units.delete_suppression, scope, address, self.webhook_targets, time.time())
        self._queued()
        return removed

    async def list_suppressions(self, flt: SuppressionFilter) -> list[Suppression]:
        return await self._read(units.list_suppressions, flt)

    async def soft_bounce_span(self, address: str, since: float, excluded_reasons: Iterable[str],
                               trusted_correlations: Iterable[str]) -> float | None:
        return await self._read(units.soft_bounce_span, address, since, tuple(excluded_reasons),
                                tuple(trusted_correlations))

    async def soft_bounces(self, address: str, since: float, excluded_reasons: Iterable[str],
                           trusted_correlations: Iterable[str]) -> list[SoftBounce]:
        return await self._read(units.soft_bounces, address, since, tuple(excluded_reasons),
                                tuple(trusted_correlations))

    async def event_id_for(self, event: BounceEvent) -> int | None:
        return await self._read(units.event_id_for, event)

    # -- the webhooks' outbox ---------------------------------------------------------------
    async def release_gone_leases(self, table: str, me: str) -> int:
        """At start: free the work that earlier processes on this host leased and never finished
        (proxy.leases.gone), instead of waiting for their leases to run out."""
        from proxy.leases import gone

        owners = [o for o in await self._read(units.lease_owners, table, time.time()) if gone(o, me)]
        return await self._write(units.release_leases, table, owners) if owners else 0

    async def claim_webhooks(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[OutboxEntry]:
        return await self._write(units.claim_webhooks, owner, now, lease_seconds, limit)

    async def webhook_delivered(self, entry_id: int, owner: str, at: float) -> bool:
        return await self._write(units.webhook_delivered, entry_id, owner, at)

    async def webhook_failed(self, entry_id: int, owner: str, error: str, next_at: float | None) -> bool:
        return await self._write(units.webhook_failed, entry_id, owner, error, next_at)

    async def list_webhooks(self, state: str | None = None, limit: int = 100) -> list[OutboxEntry]:
        return await self._read(units.list_webhooks, state, limit)

    async def retry_webhooks(self, ids: Sequence[int] | None = None) -> int:
        return await self._write(units.retry_webhooks, list(ids) if ids else None, time.time())

    async def webhook_counts(self) -> dict[str, tuple[int, float | None]]:
        return await self._read(units.webhook_counts)

    async def get_event(self, event_id: int) -> BounceEvent | None:
        return await self._read(units.get_event, event_id)

    # -- the reputation guard ----------------------------------------------------------------
    async def pause_identity(self, identity: str, at: float, why: str) -> None:
        await self._write(units.pause_identity, identity, at, why)

    async def resume_identity(self, identity: str) -> bool:
        return await self._write(units.resume_identity, identity)

    async def paused_identities(self) -> dict[str, str]:
        return await self._read(units.paused_identities)

    # -- moving a log between backends -------------------------------------------------------
    async def table_rows(self, table: str, after: tuple | None, limit: int) -> list[dict]:
        return await self._read(units.table_rows, _known(table), after, limit)

    async def insert_rows(self, table: str, rows: list[dict]) -> None:
        await self._write(units.insert_rows, _known(table), rows)

    async def count_rows(self, table: str) -> int:
        return await self._read(units.count_rows, _known(table))

    # -- the spool (spool mode) -------------------------------------------------------------
    async def spool_accept(self, message: MessageRecord, events: Iterable[BounceEvent], entry: SpoolEntry) -> None:
        """The message, its events and its spool rows in one transaction: durable before the client's 250."""
        await self._write(units.spool_accept, message, list(events), entry, self.webhook_targets, time.time())

    async def claim_spool(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[SpoolEntry]:
        return await self._write(units.claim_spool, owner, now, lease_seconds, limit)

    async def spool_attempt(self, entry: SpoolEntry, owner: str, message: MessageRecord,
                            events: Iterable[BounceEvent] = ()) -> bool:
        return await self._write(units.spool_attempt, entry, owner, message, list(events), self.webhook_targets,
                                 time.time())

    async def spool_unlease(self, relay_id: str, owner: str, next_at: float) -> bool:
        return await self._write(units.spool_unlease, relay_id, owner, next_at)

    async def list_spool(self, state: str | None = None, limit: int = 100) -> list[SpoolEntry]:
        return await self._read(units.list_spool, state, limit)

    async def get_spool(self, relay_id: str) -> SpoolEntry | None:
        rows = await self._read(units.list_spool, None, 1, relay_id)
        return rows[0] if rows else None

    async def spool_counts(self, now: float) -> SpoolCounts:
        return await self._read(units.spool_counts, now)

    async def spool_control(self, action: str, ids: Sequence[str] | None = None, why: str = "") -> int:
        if action not in ("retry", "hold", "release", "delete") or (action == "delete" and not ids):
            raise StoreError(f"no spool action {action!r}" if action != "delete" else "delete needs message ids")
        return await self._write(units.spool_control, action, list(ids) if ids else None, time.time(), why,
                                 self.webhook_targets)

    def _queued(self) -> None:
        if self.webhook_targets and self.on_queued is not None:
            self.on_queued()

    # -- for the drivers ---------------------------------------------------------------------
    def _refused(self, exc: BaseException, log) -> None:
        self.failed_batches += 1
        if self._failing_since is None:  # once per outage, not once per message
            self._failing_since = time.monotonic()
            log.error("store %s: writes failing (%s); clients get 451 4.3.0 until it recovers", self.url, exc)

    def _committed(self, log) -> None:
        self.commits += 1
        if self._failing_since is not None:
            log.warning("store %s: writable again after %.0fs (%d batches refused)", self.url,
                        time.monotonic() - self._failing_since, self.failed_batches)
            self._failing_since = None


def _known(table: str) -> str:
    if table not in units.TABLES:
        raise StoreError(f"no table {table!r} in the bounce log")
    return table


def _schema_version(d: Dialect):
    return (yield units.fetch("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version"))[0]["v"]
