"""The PostgreSQL test fixtures (tests/pg.py): a real server, one fresh database per test."""
from __future__ import annotations

import asyncpg

from tests.pg import SUPERUSER


async def test_pg_url_is_a_working_empty_database(pg_server, pg_url):
    assert pg_url.startswith(f"postgresql://{SUPERUSER}@127.0.0.1:{pg_server.port}/")
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        await conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)")
        await conn.executemany("INSERT INTO t VALUES ($1, $2)", [(1, "é"), (2, "two")])
        assert [tuple(r) for r in await conn.fetch("SELECT id, note FROM t ORDER BY id")] == [(1, "é"), (2, "two")]
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
        assert await conn.fetchval("SHOW fsync") == "off"  # the test server trades durability for speed
    finally:
        await conn.close()


async def test_two_databases_are_distinct(pg_server, pg_url):
    other = await pg_server.create_database()
    assert other != pg_url
    a, b = await asyncpg.connect(pg_url), await asyncpg.connect(other)
    try:
        await a.execute("CREATE TABLE only_in_a (x int)")
        assert await a.fetchval("SELECT to_regclass('only_in_a') IS NOT NULL")
        assert not await b.fetchval("SELECT to_regclass('only_in_a') IS NOT NULL")
        assert await a.fetchval("SELECT current_database()") != await b.fetchval("SELECT current_database()")
    finally:
        await a.close()
        await b.close()
        await pg_server.drop_database(other.rsplit("/", 1)[1])


def test_pg_url_works_from_a_sync_test(pg_url):
    import asyncio

    async def roundtrip():
        conn = await asyncpg.connect(pg_url)
        try:
            return await conn.fetchval("SELECT 40 + 2")
        finally:
            await conn.close()

    assert asyncio.run(roundtrip()) == 42
