"""The embedded SQLite bounce log: WAL, one writer task, group commit, BEGIN IMMEDIATE.

Writers queue their statements and await the commit that contains them; the writer task runs
everything queued so far in one transaction, so concurrent sessions share one fsync.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiosqlite

from proxy.model import BounceEvent, MessageRecord, ParseState
from proxy.store.migrations import MIGRATIONS
from proxy.store.query import EventFilter, MessageFilter, duplicate_sql

log = logging.getLogger(__name__)

# (sql, params) or (sql, params, sink): a sink list receives the row id the statement inserted.
Statement = tuple

MESSAGE_COLUMNS = (
    "id created_at client_peer client_user sender header_from message_id subject upstream_id "
    "verp_token size status upstream_reply send_failure content_sha256"
).split()
EVENT_COLUMNS = (
    "at message_id recipient source kind bounce_type reason status status_source smtp_code "
    "diagnostic remote_mta reporting_mta correlation inbound_id evidence feedback_type parser_version "
    "smtp_command action decided_by"
).split()
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) VALUES ({', '.join('?' * len(MESSAGE_COLUMNS))}) "
    "ON CONFLICT(id) DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in MESSAGE_COLUMNS[1:])
)
_INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, address, status, reply) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(message_id, address) DO UPDATE SET status=excluded.status, reply=excluded.reply"
)
# An inbound mail's events are unique per recipient: a replay changes nothing, a reparse
# (new parser version) rewrites the verdict in place. Sync events have no inbound row.
_REPARSED = ("kind bounce_type reason status status_source smtp_code diagnostic remote_mta reporting_mta correlation "
             "message_id evidence feedback_type parser_version smtp_command action decided_by").split()
_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))}) "
    "ON CONFLICT(inbound_id, COALESCE(recipient, '')) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in _REPARSED)
)


_GROUPABLE = frozenset({_INSERT_MESSAGE, _INSERT_RECIPIENT, _INSERT_EVENT,
                        "INSERT OR REPLACE INTO outbox (message_id, raw) VALUES (?, ?)"})


POSSIBLY_SENT_NOTE = ("no final reply recorded: bounceproxy stopped while the message was going upstream, "
                      "which may have accepted it")


class StoreError(Exception):
    """The store could not do what was asked (disk full, locked, corrupt)."""


def message_row(m: MessageRecord) -> tuple:
    return tuple(getattr(m, c) for c in MESSAGE_COLUMNS)


def event_row(e: BounceEvent) -> tuple:
    return tuple(getattr(e, c) for c in EVENT_COLUMNS)


@dataclass
class _Batch:
    statements: list[Statement] = field(default_factory=list)
    waiters: list[asyncio.Future] = field(default_factory=list)


class SqliteStore:
    """Store protocol on aiosqlite (see proxy.store.Store)."""

    def __init__(self, path: str, commit_interval_ms: float = 0.0, busy_timeout_ms: int = 5000):
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._failing_since: float | None = None
        self.failed_batches = 0
        self.commit_interval = commit_interval_ms / 1000.0
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None  # reads never see a batch half-written
        self._queue: list[tuple[list[Statement], asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._closing = False
        self.commits = 0  # batches committed, for stats and benchmarks

    @property
    def failing(self) -> bool:
        """True from a refused write batch until the next one commits (`/healthz` reports it)."""
        return self._failing_since is not None

    # -- life cycle -------------------------------------------------------------------------
    async def open(self, readonly: bool = False) -> "SqliteStore":
        try:
            if readonly:
                self._db = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            else:
                self._db = await aiosqlite.connect(self.path, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            await self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if not readonly:
                await self._while_locked(lambda: self._db.execute("PRAGMA journal_mode = WAL"))
                await self._db.execute("PRAGMA synchronous = FULL")
                await self._db.execute("PRAGMA foreign_keys = OFF")
                await self._while_locked(self._migrate)
                self._reader = await aiosqlite.connect(self.path, isolation_level=None)
                self._reader.row_factory = sqlite3.Row
                await self._reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="store-writer")
            else:
                await self._check_schema()
        except sqlite3.Error as exc:
            if self._db is not None:
                await self._db.close()
                self._db = None
            raise StoreError(f"{self.path}: {exc}") from None
        return self

    async def _while_locked(self, step, attempts: int = 100) -> None:
        """Retry a start-up step that several processes (relay workers) may race for: switching a
        new database to WAL and migrating it take locks that SQLite's busy handler doesn't wait for."""
        for attempt in range(attempts):
            try:
                await step()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        """Apply the missing migrations; each step re-reads the version inside its own
        BEGIN IMMEDIATE, so several processes starting at once apply each step exactly once."""
        assert self._db is not None
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        for version, sql in enumerate(MIGRATIONS, start=1):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = await self._db.execute_fetchall("SELECT MAX(version) FROM schema_version")
                current = rows[0][0] or 0
                if current > len(MIGRATIONS):
                    raise StoreError(f"{self.path}: schema version {current} is newer than this bounceproxy "
                                     f"({len(MIGRATIONS)})")
                if current >= version:
                    await self._db.execute("COMMIT")
                    continue
                for stmt in _split_sql(sql):
                    await self._db.execute(stmt)
                await self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            log.info("store %s: applied migration %d", self.path, version)

    async def _check_schema(self) -> None:
        assert self._db is not None
        try:
            await self._db.execute_fetchall("SELECT MAX(version) FROM schema_version")
        except sqlite3.OperationalError:
            raise StoreError(f"{self.path}: not a bounceproxy database (run `bounceproxy serve` once to create it)") from None

    # -- the single writer ------------------------------------------------------------------
    async def _submit(self, statements: list[Statement]) -> None:
        """Queue statements for the next group commit and wait until they are durable."""
        if self._writer is None or self._closing:
            raise StoreError("store is not open for writing")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((statements, fut))
        self._wakeup.set()
        await fut

    async def _write_loop(self) -> None:
        assert self._db is not None
        while True:
            await self._wakeup.wait()
            if self.commit_interval and not self._closing:
                await asyncio.sleep(self.commit_interval)  # let concurrent sessions join this commit
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if not batch:
                if self._closing:
                    return
                continue
            try:
                await self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                error = StoreError(f"{self.path}: {exc}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(error)
                self.failed_batches += 1
                if self._failing_since is None:  # once per outage, not once per message
                    self._failing_since = time.monotonic()
                    log.error("store %s: writes failing (%s); clients get 451 4.3.0 until it recovers", self.path, exc)
            else:
                self.commits += 1
                if self._failing_since is not None:
                    log.warning("store %s: writable again after %.0fs (%d batches refused)", self.path,
                                time.monotonic() - self._failing_since, self.failed_batches)
                    self._failing_since = None
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def _commit(self, batch: list[tuple[list[Statement], asyncio.Future]]) -> None:
        db = self._db
        assert db is not None
        # The hot path's inserts (messages, recipients, events, outbox) go through one executemany per
        # statement for the whole batch; everything else runs after them, in the order it came.
        grouped: dict[str, list[Sequence]] = {}
        ordered: list[tuple[str, list[Sequence], list | None]] = []
        for statements, _ in batch:
            for sql, params, *sink in statements:
                if not sink and sql in _GROUPABLE:
                    grouped.setdefault(sql, []).append(params)
                elif not sink and ordered and ordered[-1][0] == sql and ordered[-1][2] is None:
                    ordered[-1][1].append(params)
                else:
                    ordered.append((sql, [params], sink[0] if sink else None))
        grouped_list = [(sql, rows, None) for sql, rows in grouped.items()] + ordered
        # One hop to aiosqlite's thread for the whole transaction, not one per statement: each hop costs the
        # event loop a wake-up, and the relay commits twice per message (in flight, then the outcome).
        await db._execute(_run_batch, db._conn, grouped_list)

    # -- writes -----------------------------------------------------------------------------
    async def record_message(self, message: MessageRecord, events: Iterable[BounceEvent] = (), raw: bytes | None = None,
                             recipients: bool = True) -> None:
        """Commit a message, its recipients (unless `recipients` is False: unchanged since its in-flight
        record) and its synchronous events in one transaction."""
        statements: list[Statement] = [(_INSERT_MESSAGE, message_row(message))]
        if recipients:
            statements += [
                (_INSERT_RECIPIENT, (message.id, r.address, r.status, r.reply)) for r in message.recipients
            ]
        statements += [(_INSERT_EVENT, event_row(e)) for e in events]
        if raw is not None:
            statements.append(("INSERT OR REPLACE INTO outbox (message_id, raw) VALUES (?, ?)", (message.id, raw)))
        await self._submit(statements)

    async def mark_possibly_sent(self, before: float) -> int:
        """At start: messages a previous run left in flight (`pending`, committed before their end of data
        went upstream) become `possibly_sent`; nobody will learn the upstream's answer now."""
        rows = await self._fetch("SELECT COUNT(*) AS n FROM messages WHERE status = 'pending' AND created_at < ?",
                                 (before,))
        if rows[0]["n"]:
            await self._submit([(
                "UPDATE messages SET status = 'possibly_sent', upstream_reply = CASE WHEN upstream_reply = '' "
                "THEN ? ELSE upstream_reply END WHERE status = 'pending' AND created_at < ?",
                (POSSIBLY_SENT_NOTE, before),
            )])
        return rows[0]["n"]

    async def store_inbound(self, peer: str, mail_from: str, rcpt_tos: list[str], raw: bytes) -> int:
        """Commit a received mail's raw bytes; returns its id. Called before the 250 is sent."""
        sha = hashlib.sha256(raw).hexdigest()
        row_id: list[int] = []
        await self._submit([(
            "INSERT INTO inbound (received_at, peer, mail_from, rcpt_tos, raw, sha256, state) "
            "VALUES (?, ?, ?, ?, ?, ?, 'pending')",
            (time.time(), peer, mail_from, json.dumps(rcpt_tos), raw, sha),
            row_id,
        )])
        return row_id[0]

    async def record_inbound_result(
        self, inbound_id: int, state: ParseState, parser_version: str | None, kind: str | None,
        fmt: str | None, error: str | None, events: Iterable[BounceEvent],
        foreign_recipients: int = 0, flag: str | None = None, truncated: str | None = None,
    ) -> None:
        statements: list[Statement] = [(_INSERT_EVENT, event_row(e)) for e in events]
        statements.append((
            "UPDATE inbound SET state=?, parser_version=?, kind=?, format=?, error=?, foreign_recipients=?, flag=?, "
            "truncated=? WHERE id=?",
            (state, parser_version, kind, fmt, error, foreign_recipients, flag, truncated, inbound_id),
        ))
        await self._submit(statements)

    async def update_events_verdicts(self, rows: list[tuple]) -> None:
        """Rewrite (reason, bounce_type, status, status_source, evidence, parser_version, decided_by) by event id."""
        await self._submit([(
            "UPDATE events SET reason=?, bounce_type=?, status=?, status_source=?, evidence=?, parser_version=?, "
            "decided_by=? WHERE id=?",
            row,
        ) for row in rows])

    # -- reads ------------------------------------------------------------------------------
    async def _fetch(self, sql: str, params: Sequence = ()) -> list[dict]:
        db = self._reader or self._db
        assert db is not None
        try:
            rows = await db.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        return [dict(r) for r in rows]

    async def events_to_reclassify(self) -> list[dict]:
        return await self._fetch("SELECT id, kind, recipient, status, status_source, smtp_code, diagnostic, smtp_command, action FROM events "
                                 "WHERE kind IN ('bounce', 'delay') ORDER BY id")

    async def get_message(self, message_id: str) -> dict | None:
        rows = await self._fetch("SELECT * FROM messages WHERE id = ?", (message_id,))
        return rows[0] if rows else None

    async def message_recipients(self, message_id: str) -> list[dict]:
        return await self._fetch("SELECT address, status, reply FROM recipients WHERE message_id = ? ORDER BY rowid", (message_id,))

    async def find_message_by_upstream_id(self, upstream_id: str) -> dict | None:
        rows = await self._fetch("SELECT * FROM messages WHERE upstream_id = ? ORDER BY created_at DESC LIMIT 1", (upstream_id,))
        return rows[0] if rows else None

    async def find_message_by_message_id(self, message_id: str) -> dict | None:
        rows = await self._fetch("SELECT * FROM messages WHERE message_id = ? ORDER BY created_at DESC LIMIT 1", (message_id,))
        return rows[0] if rows else None

    async def find_latest_message_to(self, address: str, since: float) -> dict | None:
        rows = await self._fetch(
            "SELECT m.* FROM recipients r JOIN messages m ON m.id = r.message_id "
            "WHERE r.address = ? COLLATE NOCASE AND m.created_at >= ? ORDER BY m.created_at DESC LIMIT 1",
            (address, since),
        )
        return rows[0] if rows else None

    async def list_messages(self, flt: MessageFilter) -> list[dict]:
        where, params = flt.where()
        return await self._fetch(
            "SELECT m.*, (SELECT COUNT(*) FROM recipients r WHERE r.message_id = m.id) AS recipient_count, "
            "(SELECT group_concat(address, ',') FROM recipients r WHERE r.message_id = m.id) AS recipients, "
            f"{duplicate_sql()} AS duplicate "
            f"FROM messages m {where} ORDER BY m.created_at DESC LIMIT ?",
            (*params, flt.limit),
        )

    async def list_events(self, flt: EventFilter) -> list[dict]:
        where, params = flt.where()
        return await self._fetch(
            "SELECT e.*, m.sender AS message_sender, m.message_id AS message_header_id, m.upstream_id, m.subject "
            f"FROM events e LEFT JOIN messages m ON m.id = e.message_id {where} ORDER BY e.at DESC, e.id DESC LIMIT ?",
            (*params, flt.limit),
        )

    async def message_events(self, message_id: str) -> list[dict]:
        return await self._fetch("SELECT * FROM events WHERE message_id = ? ORDER BY at, id", (message_id,))

    async def stats(self, since: float) -> dict:
        msgs = await self._fetch(
            "SELECT status, COUNT(*) AS n FROM messages WHERE created_at >= ? GROUP BY status", (since,)
        )
        rcpts = await self._fetch(
            "SELECT COUNT(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id WHERE m.created_at >= ?",
            (since,),
        )
        events = await self._fetch(
            "SELECT source, kind, bounce_type, reason, COUNT(*) AS n FROM events WHERE at >= ? "
            "AND correlation != 'foreign_recipient' "  # addresses never sent to are no bounce rate of ours
            "GROUP BY source, kind, bounce_type, reason ORDER BY n DESC",
            (since,),
        )
        correlations = await self._fetch(
            "SELECT correlation, COUNT(*) AS n FROM events WHERE at >= ? AND source = 'async' GROUP BY correlation",
            (since,),
        )
        duplicates = await self._fetch(
            f"SELECT COUNT(*) AS n FROM messages m WHERE m.created_at >= ? AND {duplicate_sql(earlier_only=True)}",
            (since,),
        )
        return {
            "messages": {r["status"]: r["n"] for r in msgs},
            "recipients": rcpts[0]["n"] if rcpts else 0,
            "events": events,
            "correlations": {r["correlation"]: r["n"] for r in correlations},  # of late reports
            "duplicates": duplicates[0]["n"],  # messages repeating an earlier one that went out (same Message-ID)
        }

    async def list_inbound(self, state: str | None, since: float | None, limit: int, flagged: bool = False) -> list[dict]:
        clauses, params = [], []
        if flagged:  # named addresses its message never went to, or cut by a parse limit
            clauses.append("(flag IS NOT NULL OR truncated IS NOT NULL)")
        if state:
            clauses.append("state = ?")
            params.append(state)
        if since is not None:
            clauses.append("received_at >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._fetch(
            "SELECT id, received_at, peer, mail_from, rcpt_tos, length(raw) AS size, sha256, state, "
            f"parser_version, kind, format, error, foreign_recipients, flag, truncated FROM inbound {where} "
            "ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )

    async def get_inbound(self, inbound_id: int) -> dict | None:
        rows = await self._fetch("SELECT * FROM inbound WHERE id = ?", (inbound_id,))
        return rows[0] if rows else None

    async def first_inbound_with_sha(self, sha256: str) -> int:
        rows = await self._fetch("SELECT MIN(id) AS id FROM inbound WHERE sha256 = ?", (sha256,))
        return rows[0]["id"]

    async def inbound_ids(self, states: Sequence[str] | None = None) -> list[int]:
        if states:
            marks = ", ".join("?" * len(states))
            rows = await self._fetch(f"SELECT id FROM inbound WHERE state IN ({marks}) ORDER BY id", tuple(states))
        else:
            rows = await self._fetch("SELECT id FROM inbound ORDER BY id")
        return [r["id"] for r in rows]

    # -- suppression list and reputation (proxy.suppression) ---------------------------------------
    async def suppression_keys(self, chunk: int = 20_000):
        """(scope, address) of every suppression, in chunks, so a million never sit in memory at once."""
        db = self._reader or self._db
        assert db is not None
        async with db.execute("SELECT scope, address FROM suppressions") as cursor:
            while rows := await cursor.fetchmany(chunk):
                yield [(r[0], r[1]) for r in rows]

    async def suppression_seq(self) -> int:
        rows = await self._fetch("SELECT COALESCE(MAX(seq), 0) AS seq FROM suppressions")
        return rows[0]["seq"]

    async def suppressions_after(self, seq: int) -> list[tuple[str, str, int]]:
        rows = await self._fetch("SELECT scope, address, seq FROM suppressions WHERE seq > ? ORDER BY seq", (seq,))
        return [(r["scope"], r["address"], r["seq"]) for r in rows]

    async def get_suppression(self, scope: str, address: str) -> dict | None:
        rows = await self._fetch("SELECT * FROM suppressions WHERE scope = ? AND address = ?", (scope, address))
        return rows[0] if rows else None

    async def upsert_suppressions(self, rows: list[tuple]) -> None:
        """(scope, address, reason, kind, source_event, created_at, expires_at) rows; a later entry wins."""
        await self._submit([(
            "INSERT INTO suppressions (scope, address, reason, kind, source_event, created_at, expires_at, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM suppressions)) "
            "ON CONFLICT(scope, address) DO UPDATE SET reason=excluded.reason, kind=excluded.kind, "
            "source_event=excluded.source_event, created_at=excluded.created_at, expires_at=excluded.expires_at, "
            "seq=excluded.seq",
            row,
        ) for row in rows])

    async def upsert_suppression(self, scope, address, reason, kind, source_event, created_at, expires_at) -> None:
        await self.upsert_suppressions([(scope, address, reason, kind, source_event, created_at, expires_at)])

    async def delete_suppression(self, scope: str, address: str) -> bool:
        found = await self.get_suppression(scope, address)
        await self._submit([("DELETE FROM suppressions WHERE scope = ? AND address = ?", (scope, address))])
        return found is not None

    async def list_suppressions(self, address: str | None, scope: str | None, limit: int | None) -> list[dict]:
        clauses, params = [], []
        if address:
            clauses.append("address = ?")
            params.append(address)
        if scope is not None:
            clauses.append("scope = ?")
            params.append(scope)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        limit_sql = "LIMIT ?" if limit else ""
        return await self._fetch(f"SELECT * FROM suppressions {where} ORDER BY created_at DESC {limit_sql}",
                                 (*params, *([limit] if limit else [])))

    @staticmethod
    def _soft_where(address: str, since: float, excluded_reasons, trusted_correlations) -> tuple[str, tuple]:
        """Soft bounces that may count against the address: since `since` and its last delivery, and
        only those that could act (synchronous, or correlated by trusted evidence)."""
        excluded = sorted(excluded_reasons)
        trusted = sorted(trusted_correlations)
        return (
            "e.recipient = ? COLLATE NOCASE AND e.kind = 'bounce' AND e.bounce_type = 'soft' "
            f"AND e.reason NOT IN ({', '.join('?' * len(excluded))}) "
            f"AND (e.source = 'sync' OR e.correlation IN ({', '.join('?' * len(trusted)) or 'NULL'})) "
            "AND e.at >= MAX(?, COALESCE((SELECT MAX(at) FROM events WHERE recipient = ? COLLATE NOCASE "
            "AND kind = 'delivered'), 0))",
            (address, *excluded, *trusted, since, address),
        )

    async def soft_bounce_span(self, address: str, since: float, excluded_reasons, trusted_correlations) -> float | None:
        """Seconds from the first to the last of those soft bounces (None: there are none)."""
        where, params = self._soft_where(address, since, excluded_reasons, trusted_correlations)
        rows = await self._fetch(f"SELECT MAX(e.at) - MIN(e.at) AS span FROM events e WHERE {where}", params)
        return rows[0]["span"]

    async def soft_bounces(self, address: str, since: float, excluded_reasons, trusted_correlations) -> list[dict]:
        """Those soft bounces, oldest first, each with what ties an MTA's retries of one message
        together (proxy.suppression.Policy.soft_count)."""
        where, params = self._soft_where(address, since, excluded_reasons, trusted_correlations)
        return await self._fetch(
            "SELECT e.at, e.message_id AS relay_id, m.message_id AS header_id, m.content_sha256, m.verp_token "
            f"FROM events e LEFT JOIN messages m ON m.id = e.message_id WHERE {where} ORDER BY e.at, e.id",
            params,
        )

    async def event_id_for(self, event: BounceEvent) -> int | None:
        if event.inbound_id is not None:
            rows = await self._fetch("SELECT id FROM events WHERE inbound_id = ? AND COALESCE(recipient, '') = ?",
                                     (event.inbound_id, event.recipient or ""))
        else:
            rows = await self._fetch(
                "SELECT id FROM events WHERE message_id IS ? AND recipient = ? AND source = ? ORDER BY id DESC LIMIT 1",
                (event.message_id, event.recipient, event.source))
        return rows[0]["id"] if rows else None

    async def identity_stats(self, since: float, identity: str | None = None) -> list[dict]:
        """Per sending identity (sender domain), or for one: recipients, hard bounces, complaints of
        the messages sent since `since`."""
        only = "WHERE identity = ?" if identity else ""
        return await self._fetch(
            "WITH m AS (SELECT * FROM (SELECT id, lower(substr(sender, instr(sender, '@') + 1)) AS identity "
            f"FROM messages WHERE created_at >= ?) {only}), "
            "r AS (SELECT m.identity, COUNT(*) AS n FROM recipients JOIN m ON m.id = recipients.message_id "
            "GROUP BY m.identity), "
            "e AS (SELECT m.identity, SUM(kind = 'bounce' AND bounce_type = 'hard') AS hard, "
            "SUM(kind = 'complaint') AS complaints FROM events JOIN m ON m.id = events.message_id "
            "WHERE events.correlation != 'foreign_recipient' GROUP BY m.identity) "  # never counts against a sender
            "SELECT r.identity, r.n AS recipients, COALESCE(e.hard, 0) AS hard_bounces, "
            "COALESCE(e.complaints, 0) AS complaints FROM r LEFT JOIN e USING (identity) ORDER BY recipients DESC",
            (since, identity) if identity else (since,),
        )

    async def pause_identity(self, identity: str, at: float, why: str) -> None:
        await self._submit([("INSERT OR REPLACE INTO paused_identities (identity, paused_at, why) VALUES (?, ?, ?)",
                             (identity, at, why))])

    async def resume_identity(self, identity: str) -> bool:
        rows = await self._fetch("SELECT 1 FROM paused_identities WHERE identity = ?", (identity,))
        await self._submit([("DELETE FROM paused_identities WHERE identity = ?", (identity,))])
        return bool(rows)

    async def paused_identities(self) -> dict[str, str]:
        return {r["identity"]: r["why"] for r in await self._fetch("SELECT identity, why FROM paused_identities")}

    async def outbox_raw(self, message_id: str) -> bytes | None:
        rows = await self._fetch("SELECT raw FROM outbox WHERE message_id = ?", (message_id,))
        return rows[0]["raw"] if rows else None


def _run_batch(conn: sqlite3.Connection, grouped_list: list[tuple[str, list[Sequence], list | None]]) -> None:
    """BEGIN IMMEDIATE, the batch, COMMIT (ROLLBACK on any failure), on the store's SQLite thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows, sink in grouped_list:
            if len(rows) == 1:
                cursor = conn.execute(sql, rows[0])
                if sink is not None:
                    sink.append(cursor.lastrowid)
            else:
                conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (our DDL has no semicolons inside strings)."""
    return [stmt.strip() for stmt in script.split(";") if stmt.strip()]
