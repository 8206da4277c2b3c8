"""The embedded SQLite bounce log: WAL, one writer thread, group commit, BEGIN IMMEDIATE.

Writers queue units of work and await the commit that contains them; the writer thread runs every
unit queued so far in one transaction (a failing unit is rolled back alone and fails only its
caller), so concurrent sessions share one fsync, and hands the outcomes back to the event loop in
one call. Reads go through aiosqlite on a second connection and never see a batch half-written.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosqlite

from proxy.store import units
from proxy.store.base import SqlStore
from proxy.store.dialect import SQLITE
from proxy.store.errors import StoreError
from proxy.store.migrations import MIGRATIONS

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Queued:
    unit: object  # a unit of proxy.store.units: made into its generator when the batch runs (maybe twice)
    args: tuple
    future: asyncio.Future
    durable: bool = True  # False: this unit alone would not wait for the disk (see Store.record_message)


class SqliteStore(SqlStore):
    """Store protocol on aiosqlite (see proxy.store.Store)."""

    dialect = SQLITE

    def __init__(self, path: str, commit_interval_ms: float = 0.0, busy_timeout_ms: int = 5000):
        super().__init__()
        self.path = path
        self.url = f"sqlite://{os.path.abspath(path)}"
        self.busy_timeout_ms = busy_timeout_ms
        self.commit_interval = commit_interval_ms / 1000.0
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()
        self._conn_lock = threading.Lock()  # the writer connection: the writer thread's, or _write_here's
        self._wakeup = threading.Event()
        self._writer: threading.Thread | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._durable = True  # the writer connection's synchronous setting is FULL
        self._running = False  # the writer thread is running a batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        # Set by the service: True while one session at most is open, when waiting for the disk in the
        # event loop's thread delays nobody and saves the two thread wake-ups of a queued commit.
        self.quiet: Callable[[], bool] | None = None

    # -- life cycle -------------------------------------------------------------------------
    async def open(self, readonly: bool = False) -> "SqliteStore":
        try:
            if readonly:
                self._db = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            else:
                self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if not readonly:
                await self._while_locked(lambda: self._db.execute("PRAGMA journal_mode = WAL"))
                await self._db.execute("PRAGMA synchronous = FULL")
                await self._db.execute("PRAGMA foreign_keys = OFF")
                await self._while_locked(self._migrate)
                self._reader = await aiosqlite.connect(self.path, isolation_level=None)
                await self._reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                self._start_writer()
            else:
                await self._check_schema()
        except sqlite3.Error as exc:
            await self._close_connections()
            raise StoreError(f"{self.path}: {exc}") from None
        except StoreError:
            await self._close_connections()
            raise
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
            writer, self._writer = self._writer, None
            await asyncio.get_running_loop().run_in_executor(None, writer.join)
            await asyncio.sleep(0)  # the last batch's outcomes, handed over by call_soon_threadsafe
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None
        for name in ("_reader", "_db"):
            conn = getattr(self, name)
            if conn is not None:
                setattr(self, name, None)
                await conn.close()

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
                for stmt in split_sql(SQLITE.render(sql)):
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
            rows = await self._db.execute_fetchall("SELECT MAX(version) FROM schema_version")
        except sqlite3.OperationalError:
            raise StoreError(f"{self.path}: not a bounceproxy database (run `bounceproxy serve` once to create it)") from None
        if (rows[0][0] or 0) < len(MIGRATIONS):
            raise StoreError(f"{self.path}: schema version {rows[0][0]} is older than this bounceproxy's "
                             f"{len(MIGRATIONS)}; run `bounceproxy migrate`")

    # -- units of work ----------------------------------------------------------------------
    async def _read(self, unit, *args):
        db = self._reader or self._db
        if db is None:
            raise StoreError("store is not open")
        try:
            return await db._execute(run_unit, db._conn, unit(SQLITE, *args))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    async def _write(self, unit, *args, durable: bool = True):
        """Queue a unit for the next group commit and wait until it is committed (and on disk, unless
        every unit of its batch said durable=False); returns its answer."""
        if self._writer is None or self._closing:
            raise StoreError("store is not open for writing")
        if not self._queue and (not durable or (self.quiet is not None and self.quiet())):
            done, value = self._write_here(unit, args, durable)
            if done:
                return value
        fut = self._loop.create_future()
        with self._queue_lock:
            self._queue.append(_Queued(unit, args, fut, durable))
        self._wakeup.set()
        return await fut

    def writing(self) -> bool:
        """Whether the writer thread has a batch to run or is running one (it then needs the GIL between
        its statements: proxy.relay.busypoll yields to it)."""
        return self._running or bool(self._queue)

    def suppression_keys(self, chunk: int = 20_000):
        return self._keys(chunk)

    async def _keys(self, chunk: int):
        db = self._reader or self._db
        assert db is not None
        async with db.execute("SELECT scope, address FROM suppressions") as cursor:
            while rows := await cursor.fetchmany(chunk):
                yield [(r[0], r[1]) for r in rows]

    def _write_here(self, unit, args: tuple, durable: bool = False) -> tuple[bool, object]:
        """Commit in the event loop's thread, when nothing is queued before the unit and the writer thread
        is idle: a unit that need not wait for the disk (about 35 us of work, where handing it to the
        thread and back cost ten times that in wake-ups), or any unit while `quiet` says the loop has
        nothing else to do (its fsync then delays nobody). Never waits for a lock held by another
        process: then (False, None), and the unit goes to the writer thread."""
        if not self._conn_lock.acquire(blocking=False):
            return False, None
        conn = self._write_conn
        try:
            self._sync(durable)
            try:
                [(ok, value)] = run_batch(conn, [(unit, args)], wait=0.0)
            finally:
                self._sync(True)  # as the writer thread expects it
        except _Locked:
            return False, None
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False, None
            self._refused(exc, log)
            raise StoreError(f"{self.path}: {exc}") from None
        except sqlite3.Error as exc:
            self._refused(exc, log)
            raise StoreError(f"{self.path}: {exc}") from None
        finally:
            self._conn_lock.release()
        self._committed(log)
        if not ok:
            raise StoreError(f"{self.path}: {value}") if isinstance(value, sqlite3.Error) else value
        return True, value

    def _start_writer(self) -> None:
        """The writer's own connection and thread (not aiosqlite's): a commit then costs one hand-over to
        the thread and one back, where an asyncio task driving aiosqlite's thread took two of each."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 0")  # waits for another process's write lock: _begin
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = OFF")
        except sqlite3.Error:
            conn.close()
            raise
        self._write_conn = conn
        self._durable = True
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_thread, name="store-writer", daemon=True)
        self._writer.start()

    def _write_thread(self) -> None:
        """Commit whatever is queued, in one transaction, until the store closes."""
        while True:
            self._wakeup.wait()
            if self.commit_interval and not self._closing:
                time.sleep(self.commit_interval)  # let concurrent sessions join this commit
            self._wakeup.clear()
            with self._queue_lock:
                batch, self._queue = self._queue, []
                self._running = bool(batch)
            if not batch:
                if self._closing:
                    return
                continue
            outcomes: list | None = None
            error: BaseException | None = None
            try:
                with self._conn_lock:
                    self._sync(True)  # FULL, as the loop's thread leaves it: no PRAGMA in the batch
                    outcomes = run_batch(self._write_conn, [(q.unit, q.args) for q in batch],
                                         wait=self.busy_timeout_ms / 1000.0)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                error = exc
            finally:
                self._running = False
            try:
                self._loop.call_soon_threadsafe(self._settle, batch, outcomes, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _sync(self, durable: bool) -> None:
        """FULL (the WAL synced at commit) or NORMAL. The connection is left FULL: the loop's thread sets
        NORMAL for a commit that need not wait for the disk and FULL again after it, so that the writer
        thread's batches run no PRAGMA (every statement it runs costs it a wait for the GIL)."""
        if durable != self._durable:
            self._write_conn.execute("PRAGMA synchronous = FULL" if durable else "PRAGMA synchronous = NORMAL")
            self._durable = durable

    def _settle(self, batch: list[_Queued], outcomes: list | None, error: BaseException | None) -> None:
        """In the event loop: each waiter gets its unit's answer, or the batch's error."""
        if error is not None:
            failure = StoreError(f"{self.path}: {error}")
            for q in batch:
                if not q.future.done():
                    q.future.set_exception(failure)
            self._refused(error, log)
            return
        self._committed(log)
        for q, (ok, value) in zip(batch, outcomes):
            if q.future.done():
                continue
            if ok:
                q.future.set_result(value)
            else:
                q.future.set_exception(StoreError(f"{self.path}: {value}") if isinstance(value, sqlite3.Error)
                                       else value)


def run_unit(conn: sqlite3.Connection, unit) -> object:
    """Drive a unit's statements on this connection; returns the unit's answer."""
    try:
        op = next(unit)
        while True:
            if op.kind == "fetch":
                cursor = conn.execute(op.sql, op.params)
                names = [c[0] for c in cursor.description or ()]
                result = [dict(zip(names, row)) for row in cursor.fetchall()]
            elif op.kind == "execute":
                result = conn.execute(op.sql, op.params).rowcount
            else:
                conn.executemany(op.sql, op.params)
                result = None
            op = unit.send(result)
    except StopIteration as stop:
        return stop.value


def run_batch(conn: sqlite3.Connection, batch: list[tuple], wait: float = 5.0) -> list[tuple[bool, object]]:
    """BEGIN IMMEDIATE, every unit, COMMIT; on the store's SQLite thread. Units rarely fail, so they first
    run side by side; when one does, the transaction is rolled back and the batch runs again with each
    unit in a savepoint of its own, so that the failing one is rolled back alone and its error returned in
    its place. A failure of the transaction itself raises."""
    _begin(conn, wait)
    try:
        return _transaction(conn, batch, isolated=False)
    except _UnitFailed:
        _begin(conn, wait)
        return _transaction(conn, batch, isolated=True)


def _coalesced(batch: list[tuple]) -> tuple[list[tuple], list[int] | None]:
    """The batch with each run of two or more consecutive plain record_message units made one
    record_messages unit (the order of every write kept: a run holds each message once, so its
    statements touch distinct rows), and how many original units each unit of the new batch stands for
    (None: the batch as it was)."""
    grouped: list[tuple] = []
    counts: list[int] = []
    run: list[tuple] = []  # (queued unit, its plain record) of the run under way
    ids: set[str] = set()  # the messages of the run under way

    def close_run() -> None:
        if len(run) > 1:
            grouped.append((units.record_messages, ([plain for _, plain in run],)))
            counts.append(len(run))
        else:
            grouped.extend(item for item, _ in run)
            counts.extend([1] * len(run))
        run.clear()
        ids.clear()

    for item in batch:
        plain = units.plain_record(*item)
        if plain is not None:
            if plain[0].id in ids:
                close_run()
            run.append((item, plain))
            ids.add(plain[0].id)
            continue
        close_run()
        grouped.append(item)
        counts.append(1)
    close_run()
    return (grouped, counts) if len(grouped) < len(batch) else (batch, None)


class _Locked(sqlite3.OperationalError):
    """Another process held the write lock for longer than this batch could wait."""


def _begin(conn: sqlite3.Connection, wait: float) -> None:
    """BEGIN IMMEDIATE, waiting up to `wait` seconds for another process's write lock in steps of
    0.1 to 1 ms. SQLite's own busy handler sleeps 1, 2, 5, 10 ms and more between tries, far longer
    than such a lock is held (one group commit): relay workers sharing a file waited on each other."""
    deadline = None
    pause = 0.0001
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" not in text and "busy" not in text:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + wait
            if now >= deadline:
                raise _Locked(text) from None
        time.sleep(pause)
        pause = min(pause * 2, 0.001)


class _UnitFailed(Exception):
    """A unit raised in a batch run without savepoints: run it again, isolated."""


def _transaction(conn: sqlite3.Connection, batch: list[tuple], isolated: bool) -> list[tuple[bool, object]]:
    """Every unit of the batch in the transaction _begin opened, then COMMIT (ROLLBACK on failure)."""
    outcomes: list[tuple[bool, object]] = []
    shape = None
    if not isolated:  # a unit that fails makes the batch run again isolated, each unit on its own
        batch, shape = _coalesced(batch)
    try:
        for unit, args in batch:
            if not isolated:
                try:
                    outcomes.append((True, run_unit(conn, unit(SQLITE, *args))))
                except sqlite3.OperationalError as exc:
                    if _whole_transaction(exc):
                        raise
                    raise _UnitFailed() from exc
                except Exception as exc:  # noqa: BLE001 - run again, isolated
                    raise _UnitFailed() from exc
                continue
            conn.execute("SAVEPOINT unit")
            try:
                outcomes.append((True, run_unit(conn, unit(SQLITE, *args))))
            except Exception as exc:  # noqa: BLE001 - handed to the unit's caller
                if isinstance(exc, sqlite3.OperationalError) and _whole_transaction(exc):
                    raise
                conn.execute("ROLLBACK TO unit")
                outcomes.append((False, exc))
            conn.execute("RELEASE unit")
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    if shape is not None:  # a record_messages unit's outcome is each of its records'
        outcomes = [outcome for outcome, count in zip(outcomes, shape) for _ in range(count)]
    return outcomes


def _whole_transaction(exc: sqlite3.OperationalError) -> bool:
    """Errors of the database, not of one unit: locked, full, read-only, I/O: every waiter hears of them."""
    text = str(exc).lower()
    return any(w in text for w in ("locked", "busy", "full", "readonly", "read-only", "disk i/o", "malformed"))


def split_sql(script: str) -> list[str]:
    """Split a migration into statements (our DDL has no semicolons inside strings)."""
    return [stmt.strip() for stmt in script.split(";") if stmt.strip()]


__all__ = ["SqliteStore", "StoreError", "units"]
