"""`bounceproxy copy`: move a whole bounce log from one store to another (SQLite <-> PostgreSQL).

Every table in `units.TABLES` order (what a row refers to comes first), in pages by key: read a page
after the last key copied (`table_rows`), insert it (`insert_rows` leaves rows already there alone, so
a second run adds nothing), until a page comes back short. Then the row counts of both sides are
compared table by table. Only the Store protocol is used: any backend to any backend.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.store import Store, StoreError, store_for_url
from proxy.store.units import TABLES


@dataclass(slots=True)
class TableCopy:
    table: str
    source: int  # rows in the source
    destination: int  # rows in the destination after the copy
    copied: int  # rows the copy added to the destination

    def line(self) -> str:
        return f"{self.table}: {self.source} in source, {self.destination} in destination, {self.copied} copied"

    @property
    def complete(self) -> bool:
        return self.destination >= self.source


async def copy_tables(source: Store, destination: Store, batch: int = 1000,
                      progress: Callable[[str, int], None] | None = None) -> list[TableCopy]:
    """Copy every table of `source` into `destination` (both open); one TableCopy per table."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    result = []
    for table, key in TABLES.items():
        before = await destination.count_rows(table)
        after: tuple | None = None
        read = 0
        while True:
            rows = await source.table_rows(table, after, batch)
            if not rows:
                break
            await destination.insert_rows(table, rows)
            read += len(rows)
            if progress is not None:
                progress(table, read)
            if len(rows) < batch:
                break
            after = tuple(rows[-1][k] for k in key)
        in_source = await source.count_rows(table)
        in_destination = await destination.count_rows(table)
        result.append(TableCopy(table, in_source, in_destination, in_destination - before))
    return result


async def copy_store(source_url: str, destination_url: str, batch: int = 1000, source_password: str | None = None,
                     password: str | None = None,
                     progress: Callable[[str, int], None] | None = None) -> list[TableCopy]:
    """Open both stores by URL (the source read-only, the destination created or migrated), copy, close."""
    if source_url.startswith("sqlite:"):
        path = source_url.split("://", 1)[-1]
        path = path[1:] if path.startswith("//") else path
        if path and not Path(path).exists():
            raise StoreError(f"{source_url}: no such file")
    source = store_for_url(source_url, password=source_password)
    destination = store_for_url(destination_url, password=password)
    if source.url and source.url == destination.url:
        raise StoreError(f"{source.url}: the source and the destination are the same store")
    await source.open(readonly=True)
    try:
        await destination.open()
        try:
            return await copy_tables(source, destination, batch, progress)
        finally:
            await destination.close()
    finally:
        await source.close()
