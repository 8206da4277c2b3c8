"""SQLite's in-flight journal (proxy/store/journal.py): a message going upstream is a synced line of its
process's journal, not a row, until its outcome is committed; the journal of a process that stopped is
read at the next start and what the log lacks becomes possibly_sent. Real files, real processes."""
from __future__ import annotations

import glob
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from proxy.model import MessageRecord, MessageStatus, RecipientRecord, RecipientStatus
from proxy.store import MessageFilter, store_for_url
from proxy.store.journal import entry_line, read_entries
from proxy.store.units import MESSAGE_COLUMNS, POSSIBLY_SENT_NOTE, message_row

A, R = RecipientStatus.ACCEPTED, RecipientStatus.REJECTED
ROOT = pathlib.Path(__file__).resolve().parent.parent


def in_flight(relay_id: str, *recipients: tuple[str, RecipientStatus], at: float | None = None) -> MessageRecord:
    return MessageRecord(id=relay_id, created_at=at or time.time() - 1, sender="app@shop.example",
                         message_id=f"{relay_id}@shop.example", verp_token=f"bounce+{relay_id}@bounces.example",
                         client_peer="127.0.0.1", recipients=[RecipientRecord(a, s) for a, s in recipients])


def journals(db: pathlib.Path) -> list[str]:
    return sorted(glob.glob(f"{db}-inflight-*"))


async def open_store(db: pathlib.Path):
    return await store_for_url(f"sqlite:///{db}").open()


@pytest.mark.parametrize("quiet", [True, False], ids=["synced-in-the-loop", "synced-by-the-syncer"])
async def test_a_message_in_flight_is_a_line_of_the_journal_on_disk_then_a_row_once_settled(tmp_path, quiet):
    db = tmp_path / "log.db"
    store = await open_store(db)
    store.quiet = lambda: quiet
    try:
        m = in_flight("m1", ("a@x.example", A), ("b@x.example", R))
        assert await store.record_in_flight(m) is False  # not a row of the log
        assert await store.list_messages(MessageFilter()) == []
        (path,) = journals(db)
        assert store._journal.synced == store._journal.appended == 1
        (entry,) = read_entries(pathlib.Path(path).read_bytes())
        row = dict(zip(MESSAGE_COLUMNS, entry.row))
        assert (row["id"], row["message_id"], row["verp_token"], row["status"]) == (
            "m1", "m1@shop.example", "bounce+m1@bounces.example", "pending")
        assert entry.recipients == [("a@x.example", "accepted"), ("b@x.example", "rejected")]
        m.status, m.upstream_reply = MessageStatus.PARTIAL, "250 2.0.0 Ok"
        await store.record_message(m, durable=False)
        got = await store.get_message("m1")
        assert got.status == MessageStatus.PARTIAL and [r.address for r in got.recipients] == ["a@x.example",
                                                                                             "b@x.example"]
        assert store._journal.open_lines == {}
    finally:
        await store.close()
    assert journals(db) == []  # every message settled: a clean stop leaves no journal


CRASH = textwrap.dedent("""
    import asyncio, os, sys, time
    sys.path.insert(0, {root!r})
    from proxy.model import MessageRecord, MessageStatus, RecipientRecord, RecipientStatus
    from proxy.store import store_for_url

    async def main():
        store = await store_for_url("sqlite:///" + {db!r}).open()
        store.quiet = lambda: False
        rcpt = lambda a: [RecipientRecord(a, RecipientStatus.ACCEPTED)]
        lost = MessageRecord(id="lost", created_at=time.time() - 5, sender="app@shop.example",
                             message_id="lost@shop.example", verp_token="bounce+lost@b.example",
                             recipients=rcpt("a@x.example"))
        done = MessageRecord(id="done", created_at=time.time() - 5, recipients=rcpt("b@x.example"))
        for m in (lost, done):
            await store.record_in_flight(m)
        done.status, done.upstream_reply = MessageStatus.SENT, "250 2.0.0 Ok"
        await store.record_message(done, durable=False)
        os._exit(0)  # killed: no close, the journal's lock goes with the process

    asyncio.run(main())
""")


async def test_the_journal_of_a_process_that_died_becomes_possibly_sent_rows_at_the_next_start(tmp_path):
    db = tmp_path / "log.db"
    await (await open_store(db)).close()  # the schema
    script = CRASH.format(root=str(ROOT), db=str(db))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert len(journals(db)) == 1
    store = await open_store(db)
    try:
        assert await store.mark_possibly_sent(before=time.time()) == 1
        lost = await store.get_message("lost")
        assert lost.status == MessageStatus.POSSIBLY_SENT and lost.upstream_reply == POSSIBLY_SENT_NOTE
        assert (lost.message_id, lost.verp_token, lost.sender) == ("lost@shop.example", "bounce+lost@b.example",
                                                                   "app@shop.example")
        assert [(r.address, r.status) for r in lost.recipients] == [("a@x.example", A)]
        assert (await store.get_message("done")).status == MessageStatus.SENT  # its outcome was committed
        assert journals(db) == []  # settled in the log: the orphan is gone
        assert await store.mark_possibly_sent(before=time.time()) == 0
    finally:
        await store.close()


async def test_a_torn_last_line_is_skipped_and_a_live_process_journal_is_left_alone(tmp_path):
    db = tmp_path / "log.db"
    live = await open_store(db)
    other = await open_store(db)  # a second instance (another relay worker) on the same file
    try:
        await live.record_in_flight(in_flight("live", ("a@x.example", A)))
        orphan = pathlib.Path(f"{db}-inflight-1-dead")
        whole = entry_line(message_row(in_flight("whole", ("c@x.example", A))), [("c@x.example", "accepted")])
        torn = entry_line(message_row(in_flight("torn", ("d@x.example", A))), [("d@x.example", "accepted")])
        orphan.write_bytes(whole + torn[:25])  # the crash cut the last write short: it was never synced
        assert await other.mark_possibly_sent(before=time.time()) == 1
        assert (await other.get_message("whole")).status == MessageStatus.POSSIBLY_SENT
        assert await other.get_message("torn") is None
        assert await other.get_message("live") is None  # its process holds the lock: still in flight
        assert not orphan.exists() and journals(db) == [live._journal.path]
    finally:
        await other.close()
        await live.close()
    assert len(journals(db)) == 1  # stopped with a message unsettled: its journal stays, synced
    again = await open_store(db)
    try:
        assert await again.mark_possibly_sent(before=time.time()) == 1
        assert (await again.get_message("live")).status == MessageStatus.POSSIBLY_SENT
    finally:
        await again.close()


async def test_a_large_journal_is_rotated_keeping_only_messages_still_in_flight(tmp_path):
    db = tmp_path / "log.db"
    store = await open_store(db)
    store.quiet = lambda: False
    try:
        await store.record_in_flight(in_flight("first", ("a@x.example", A)))
        first_file = store._journal.path
        for i in range(20):
            m = in_flight(f"m{i}", ("a@x.example", A))
            await store.record_in_flight(m)
            if i % 2:
                m.status = MessageStatus.SENT
                await store.record_message(m, durable=False)
        assert len(read_entries(pathlib.Path(first_file).read_bytes())) == 21
        store._journal.rotate_bytes = 2000  # the next line finds the journal large
        await store.record_in_flight(in_flight("last", ("a@x.example", A)))
        (path,) = journals(db)
        assert path != first_file and not os.path.exists(first_file)
        unsettled = {"first", "last"} | {f"m{i}" for i in range(0, 20, 2)}
        assert {e.row[0] for e in read_entries(pathlib.Path(path).read_bytes())} == unsettled
        assert set(store._journal.open_lines) == unsettled
        assert store._journal.synced == store._journal.appended
    finally:
        await store.close()
    again = await open_store(db)
    try:
        assert await again.mark_possibly_sent(before=time.time()) == 12  # the twelve unsettled
        assert (await again.get_message("m1")).status == MessageStatus.SENT
    finally:
        await again.close()


def test_read_entries_takes_only_whole_entry_lines():
    good = entry_line(("x", 1.0), [("a@b", "accepted")])
    data = b"\n".join([b"not json", json.dumps({"a": 1}).encode(), b"[[], []]"]) + b"\n" + good + b'[["y"'
    (entry,) = read_entries(data)
    assert entry.row == ["x", 1.0] and entry.recipients == [("a@b", "accepted")]
