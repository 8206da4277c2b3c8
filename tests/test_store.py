"""The Store protocol on both backends: every test runs on a real SQLite file and on a real PostgreSQL
(tests/pg.py), through the protocol only, and asserts the same answers."""
from __future__ import annotations

import asyncio
import time

import pytest

from proxy.model import (
    BounceEvent, BounceType, Correlation, InboundResult, Kind, MessageRecord, MessageStatus, ParseState,
    RecipientRecord, RecipientStatus, Source, StatusSource, Suppression,
)
from proxy.store import EventFilter, InboundFilter, MessageFilter, StoreError, SuppressionFilter, store_for_url

NOW = time.time()


def message(relay_id: str, *recipients: tuple[str, RecipientStatus], at: float = NOW, sender: str = "app@Shop.example",
            status: MessageStatus = MessageStatus.SENT, message_id: str | None = None) -> MessageRecord:
    return MessageRecord(id=relay_id, created_at=at, sender=sender, message_id=message_id or f"{relay_id}@shop.example",
                         status=status, upstream_id=f"up-{relay_id}", client_peer="127.0.0.1:5000",
                         recipients=[RecipientRecord(a, s, "250 ok" if s == RecipientStatus.ACCEPTED else "550 5.1.1 gone")
                                     for a, s in recipients])


def bounce(recipient: str, relay_id: str | None, *, source=Source.SYNC, bounce_type=BounceType.HARD,
           reason="userunknown", at: float = NOW, inbound_id: int | None = None, kind=Kind.BOUNCE,
           correlation=Correlation.NONE) -> BounceEvent:
    return BounceEvent(at=at, source=source, kind=kind, recipient=recipient, bounce_type=bounce_type, reason=reason,
                       status="5.1.1", status_source=StatusSource.DSN, smtp_code=550, diagnostic="user unknown",
                       relay_id=relay_id, inbound_id=inbound_id, correlation=correlation, smtp_command="RCPT")


A, R = RecipientStatus.ACCEPTED, RecipientStatus.REJECTED


async def second(store, tmp_path):
    """Another Store on the same log, as a second bounceproxy instance would open it."""
    url = store.url
    other = store_for_url(url)
    return await other.open()


async def test_message_round_trip_keeps_recipients_in_order(any_store):
    m = message("m1", ("zed@b.example", A), ("Amy@b.example", R), ("mid@b.example", A))
    await any_store.record_message(m, [bounce("Amy@b.example", "m1")])
    got = await any_store.get_message("m1")
    assert got.sender == "app@Shop.example" and got.status == MessageStatus.SENT and got.upstream_id == "up-m1"
    assert [(r.address, r.status) for r in got.recipients] == [("zed@b.example", A), ("Amy@b.example", R),
                                                               ("mid@b.example", A)]
    # the outcome rewrites the in-flight record in place, recipients too
    m.status, m.recipients[1].status = MessageStatus.PARTIAL, RecipientStatus.DEFERRED
    await any_store.record_message(m)
    got = await any_store.get_message("m1")
    assert got.status == MessageStatus.PARTIAL and got.recipients[1].status == RecipientStatus.DEFERRED
    [event] = await any_store.message_events("m1")
    assert (event.relay_id, event.recipient, event.reason, event.bounce_type, event.smtp_command) == (
        "m1", "Amy@b.example", "userunknown", BounceType.HARD, "RCPT")
    assert await any_store.get_message("nope") is None


async def test_lookups_by_evidence_and_address_ignore_case(any_store):
    await any_store.record_message(message("old", ("Ann@B.example", A), at=NOW - 100))
    await any_store.record_message(message("new", ("ann@b.example", A), at=NOW - 10))
    assert (await any_store.find_message_by_upstream_id("up-old")).id == "old"
    assert (await any_store.find_message_by_message_id("new@shop.example")).id == "new"
    assert (await any_store.find_latest_message_to("ANN@b.EXAMPLE", NOW - 1000)).id == "new"
    assert (await any_store.find_latest_message_to("ann@b.example", NOW - 50)).id == "new"
    assert await any_store.find_latest_message_to("ann@b.example", NOW) is None
    listed = await any_store.list_messages(MessageFilter(recipient="ANN@B.EXAMPLE"))
    assert [m.id for m in listed] == ["new", "old"]
    assert [m.id for m in await any_store.list_messages(MessageFilter(sender="APP@shop.example", limit=1))] == ["new"]


async def test_inbound_events_record_once_and_reparse_in_place(any_store):
    raw = b"From: MAILER-DAEMON\r\n\r\nbounce"
    inbound_id = await any_store.store_inbound("192.0.2.1", "", ["bounce+x@bounces.test"], raw)
    stored = await any_store.get_inbound(inbound_id)
    assert stored.raw == raw and stored.rcpt_tos == ["bounce+x@bounces.test"] and stored.state == ParseState.PENDING
    assert await any_store.inbound_ids(["pending"]) == [inbound_id]
    event = bounce("gone@b.example", None, source=Source.ASYNC, inbound_id=inbound_id, correlation=Correlation.VERP)
    result = InboundResult(ParseState.PARSED, "v1", "bounce", "rfc3464", events=[event], sha256=stored.sha256)
    assert await any_store.record_inbound_result(inbound_id, result)
    assert await any_store.record_inbound_result(inbound_id, result)  # a reparse: same row, not a duplicate
    event.reason, event.bounce_type = "mailboxfull", BounceType.SOFT
    await any_store.record_inbound_result(inbound_id, result)
    entries = await any_store.list_events(EventFilter(recipient="GONE@b.example"))
    assert [(e.event.reason, e.event.bounce_type, e.event.inbound_id) for e in entries] == [
        ("mailboxfull", BounceType.SOFT, inbound_id)]
    listed = await any_store.list_inbound(InboundFilter(state="parsed"))
    assert [(i.id, i.format, i.size, i.raw) for i in listed] == [(inbound_id, "rfc3464", len(raw), None)]


async def test_the_same_report_at_two_bounce_mxs_records_once(any_store, tmp_path):
    other = await second(any_store, tmp_path)
    try:
        raw = b"the same DSN, byte for byte"
        ids = await asyncio.gather(any_store.store_inbound("a", "", [], raw), other.store_inbound("b", "", [], raw))
        assert len(set(ids)) == 2
        sha = (await any_store.get_inbound(ids[0])).sha256

        def result(i):
            e = bounce("x@b.example", None, source=Source.ASYNC, inbound_id=i)
            return InboundResult(ParseState.PARSED, "v1", "bounce", "rfc3464", events=[e], sha256=sha)
        recorded = await asyncio.gather(any_store.record_inbound_result(ids[0], result(ids[0])),
                                        other.record_inbound_result(ids[1], result(ids[1])))
        assert sorted(recorded) == [False, True]
        assert len(await any_store.list_events(EventFilter(recipient="x@b.example"))) == 1
        errors = [(await any_store.get_inbound(i)).error for i in ids]
        assert sum(1 for e in errors if e and e.startswith("duplicate of inbound #")) == 1
    finally:
        await other.close()


async def test_a_failing_unit_fails_only_its_caller(any_store):
    good = message("good", ("a@b.example", A))
    outcome = await asyncio.gather(any_store.insert_rows("messages", [{"no_such_column": 1}]),
                                   any_store.record_message(good), return_exceptions=True)
    assert isinstance(outcome[0], StoreError)
    assert outcome[1] is None
    assert (await any_store.get_message("good")).recipients[0].address == "a@b.example"
    assert not any_store.failing  # one bad unit is no outage


async def test_read_then_write_is_atomic(any_store, tmp_path):
    other = await second(any_store, tmp_path)
    try:
        await any_store.upsert_suppressions([Suppression("", "gone@b.example", "userunknown", "hard", NOW)])
        removed = await asyncio.gather(*(s.delete_suppression("", "gone@b.example")
                                         for s in (any_store, other, any_store, other)))
        assert sorted(removed) == [False, False, False, True]
        await any_store.pause_identity("shop.example", NOW, "hard bounce rate 12%")
        resumed = await asyncio.gather(any_store.resume_identity("shop.example"), other.resume_identity("shop.example"))
        assert sorted(resumed) == [False, True]
    finally:
        await other.close()


async def test_suppression_writes_are_seen_in_order_by_other_instances(any_store, tmp_path):
    other = await second(any_store, tmp_path)
    try:
        start = await other.suppression_seq()
        await asyncio.gather(*(store.upsert_suppressions([Suppression("", f"u{i}@b.example", "userunknown", "hard", NOW)])
                               for i, store in enumerate([any_store, other] * 10)))
        seen = await other.suppressions_after(start)
        assert sorted(a for _, a, _ in seen) == sorted(f"u{i}@b.example" for i in range(20))
        seqs = [s for _, _, s in seen]
        assert seqs == sorted(seqs) and len(set(seqs)) == 20
        # a later write of the same address wins and moves past what was seen
        await any_store.upsert_suppressions([Suppression("shop.example", "u1@b.example", "mailboxfull", "soft", NOW,
                                                         NOW + 86400)])
        assert [(s, a) for s, a, _ in await other.suppressions_after(max(seqs))] == [("shop.example", "u1@b.example")]
        got = await other.get_suppression("shop.example", "u1@b.example")
        assert (got.kind, got.reason, got.expires_at) == ("soft", "mailboxfull", NOW + 86400)
        keys = [k async for chunk in other.suppression_keys(chunk=7) for k in chunk]
        assert len(keys) == 21
        listed = await other.list_suppressions(SuppressionFilter(scope="", limit=None))
        assert len(listed) == 20
    finally:
        await other.close()


async def test_ids_never_collide_between_instances(any_store, tmp_path):
    other = await second(any_store, tmp_path)
    try:
        ids = await asyncio.gather(*(store.store_inbound("p", "", [], f"mail {i}".encode())
                                     for i, store in enumerate([any_store, other] * 15)))
        assert len(set(ids)) == 30
    finally:
        await other.close()


async def test_stats_and_identities(any_store):
    await any_store.record_message(message("m1", ("a@b.example", A), ("gone@b.example", R)),
                                   [bounce("gone@b.example", "m1")])
    await any_store.record_message(message("m2", ("c@b.example", A), sender="news@Other.example"))
    inbound_id = await any_store.store_inbound("p", "", [], b"complaint")
    complaint = bounce("c@b.example", "m2", source=Source.ASYNC, kind=Kind.COMPLAINT, reason="feedback",
                       bounce_type=BounceType.UNDETERMINED, inbound_id=inbound_id, correlation=Correlation.VERP)
    foreign = bounce("stranger@b.example", "m2", source=Source.ASYNC, inbound_id=inbound_id,
                     correlation=Correlation.FOREIGN_RECIPIENT)
    await any_store.record_inbound_result(inbound_id, InboundResult(ParseState.PARSED, "v1", "complaint", "arf",
                                                                    events=[complaint, foreign]))
    stats = await any_store.stats(NOW - 60)
    assert stats.messages == {"sent": 2} and stats.recipients == 3 and stats.duplicates == 0
    assert sorted((e["source"], e["kind"], e["reason"], e["n"]) for e in stats.events) == [
        ("async", "complaint", "feedback", 1), ("sync", "bounce", "userunknown", 1)]  # the foreign one left out
    assert stats.correlations == {"verp": 1, "foreign_recipient": 1}
    identities = {i.identity: (i.recipients, i.hard_bounces, i.complaints) for i in await any_store.identity_stats(NOW - 60)}
    assert identities == {"shop.example": (2, 1, 0), "other.example": (1, 0, 1)}
    assert [i.identity for i in await any_store.identity_stats(NOW - 60, "other.example")] == ["other.example"]
    counts = await any_store.metric_counts(NOW)
    assert counts.messages == {"sent": 2} and counts.recipients == {"accepted": 2, "rejected": 1}
    assert counts.inbound == {"parsed": 1} and counts.correlations == {"verp": 1, "foreign_recipient": 1}
    assert sorted(counts.events) == [("async", "bounce", "hard", 1), ("async", "complaint", "undetermined", 1),
                                     ("sync", "bounce", "hard", 1)]


async def test_duplicates_are_messages_repeating_one_that_went_out(any_store):
    await any_store.record_message(message("first", ("a@b.example", A), message_id="same@shop", at=NOW - 5))
    await any_store.record_message(message("retry", ("A@b.example", A), message_id="same@shop", at=NOW - 1))
    await any_store.record_message(message("split", ("z@b.example", A), message_id="same@shop", at=NOW))
    listed = {m.id: m.duplicate for m in await any_store.list_messages(MessageFilter())}
    assert listed == {"first": True, "retry": True, "split": False}
    assert (await any_store.stats(NOW - 60)).duplicates == 1
    assert [m.id for m in await any_store.list_messages(MessageFilter(duplicates=True))] == ["retry", "first"]


async def test_soft_bounces_count_since_the_last_delivery(any_store):
    address = "Full@b.example"
    for i, at in enumerate((NOW - 300, NOW - 200, NOW - 100)):
        await any_store.record_message(message(f"s{i}", (address, R), at=at),
                                       [bounce(address, f"s{i}", bounce_type=BounceType.SOFT, reason="mailboxfull", at=at)])
    args = ("full@B.example", NOW - 1000, ("expired",), ("verp", "upstream_id"))
    assert await any_store.soft_bounce_span(*args) == pytest.approx(200)
    assert [b.relay_id for b in await any_store.soft_bounces(*args)] == ["s0", "s1", "s2"]
    delivered = bounce(address, "s1", kind=Kind.DELIVERED, bounce_type=BounceType.UNDETERMINED, reason="delivered",
                       at=NOW - 150)
    await any_store.record_message(message("d", (address, A), at=NOW - 150), [delivered])
    assert [b.relay_id for b in await any_store.soft_bounces(*args)] == ["s2"]
    assert await any_store.soft_bounce_span("nobody@b.example", NOW - 1000, (), ()) is None
    assert len(await any_store.soft_bounces("full@b.example", NOW - 1000, (), ("verp",))) == 1  # nothing excluded


async def test_a_final_record_that_does_not_wait_for_the_disk_is_committed_all_the_same(any_store):
    """durable=False (the relay's final record of a plain success) is a commit every reader sees at once;
    only the wait for the disk is skipped, and a durable write after it still syncs everything."""
    m = message("quick", ("a@b.example", A), status=MessageStatus.PENDING)
    await any_store.record_message(m)
    m.status = MessageStatus.SENT
    await any_store.record_message(m, recipients=False, durable=False)
    other = await second(any_store, None)
    try:
        assert (await other.get_message("quick")).status == MessageStatus.SENT
    finally:
        await other.close()
    await any_store.record_message(message("after", ("a@b.example", A)))
    assert (await any_store.get_message("after")).status == MessageStatus.SENT


async def test_a_final_record_writes_only_the_outcome_over_its_in_flight_row(any_store):
    """recipients=False (the relay's final record after its in-flight one) writes status, reply, upstream id
    and send failure, nothing else of the row; with no row to update it writes the whole message."""
    m = message("final", ("a@b.example", A), status=MessageStatus.PENDING)
    m.subject = "as in flight"
    await any_store.record_message(m)
    m.subject = "changed since, never written by the final record"
    m.status, m.upstream_reply, m.upstream_id = MessageStatus.SENT, "250 2.0.0 Ok: queued as Q1", "Q1"
    await any_store.record_message(m, recipients=False, durable=False)
    stored = await any_store.get_message("final")
    assert (stored.status, stored.upstream_reply, stored.upstream_id) == (MessageStatus.SENT, "250 2.0.0 Ok: queued as Q1", "Q1")
    assert stored.subject == "as in flight" and [r.address for r in stored.recipients] == ["a@b.example"]
    lone = message("lone", ("c@b.example", A))
    await any_store.record_message(lone, recipients=False)
    stored = await any_store.get_message("lone")
    assert stored is not None and stored.status == lone.status and stored.sender == lone.sender


async def test_sqlite_syncs_every_batch_but_a_lone_commit_that_need_not_wait(tmp_path):
    """A unit that need not wait for the disk, committed alone in the loop's thread, runs with NORMAL; the
    connection is FULL again after it, as every batch of the writer thread runs (no PRAGMA there)."""
    store = await store_for_url(f"sqlite:///{tmp_path / 'sync.db'}").open()
    try:
        conn = store._write_conn
        settings = []
        conn.set_trace_callback(lambda sql: settings.append(sql) if sql.startswith("PRAGMA synchronous") else None)
        sync = lambda: conn.execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731
        await store.record_message(message("q1", ("a@b.example", A)), durable=False)
        assert settings == ["PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"] and sync() == 2
        settings.clear()
        store.quiet = lambda: False
        await asyncio.gather(store.record_message(message("q2", ("a@b.example", A)), durable=False),
                             store.record_message(message("q3", ("a@b.example", A))))
        await store.record_message(message("q4", ("a@b.example", A)))
        changes = [s for s in settings if s != "PRAGMA synchronous"]
        # only the loop's lone non-durable commit (q2) switched, and back: none in the writer's batches
        assert changes == ["PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"] * (len(changes) // 2)
        assert len(changes) <= 2 and sync() == 2
        assert {(await store.get_message(f"q{i}")).status for i in range(1, 5)} == {MessageStatus.SENT}
    finally:
        await store.close()


async def test_in_flight_messages_become_possibly_sent(any_store):
    await any_store.record_message(message("inflight", ("a@b.example", A), status=MessageStatus.PENDING, at=NOW - 10))
    await any_store.record_message(message("later", ("a@b.example", A), status=MessageStatus.PENDING, at=NOW + 10))
    assert await any_store.mark_possibly_sent(NOW) == 1
    got = await any_store.get_message("inflight")
    assert got.status == MessageStatus.POSSIBLY_SENT and "no final reply recorded" in got.upstream_reply
    assert (await any_store.get_message("later")).status == MessageStatus.PENDING


async def test_verdicts_rewritten_by_event_id(any_store):
    await any_store.record_message(message("m", ("a@b.example", R)), [bounce("a@b.example", "m")])
    [event] = await any_store.events_to_reclassify()
    event.reason, event.bounce_type, event.decided_by = "mailboxfull", BounceType.SOFT, "text: rule 1"
    await any_store.update_events_verdicts([event])
    [again] = await any_store.message_events("m")
    assert (again.reason, again.bounce_type, again.decided_by) == ("mailboxfull", BounceType.SOFT, "text: rule 1")
    assert await any_store.event_id_for(again) == again.id


async def test_outbox_and_rows_in_pages(any_store):
    await any_store.record_message(message("m", ("a@b.example", A)), raw=b"\x00binary\xffbody")
    assert await any_store.outbox_raw("m") == b"\x00binary\xffbody"
    for i in range(5):
        await any_store.record_message(message(f"p{i}", ("a@b.example", A)))
    page1 = await any_store.table_rows("messages", None, 4)
    page2 = await any_store.table_rows("messages", (page1[-1]["id"],), 4)
    assert [r["id"] for r in page1 + page2] == sorted(["m"] + [f"p{i}" for i in range(5)])
    assert await any_store.count_rows("messages") == 6
    with pytest.raises(StoreError):
        await any_store.count_rows("sqlite_master")


async def test_schema_is_current_and_a_read_only_open_reads(any_store):
    applied, known = await any_store.schema_version()
    assert applied == known >= 7
    await any_store.record_message(message("m", ("a@b.example", A)))
    reader = await store_for_url(any_store.url).open(readonly=True)
    try:
        assert (await reader.get_message("m")).id == "m"
        with pytest.raises(StoreError):
            await reader.record_message(message("x", ("a@b.example", A)))
    finally:
        await reader.close()


def test_store_urls_are_checked():
    with pytest.raises(StoreError, match="sqlite:/// or postgresql://"):
        store_for_url("mysql://db/x")
    with pytest.raises(StoreError, match="password_env") as exc:
        store_for_url("postgresql://u:hunter2@127.0.0.1/db")
    assert "hunter2" not in str(exc.value)


async def test_an_unreachable_postgresql_is_one_store_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = store_for_url(f"postgresql://bounceproxy@127.0.0.1:{port}/nothing")
    store.connect_timeout = 2
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
        await store.open()


async def test_an_outside_notification_records_once_by_any_of_its_keys(any_store):
    ses = bounce("gone@b.example", None, source=Source.SES, correlation=Correlation.UPSTREAM_ID)
    assert await any_store.record_notification(["sns:1", "ses:feedback-a"], [ses])
    assert not await any_store.record_notification(["sns:1", "ses:feedback-a"], [ses])  # a replay
    assert not await any_store.record_notification(["sns:2", "ses:feedback-a"], [ses])  # the same bounce, another topic
    entries = await any_store.list_events(EventFilter(source="ses"))
    assert [(e.event.recipient, e.event.source) for e in entries] == [("gone@b.example", Source.SES)]
    with pytest.raises(StoreError):
        await any_store.record_notification([], [ses])


async def test_webhook_outbox_is_written_with_the_event_and_served_in_order_per_address(any_store, tmp_path):
    from proxy.model import NotificationType, WebhookTarget

    any_store.webhook_targets = (WebhookTarget("http://a.test/hook"),
                                 WebhookTarget("http://b.test/hook", frozenset({"complaint", "suppression_removed"})))
    failed = message("f", ("x@b.example", R), status=MessageStatus.FAILED)
    failed.send_failure = "454 Throttling failure: Maximum sending rate exceeded."
    await any_store.record_message(message("m", ("gone@b.example", R)), [bounce("gone@b.example", "m")])
    await any_store.record_message(failed)
    await any_store.record_message(failed)  # recorded again: still one notification
    await any_store.upsert_suppressions([Suppression("", "gone@b.example", "userunknown", "hard", NOW)])
    assert await any_store.delete_suppression("", "gone@b.example")
    inbound_id = await any_store.store_inbound("p", "", [], b"arf")
    complaint = bounce("gone@b.example", "m", source=Source.ASYNC, kind=Kind.COMPLAINT, inbound_id=inbound_id,
                       correlation=Correlation.VERP)
    await any_store.record_inbound_result(inbound_id, InboundResult(ParseState.PARSED, "v1", "complaint", "arf",
                                                                    events=[complaint]))
    queued = sorted(((e.url, e.type, e.address) for e in await any_store.list_webhooks()), key=str)
    assert queued == sorted([
        ("http://a.test/hook", NotificationType.BOUNCE, "gone@b.example"),
        ("http://a.test/hook", NotificationType.SEND_FAILURE, "app@shop.example"),
        ("http://a.test/hook", NotificationType.SUPPRESSION_ADDED, "gone@b.example"),
        ("http://a.test/hook", NotificationType.SUPPRESSION_REMOVED, "gone@b.example"),
        ("http://b.test/hook", NotificationType.SUPPRESSION_REMOVED, "gone@b.example"),
        ("http://a.test/hook", NotificationType.COMPLAINT, "gone@b.example"),
        ("http://b.test/hook", NotificationType.COMPLAINT, "gone@b.example")], key=str)
    T = time.time() + 1
    other = await second(any_store, tmp_path)
    try:
        # two instances claim at once: each head of a (url, address) queue goes to one of them
        a, b = await asyncio.gather(any_store.claim_webhooks("one", T, 30, 10), other.claim_webhooks("two", T, 30, 10))
        claimed = [(e.url, e.address) for e in a + b]
        assert len(claimed) == len(set(claimed)) == 3  # a.test/gone, a.test/app, b.test/gone
        head = next(e for e in a + b if e.url == "http://a.test/hook" and e.address == "gone@b.example")
        assert head.type == NotificationType.BOUNCE and head.event_id is not None
        assert (await any_store.get_event(head.event_id)).reason == "userunknown"
        assert await any_store.claim_webhooks("one", T, 30, 10) == []  # leased, and the rest wait their turn
        assert await any_store.webhook_failed(head.id, "one", "HTTP 500", T + 5)
        assert await any_store.claim_webhooks("one", T + 1, 30, 10) == []  # the head waits, its queue with it
        [again] = [e for e in await any_store.claim_webhooks("one", T + 6, 30, 10) if e.id == head.id]
        assert again.attempts == 1 and again.last_error == "HTTP 500"
        assert await any_store.webhook_delivered(head.id, "one", T + 6)
        nxt = [e for e in await any_store.claim_webhooks("one", T + 7, 30, 10) if e.address == "gone@b.example"
               and e.url == "http://a.test/hook"]
        assert [e.type for e in nxt] == [NotificationType.SUPPRESSION_ADDED]
        assert nxt[0].snapshot["reason"] == "userunknown"
        assert await any_store.webhook_failed(nxt[0].id, "one", "gave up", None)
        assert [e.id for e in await any_store.list_webhooks("dead")] == [nxt[0].id]
        assert await any_store.retry_webhooks() == 1
        assert (await any_store.webhook_counts())["delivered"][0] == 1
    finally:
        await other.close()


async def test_a_notification_delivered_twice_at_once_records_once(any_store, tmp_path):
    stores = [any_store] + [await second(any_store, tmp_path) for _ in range(3)]
    try:
        ses = bounce("twice@b.example", None, source=Source.SES)
        recorded = await asyncio.gather(*(s.record_notification(["sns:same", "ses:fb"], [ses]) for s in stores))
        assert sorted(recorded) == [False, False, False, True]
        assert len(await any_store.list_events(EventFilter(recipient="twice@b.example"))) == 1
        assert await any_store.events_to_reclassify() == []  # SES's verdicts are SES's mapping, never reclassified
    finally:
        for s in stores[1:]:
            await s.close()


def test_sqlite_urls_absolute_and_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store_for_url(f"sqlite://{tmp_path}/a.db").path == f"{tmp_path}/a.db"
    relative = store_for_url("sqlite:logs/b.db")
    assert relative.path == "logs/b.db" and relative.url == f"sqlite://{tmp_path}/logs/b.db"
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/x.db"):
        with pytest.raises(StoreError, match="sqlite:///absolute/path.db"):
            store_for_url(bad)


async def test_every_list_pages_by_cursor(any_store):
    for i in range(7):
        await any_store.record_message(message(f"m{i}", (f"u{i}@b.example", R), at=NOW - i), [bounce(f"u{i}@b.example", f"m{i}", at=NOW - i)])
        await any_store.store_inbound("p", "", [], f"mail {i}".encode())
    await any_store.upsert_suppressions([Suppression("", f"s{i}@B.example".lower(), "userunknown", "hard", NOW - i // 2)
                                         for i in range(7)])

    async def pages(list_fn, flt, cursor_of, key):
        seen, flt.limit = [], 3
        while True:
            page = await list_fn(flt)
            seen += [key(r) for r in page]
            if len(page) < 3:
                return seen
            flt.before = cursor_of(page[-1])
    events = await pages(any_store.list_events, EventFilter(), lambda e: (e.event.at, e.event.id), lambda e: e.event.relay_id)
    assert events == [f"m{i}" for i in range(7)]
    messages = await pages(any_store.list_messages, MessageFilter(), lambda m: (m.created_at, m.id), lambda m: m.id)
    assert messages == [f"m{i}" for i in range(7)]
    inbound = await pages(any_store.list_inbound, InboundFilter(), lambda i: i.id, lambda i: i.id)
    assert inbound == sorted(inbound, reverse=True) and len(set(inbound)) == 7
    listed = await pages(any_store.list_suppressions, SuppressionFilter(),
                         lambda s: (s.created_at, s.scope, s.address), lambda s: s.address)
    assert sorted(listed) == sorted(f"s{i}@b.example" for i in range(7)) and len(listed) == 7
    found = await any_store.list_suppressions(SuppressionFilter(search="S3@B", limit=None))
    assert [s.address for s in found] == ["s3@b.example"]
    assert await any_store.list_suppressions(SuppressionFilter(search="s_@", limit=None)) == []  # "_" is text
    await any_store.upsert_suppressions([Suppression("", "first_last@b.example", "userunknown", "hard", NOW)])
    found = await any_store.list_suppressions(SuppressionFilter(search="T_L", limit=None))
    assert [s.address for s in found] == ["first_last@b.example"]


async def test_activity_counts_per_bucket_on_bucket_boundaries(any_store):
    """Buckets are aligned on the epoch: a time just before a boundary (x.9 s, which PostgreSQL's CAST would
    round up) stays in the earlier bucket, the boundary itself opens the next."""
    hour = 3600
    base = (int(NOW) // hour - 3) * hour  # the start of an hour, three hours ago
    await any_store.record_message(message("early", ("a@b.example", A), ("b@b.example", R), at=base + 0.1),
                                   [bounce("b@b.example", "early", at=base + 0.1)])
    await any_store.record_message(message("edge", ("c@b.example", A), at=base + hour - 0.1))
    await any_store.record_message(message("next", ("d@b.example", A), at=base + hour),
                                   [bounce("d@b.example", "next", at=base + 2 * hour + 5, bounce_type=BounceType.SOFT,
                                           source=Source.ASYNC, correlation=Correlation.VERP),
                                    bounce("d@b.example", "next", at=base + 2 * hour + 6, kind=Kind.COMPLAINT,
                                           bounce_type=BounceType.UNDETERMINED, source=Source.ASYNC,
                                           correlation=Correlation.VERP),
                                    bounce("x@b.example", "next", at=base + 2 * hour + 7, source=Source.ASYNC,
                                           correlation=Correlation.FOREIGN_RECIPIENT)])
    await any_store.record_message(message("old", ("e@b.example", A), at=base - 10))  # before `since`
    rows = await any_store.activity(base, hour)
    zero = {"messages": 0, "recipients": 0, "hard": 0, "soft": 0, "undetermined": 0, "complaints": 0}
    assert rows == [
        {**zero, "bucket_start": float(base), "messages": 2, "recipients": 3, "hard": 1},
        {**zero, "bucket_start": float(base + hour), "messages": 1, "recipients": 1},
        {**zero, "bucket_start": float(base + 2 * hour), "soft": 1, "complaints": 1},  # the foreign one left out
    ]
    daily = await any_store.activity(base - 86400, 86400)
    assert sum(r["messages"] for r in daily) == 4 and sum(r["recipients"] for r in daily) == 5
    assert all(r["bucket_start"] % 86400 == 0 for r in daily)
    with pytest.raises(StoreError):
        await any_store.activity(base, 0)


async def test_the_duplicate_check_starts_from_the_message_id_index(tmp_path):
    """`stats` and `messages` ask, for every message, whether another with its Message-ID went to a shared
    recipient; the plan must start from the Message-ID index, never scan recipients (a newsletter's
    thousands of messages to one address made it quadratic). SQLite's own plan, read on the store's file."""
    import sqlite3

    from proxy.store.dialect import SQLITE
    from proxy.store.units import duplicate_sql

    store = await store_for_url(f"sqlite://{tmp_path / 'plan.db'}").open()
    await store.close()
    db = sqlite3.connect(tmp_path / "plan.db")
    plan = [row[3] for row in db.execute(
        f"EXPLAIN QUERY PLAN SELECT COUNT(*) FROM messages m WHERE {duplicate_sql(SQLITE, earlier_only=True)}")]
    db.close()
    assert any("messages_msgid" in step for step in plan), plan
    assert not any(step.startswith("SCAN r") for step in plan), plan  # no recipients table scan


async def test_recipient_lookups_use_the_case_insensitive_index_the_only_one_on_addresses(tmp_path):
    """Correlation by recipient and the address filter find their rows through the NOCASE index; the
    exact-match index, which served no lookup and cost every in-flight record a page, is gone."""
    import sqlite3

    from proxy.store import units
    from proxy.store.dialect import SQLITE

    store = await store_for_url(f"sqlite://{tmp_path / 'plan.db'}").open()
    await store.close()
    db = sqlite3.connect(tmp_path / "plan.db")
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients'"
                                            " AND sql IS NOT NULL")}
    assert indexes == {"recipients_address_nocase"}
    for op in (next(units.find_latest_message_to(SQLITE, "A@b.example", NOW)),
               next(units.list_messages(SQLITE, MessageFilter(recipient="A@b.example")))):
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {op.sql}", op.params)]
        assert any("recipients_address_nocase" in step for step in plan), plan
        assert not any(step.startswith("SCAN r") for step in plan), plan  # never every recipient read
    db.close()


async def test_work_leased_by_a_gone_process_on_this_host_is_due_again(any_store):
    """After kill -9 and a restart, what the dead process had claimed is not left to its lease's expiry;
    a live process's and another host's leases are left alone."""
    import os

    from proxy.leases import gone, new_owner

    me = new_owner()
    host, pid = me.split(":")[:2]
    dead, reborn, other_host = f"{host}:999999999:aa", f"{host}:{pid}:bb", "elsewhere:1:cc"
    assert gone(dead, me) and gone(reborn, me) and not gone(other_host, me)
    assert not gone(me, me) and not gone(f"{host}:{os.getppid()}:dd", me)  # our parent runs
    from proxy.model import WebhookTarget

    any_store.webhook_targets = (WebhookTarget("http://h/"),)
    for i, owner in enumerate((dead, reborn, other_host, me)):
        await any_store.record_message(message(f"w{i}", (f"x{i}@b.example", R)), [bounce(f"x{i}@b.example", f"w{i}")])
        assert len(await any_store.claim_webhooks(owner, time.time() + 1, 300, 1)) == 1
    assert await any_store.release_gone_leases("webhook_outbox", me) == 2
    due = {e.address for e in await any_store.claim_webhooks("next", time.time() + 1, 300, 10)}
    assert due == {"x0@b.example", "x1@b.example"}  # the dead process's and the earlier incarnation's


async def test_a_copy_whose_first_twin_failed_to_parse_is_no_duplicate(any_store):
    """Only a twin whose events were recorded makes a row a duplicate: a parser failure on the first copy
    must not leave the next one unparsed."""
    raw = b"the same bytes twice"
    first = await any_store.store_inbound("a", "", [], raw)
    await any_store.record_inbound_result(first, InboundResult(ParseState.FAILED, "v1", error="ParseError: x"))
    second = await any_store.store_inbound("b", "", [], raw)
    assert await any_store.first_inbound_with_sha((await any_store.get_inbound(second)).sha256, second) is None
    await any_store.record_inbound_result(second, InboundResult(ParseState.PARSED, "v1", "bounce", "rfc3464",
                                                                sha256=(await any_store.get_inbound(second)).sha256))
    assert await any_store.first_inbound_with_sha((await any_store.get_inbound(first)).sha256, first) == second


async def test_sqlite_writes_a_group_of_plain_records_as_one_statement_per_table_and_a_bad_one_fails_alone(tmp_path):
    """The writer thread's group of relay records: several plain record_message units become one
    record_messages (one INSERT per table for the group); every row lands as if written one by one, and a
    unit that fails in such a group fails alone when the group runs again, unit by unit."""
    from proxy.store import units
    from proxy.store.sqlite import SqliteStore, _coalesced

    store = await SqliteStore(str(tmp_path / "group.db"), commit_interval_ms=100).open()  # one group for all
    try:
        first = [message(f"g{i}", ("a@b.example", A), (f"r{i}@b.example", R), status=MessageStatus.PENDING)
                 for i in range(5)]
        bad = message("bad", ("a@b.example", A))
        bad.created_at = None  # NOT NULL: this unit's own fault
        with_event = message("ev", ("c@b.example", R))
        store.quiet = lambda: False  # every unit through the writer thread's group commits
        commits = store.commits
        results = await asyncio.gather(*(store.record_message(m) for m in first),
                                       store.record_message(bad), store.record_message(with_event,
                                                                                       [bounce("c@b.example", "ev")]),
                                       return_exceptions=True)
        assert results[:5] == [None] * 5 and results[6] is None and store.commits == commits + 1
        assert isinstance(results[5], StoreError) and "NOT NULL" in str(results[5])
        for i, m in enumerate(first):
            got = await store.get_message(f"g{i}")
            assert got.status == MessageStatus.PENDING and [(r.address, r.status) for r in got.recipients] == [
                ("a@b.example", A), (f"r{i}@b.example", R)]
        assert await store.get_message("bad") is None
        assert [e.recipient for e in await store.message_events("ev")] == ["c@b.example"]
        # the outcomes, grouped the same way, write only the outcome over the rows, as one by one; a final
        # record whose row is not there is written whole
        for m in first:
            m.status, m.subject = MessageStatus.PARTIAL, "never written by a final record"
        lone = message("lone-final", ("d@b.example", A))
        await asyncio.gather(*(store.record_message(m, recipients=False) for m in [*first, lone]))
        assert {(await store.get_message(m.id)).status for m in first} == {MessageStatus.PARTIAL}
        assert {(await store.get_message(m.id)).subject for m in first} == {None}
        assert (await store.get_message("lone-final")).sender == lone.sender
        assert await store.count_rows("recipients") == 11
        # a group larger than one statement takes (60 messages, 180 recipients): in several, all written
        commits = store.commits
        many = [message(f"n{i}", ("a@b.example", A), (f"n{i}@b.example", R)) for i in range(130)]
        await asyncio.gather(*(store.record_message(m) for m in many))
        assert store.commits == commits + 1 and await store.count_rows("messages") == 7 + 130
        assert await store.count_rows("recipients") == 11 + 260
        assert [r.address for r in (await store.get_message("n129")).recipients] == ["a@b.example", "n129@b.example"]
    finally:
        await store.close()
    plain = [(units.record_message, (m, [], None, True, (), 0.0)) for m in first[:4]]
    evented = (units.record_message, (with_event, [bounce("c@b.example", "ev")], None, True, (), 0.0))
    grouped, shape = _coalesced([plain[0], plain[1], evented, plain[2], plain[3]])
    # runs of consecutive plain records only: no write moves past another
    assert [u for u, _ in grouped] == [units.record_messages, units.record_message, units.record_messages]
    assert shape == [2, 1, 2] and [m.id for m, _ in grouped[2][1][0]] == ["g2", "g3"]
    assert _coalesced([plain[0], evented, plain[1]]) == ([plain[0], evented, plain[1]], None)  # no run of two
    # a message a run holds already starts the next run: one statement never touches a row twice
    final = (units.record_message, (first[1], [], None, False, (), 0.0))
    grouped, shape = _coalesced([plain[0], plain[1], final, plain[2]])
    assert shape == [2, 2] and [m.id for m, _ in grouped[1][1][0]] == ["g1", "g2"]
