"""The spool's units of work on both backends: accept, claim with a lease, attempts, operator actions."""
from __future__ import annotations

import asyncio
import time

from proxy.model import (
    BounceEvent, BounceType, Kind, MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, Source,
    SpoolEntry, SpoolRecipient, SpoolRecipientState, SpoolState, spool_status,
)
from proxy.store import units


def _message(relay_id: str, rcpts: list[str], now: float) -> MessageRecord:
    return MessageRecord(id=relay_id, created_at=now, sender="app@example.com", message_id=f"{relay_id}@test",
                         status=MessageStatus.QUEUED, size=10,
                         recipients=[RecipientRecord(a, RecipientStatus.QUEUED, "250 2.1.5 queued") for a in rcpts])


def _entry(relay_id: str, rcpts: list[str], now: float, next_at: float | None = None) -> SpoolEntry:
    return SpoolEntry(relay_id=relay_id, created_at=now, sender="bounce+x@bounces.test", mail_options=["BODY=8BITMIME"],
                      state=SpoolState.QUEUED, next_at=now if next_at is None else next_at, expires_at=now + 3600,
                      size=10, recipients=[SpoolRecipient(a, i) for i, a in enumerate(rcpts)], body=b"Subject: x\r\n\r\nhi\r\n")


async def _accept(store, relay_id: str, rcpts: list[str], now: float, next_at: float | None = None, events=()):
    await store.spool_accept(_message(relay_id, rcpts, now), list(events), _entry(relay_id, rcpts, now, next_at))


async def test_accept_is_one_unit_with_the_message(any_store):
    now = time.time()
    suppressed = BounceEvent(at=now, source=Source.SYNC, kind=Kind.BOUNCE, recipient="gone@example.org",
                             bounce_type=BounceType.HARD, reason="userunknown", relay_id="m1")
    await _accept(any_store, "m1", ["a@example.org", "b@example.org"], now, events=[suppressed])
    message = await any_store.get_message("m1")
    assert message.status == MessageStatus.QUEUED
    assert [r.status for r in message.recipients] == [RecipientStatus.QUEUED, RecipientStatus.QUEUED]
    assert [e.recipient for e in await any_store.message_events("m1")] == ["gone@example.org"]
    entry = await any_store.get_spool("m1")
    assert entry.body == b"Subject: x\r\n\r\nhi\r\n" and entry.mail_options == ["BODY=8BITMIME"]
    assert [r.address for r in entry.pending] == ["a@example.org", "b@example.org"]
    counts = await any_store.spool_counts(now + 1)
    assert (counts.queued, counts.held, counts.recipients, counts.due, counts.in_flight) == (1, 0, 2, 1, 0)
    assert counts.oldest_at == now


async def test_a_lease_keeps_other_claimers_off_until_it_expires(any_store):
    now = time.time()
    for i in range(5):
        await _accept(any_store, f"m{i}", [f"r{i}@example.org"], now)
    await _accept(any_store, "later", ["x@example.org"], now, next_at=now + 600)
    first, second = await asyncio.gather(any_store.claim_spool("one", now, 30, 3), any_store.claim_spool("two", now, 30, 3))
    ids = [e.relay_id for e in first + second]
    assert sorted(ids) == [f"m{i}" for i in range(5)]  # each once, the one not yet due left alone
    assert all(e.body and e.message and e.message.recipients for e in first + second)
    assert await any_store.claim_spool("three", now + 1, 30, 10) == []
    assert (await any_store.spool_counts(now + 1)).in_flight == 5
    again = await any_store.claim_spool("three", now + 31, 30, 10)  # a dead worker's leases run out
    assert sorted(e.relay_id for e in again) == [f"m{i}" for i in range(5)]


async def test_partial_attempt_keeps_only_the_pending_recipient(any_store):
    now = time.time()
    await _accept(any_store, "m1", ["a@example.org", "b@example.org", "c@example.org"], now)
    [entry] = await any_store.claim_spool("w", now, 30, 10)
    message = entry.message
    a, b, c = entry.recipients
    a.state, a.last_reply = SpoolRecipientState.SENT, "250 Ok id1"
    b.state, b.last_reply = SpoolRecipientState.BOUNCED, "550 5.1.1 unknown"
    c.last_reply = "451 4.3.0 try later"
    for r, (status, reply) in zip(message.recipients, [(RecipientStatus.ACCEPTED, "250 Ok id1"),
                                                        (RecipientStatus.REJECTED, "550 5.1.1 unknown"),
                                                        (RecipientStatus.QUEUED, "451 4.3.0 try later")]):
        r.status, r.reply = status, reply
    message.status = spool_status(message.recipients)
    entry.attempts, entry.next_at, entry.last_error = 1, now + 5, "451 4.3.0 try later"
    bounce = BounceEvent(at=now, source=Source.SYNC, kind=Kind.BOUNCE, recipient="b@example.org",
                         bounce_type=BounceType.HARD, reason="userunknown", relay_id="m1", smtp_code=550)
    assert await any_store.spool_attempt(entry, "w", message, [bounce]) is True
    assert message.status == MessageStatus.QUEUED
    left = await any_store.get_spool("m1")
    assert [r.address for r in left.pending] == ["c@example.org"] and left.lease_owner is None
    assert left.attempts == 1 and left.next_at == now + 5
    assert await any_store.claim_spool("w", now + 1, 30, 10) == []  # not due yet
    [entry] = await any_store.claim_spool("w", now + 6, 30, 10)
    entry.recipients[2].state = SpoolRecipientState.SENT
    entry.message.recipients[2].status = RecipientStatus.ACCEPTED
    entry.message.status = spool_status(entry.message.recipients)
    assert await any_store.spool_attempt(entry, "other", entry.message) is False  # not its lease: said so
    assert await any_store.get_spool("m1") is None  # nothing pending: the spool rows are gone
    final = await any_store.get_message("m1")
    assert final.status == MessageStatus.PARTIAL
    assert [r.status for r in final.recipients] == [RecipientStatus.ACCEPTED, RecipientStatus.REJECTED,
                                                    RecipientStatus.ACCEPTED]
    assert [e.recipient for e in await any_store.message_events("m1")] == ["b@example.org"]


async def test_operator_hold_release_retry_delete(any_store):
    now = time.time()
    await _accept(any_store, "m1", ["a@example.org"], now, next_at=now + 600)
    await _accept(any_store, "m2", ["b@example.org", "c@example.org"], now, next_at=now + 600)
    assert await any_store.spool_control("retry", ["m1"]) == 1
    assert [e.relay_id for e in await any_store.claim_spool("w", time.time(), 30, 10)] == ["m1"]
    assert await any_store.spool_control("hold", None, why="held by the operator") == 2  # a lease does not stop it
    assert await any_store.claim_spool("w", time.time() + 60, 30, 10) == []
    held = await any_store.list_spool("held")
    assert [e.relay_id for e in held] == ["m1", "m2"] and held[0].held_reason == "held by the operator"
    assert held[0].body is None  # listings leave the bodies out
    assert await any_store.spool_control("release", ["m2"]) == 1
    counts = await any_store.spool_counts(time.time() + 1)
    assert (counts.queued, counts.held) == (1, 1)
    assert await any_store.spool_control("delete", ["m2", "nope"]) == 1
    assert await any_store.get_spool("m2") is None
    gone = await any_store.get_message("m2")
    assert gone.status == MessageStatus.FAILED
    assert all(r.status == RecipientStatus.DEFERRED and "deleted" in r.reply for r in gone.recipients)
    assert await any_store.count_rows("spool") == 1 and await any_store.count_rows("spool_recipients") == 1


def test_spool_status_reads_the_recipients():
    def rr(*statuses):
        return [RecipientRecord(f"{i}@x", s, "550 5.1.1 no" if s == RecipientStatus.REJECTED else "")
                for i, s in enumerate(statuses)]
    A, Q, R, D = RecipientStatus.ACCEPTED, RecipientStatus.QUEUED, RecipientStatus.REJECTED, RecipientStatus.DEFERRED
    assert spool_status(rr(A, Q)) == MessageStatus.QUEUED
    assert spool_status(rr(A, A)) == MessageStatus.SENT
    assert spool_status(rr(A, R)) == MessageStatus.PARTIAL
    assert spool_status(rr(R, R)) == MessageStatus.REJECTED
    assert spool_status(rr(R, D)) == MessageStatus.FAILED
    assert "spool" in units.TABLES and "spool_recipients" in units.TABLES


async def test_queue_commands(tmp_path):
    """`bounceproxy queue list|show|hold|release|retry|delete` on a real SQLite log, through click."""
    from click.testing import CliRunner

    from proxy.config import load_config
    from proxy.spool.commands import queue
    from proxy.store import open_store

    path = tmp_path / "config.toml"
    path.write_text(f'[relay]\nmode = "spool"\n[store]\npath = "{tmp_path / "b.db"}"\n')
    store = await open_store(load_config(str(path)).store)
    now = time.time()
    await _accept(store, "m1", ["a@example.org", "b@example.org"], now, next_at=now + 600)
    await _accept(store, "m2", ["c@example.org"], now)
    await store.close()
    cli = CliRunner()

    def run(*args):
        result = await_in_thread(cli.invoke, queue, [*args, "-c", str(path)])
        return result

    def await_in_thread(fn, *a):
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(1) as ex:  # the commands run their own event loop
            return ex.submit(fn, *a).result()

    listed = run("list")
    assert listed.exit_code == 0 and "m1" in listed.output and "queued 2, held 0, recipients pending 3" in listed.output
    shown = run("show", "m1")
    assert "recipient    b@example.org pending" in shown.output
    assert run("show", "nope").exit_code == 1
    assert "1 message(s) held" in run("hold", "m1").output
    assert "1 message(s) released" in run("release", "--all").output
    assert "2 message(s) due now" in run("retry", "--all").output
    assert run("delete", "--all").exit_code == 2  # delete names its messages
    assert "1 message(s) deleted" in run("delete", "m2").output
    assert run("retry", "m2").exit_code == 1  # not in the spool any more: said so
    assert '"relay_id": "m1"' in run("list", "--json").output


async def test_queue_depth_and_age_in_stats_and_metrics(any_store):
    from proxy import queries
    from proxy.api.metrics import store_families

    now = time.time()
    await _accept(any_store, "q1", ["a@example.org", "b@example.org"], now - 60)
    await _accept(any_store, "q2", ["c@example.org"], now - 5)
    summary = await queries.stats_summary(any_store, now - 3600)
    assert summary["queue"]["queued"] == 2 and summary["queue"]["recipients"] == 3
    assert 59 <= summary["queue"]["oldest_age_seconds"] <= 120
    assert any(line.startswith("queue: 2 messages queued (3 recipients") for line in queries.stats_lines(summary))
    families = {f.name: f for f in store_families(await any_store.metric_counts(now), {},
                                                  await any_store.spool_counts(now))}
    assert {s.labels["state"]: s.value for s in families["bounceproxy_spool_messages"].samples} == {"queued": 2, "held": 0}
    assert families["bounceproxy_spool_oldest_timestamp_seconds"].samples[0].value == now - 60
