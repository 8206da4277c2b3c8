"""The bounce log on PostgreSQL (asyncpg), for several bounceproxy instances sharing one log.

Each unit of work (proxy.store.units) runs in one transaction on a pooled connection; PostgreSQL's
own concurrency replaces SQLite's single writer. Writers that must be ordered across instances
(suppressions: seq order is commit order; inbound verdicts: a DSN that reached two bounce MXs
records once) take a transaction-scoped advisory lock. Migrations run under a session advisory
lock, so instances starting together apply each step once.
"""
from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import urlsplit, urlunsplit

from proxy.store.base import SqlStore
from proxy.store.dialect import POSTGRES, numbered
from proxy.store.errors import StoreError
from proxy.store.migrations import MIGRATIONS

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 7_201_000
_RETRIES = 5  # a unit is a function of the database, so a serialization failure or deadlock reruns it


def redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PostgresStore(SqlStore):
    """Store protocol on asyncpg (see proxy.store.Store)."""

    dialect = POSTGRES

    def __init__(self, url: str, password: str | None = None, pool_size: int = 10, connect_timeout: float = 10.0):
        super().__init__()
        if urlsplit(url).password is not None:
            raise StoreError(f"{redact(url)}: the password belongs in the environment variable named by "
                             "[store] password_env, not in the URL")
        self.url = url
        self._password = password
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool = None
        self._readonly = False

    async def open(self, readonly: bool = False) -> "PostgresStore":
        import asyncpg

        self._readonly = readonly
        try:
            self._pool = await asyncpg.create_pool(
                dsn=self.url, password=self._password, min_size=1, max_size=self.pool_size,
                timeout=self.connect_timeout, command_timeout=60, reset=_reset)
            if readonly:
                await self._check_schema()
            else:
                await self._migrate()
        except StoreError:
            await self.close()
            raise
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"{self.url}: {_said(exc)}") from None
        return self

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (asyncio.TimeoutError, OSError):
                pool.terminate()

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                if current > len(MIGRATIONS):
                    raise StoreError(f"{self.url}: schema version {current} is newer than this bounceproxy "
                                     f"({len(MIGRATIONS)})")
                for version, sql in enumerate(MIGRATIONS, start=1):
                    if version <= current:
                        continue
                    async with conn.transaction():
                        await conn.execute(POSTGRES.render(sql))
                        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
                    log.info("store %s: applied migration %d", self.url, version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    async def _check_schema(self) -> None:
        import asyncpg

        try:
            current = await self._pool.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        except asyncpg.UndefinedTableError:
            raise StoreError(f"{self.url}: not a bounceproxy database (run `bounceproxy migrate`)") from None
        if current < len(MIGRATIONS):
            raise StoreError(f"{self.url}: schema version {current} is older than this bounceproxy's "
                             f"{len(MIGRATIONS)}; run `bounceproxy migrate`")

    # -- units of work ----------------------------------------------------------------------
    async def _read(self, unit, *args):
        import asyncpg

        if self._pool is None:
            raise StoreError("store is not open")
        try:
            async with self._pool.acquire() as conn:
                # each statement sees what was committed when it ran: the same as SQLite's reader connection,
                # and no BEGIN/COMMIT round trips on the relay's lookups
                return await run_unit(conn, unit(POSTGRES, *args))
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"{self.url}: {_said(exc)}") from None

    async def _write(self, unit, *args, durable: bool = True):
        import asyncpg

        if self._pool is None or self._readonly:
            raise StoreError("store is not open for writing")
        for attempt in range(_RETRIES):
            try:
                async with self._pool.acquire() as conn:
                    async with conn.transaction():
                        if not durable:  # committed without waiting for the WAL flush (this transaction only)
                            await conn.execute("SET LOCAL synchronous_commit TO OFF")
                        value = await run_unit(conn, unit(POSTGRES, *args))
            except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError):
                if attempt == _RETRIES - 1:
                    raise StoreError(f"{self.url}: gave up after {_RETRIES} conflicting attempts") from None
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                raise StoreError(f"{self.url}: {_said(exc)}") from None  # this unit's own fault, not an outage
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._refused(exc, log)
                raise StoreError(f"{self.url}: {_said(exc)}") from None
            self._committed(log)
            return value

    def suppression_keys(self, chunk: int = 20_000):
        return self._keys(chunk)

    async def _keys(self, chunk: int):
        async with self._pool.acquire() as conn:
            async with conn.transaction(readonly=True):
                cursor = await conn.cursor("SELECT scope, address FROM suppressions")
                while rows := await cursor.fetch(chunk):
                    yield [(r[0], r[1]) for r in rows]


async def _reset(conn) -> None:
    """Before a connection goes back to the pool. Units leave no session state behind (no LISTEN, no
    SET, session locks released by their taker), so asyncpg's full reset, a round trip and a transaction
    on every release, buys nothing; a transaction left open by a cancelled unit is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def run_unit(conn, unit) -> object:
    """Drive a unit's statements on this connection; returns the unit's answer."""
    try:
        op = next(unit)
        while True:
            sql = numbered(op.sql)
            if op.kind == "fetch":
                result = [dict(r) for r in await conn.fetch(sql, *op.params)]
            elif op.kind == "execute":
                result = _rowcount(await conn.execute(sql, *op.params))
            else:
                await conn.executemany(sql, op.params)
                result = None
            op = unit.send(result)
    except StopIteration as stop:
        return stop.value


_COUNT = re.compile(r"(\d+)$")


def _rowcount(status: str) -> int:
    """`UPDATE 3`, `DELETE 0`, `INSERT 0 1` -> rows changed."""
    m = _COUNT.search(status or "")
    return int(m.group(1)) if m else 0


def _said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
