"""proxy.queries, what the CLI and the API both show, on each backend (`any_store`: SQLite, then PostgreSQL)."""
from __future__ import annotations

import csv
import io
import time

import pytest

from proxy import queries
from proxy.model import (BounceEvent, BounceType, Correlation, InboundResult, Kind, MessageRecord, MessageStatus,
                         ParseState, RecipientRecord, RecipientStatus, Source, StatusSource, Suppression)
from proxy.store import EventFilter, InboundFilter, MessageFilter

NOW = time.time()
DSN = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered\r\n\r\n<b@example.com>: user unknown\r\n"


async def seed(store) -> int:
    """m1 (example.com, two recipients, a sync hard bounce, a late complaint), m2 (news.example, kept raw)."""
    m1 = MessageRecord(
        id="m1", created_at=NOW - 600, client_peer="127.0.0.1:4000", sender="app@example.com",
        header_from="App <app@example.com>", message_id="<one@relay.test>", subject="Hello", upstream_id="0100-one",
        size=1200, status=MessageStatus.PARTIAL, upstream_reply="250 Ok 0100-one",
        recipients=[RecipientRecord("a@example.org", RecipientStatus.ACCEPTED, "250 2.1.5 Ok"),
                    RecipientRecord("b@example.org", RecipientStatus.REJECTED, "550 5.1.1 user unknown")])
    sync = BounceEvent(at=NOW - 600, source=Source.SYNC, kind=Kind.BOUNCE, recipient="b@example.org",
                       bounce_type=BounceType.HARD, reason="userunknown", status="5.1.1",
                       status_source=StatusSource.DSN, smtp_code=550, diagnostic="550 5.1.1 user unknown",
                       relay_id="m1", smtp_command="RCPT", decided_by="status: 5.1.1")
    await store.record_message(m1, [sync])
    m2 = MessageRecord(id="m2", created_at=NOW - 300, sender="news@news.example", status=MessageStatus.SENT,
                       recipients=[RecipientRecord("c@example.org", RecipientStatus.ACCEPTED, "250 Ok")])
    await store.record_message(m2, raw=b"Subject: kept\r\n\r\nbody\r\n")
    inbound_id = await store.store_inbound("192.0.2.7", "", ["bounce+tok@bounces.test"], DSN)
    complaint = BounceEvent(at=NOW - 60, source=Source.ASYNC, kind=Kind.COMPLAINT, recipient="a@example.org",
                            reason="feedback", correlation=Correlation.VERP, relay_id="m1", inbound_id=inbound_id,
                            feedback_type="abuse", parser_version="1")
    await store.record_inbound_result(inbound_id, InboundResult(ParseState.PARSED, "1", "complaint", "arf",
                                                                events=[complaint]))
    return inbound_id


async def test_message_story(any_store):
    inbound_id = await seed(any_store)
    story = await queries.message_story(any_store, "m1")
    assert story["id"] == "m1" and story["message_id"] == "<one@relay.test>" and story["status"] == "partial"
    assert story["created_at"] == queries.iso(NOW - 600) and story["raw_kept"] is False
    assert story["recipients"] == [
        {"address": "a@example.org", "status": "accepted", "reply": "250 2.1.5 Ok"},
        {"address": "b@example.org", "status": "rejected", "reply": "550 5.1.1 user unknown"}]
    sync, late = story["events"]
    assert (sync["source"], sync["kind"], sync["relay_id"], sync["recipient"]) == ("sync", "bounce", "m1", "b@example.org")
    assert (late["kind"], late["correlation"], late["inbound_id"]) == ("complaint", "verp", inbound_id)
    text = "\n".join(queries.story_lines(story))
    assert text.startswith(f"message m1  {story['created_at']}  partial")
    assert "b@example.org" in text and "550 5.1.1 user unknown" in text and "why: status: 5.1.1 [smtp_command RCPT" in text
    assert (await queries.message_story(any_store, "m2"))["raw_kept"] is True
    assert await queries.message_raw(any_store, "m2") == b"Subject: kept\r\n\r\nbody\r\n"
    with pytest.raises(queries.NotFound, match="delivered upstream"):
        await queries.message_raw(any_store, "m1")
    with pytest.raises(queries.NotFound, match="no message 'nope'"):
        await queries.message_story(any_store, "nope")
    assert await queries.inbound_raw(any_store, inbound_id) == DSN
    with pytest.raises(queries.NotFound):
        await queries.inbound_raw(any_store, inbound_id + 100)


async def test_rows_name_each_id_once(any_store):
    inbound_id = await seed(any_store)
    events = await queries.list_events(any_store, EventFilter())
    assert [e["kind"] for e in events] == ["complaint", "bounce"]  # newest first
    late = events[0]
    assert late["relay_id"] == "m1" and late["message_id"] == "<one@relay.test>" and late["subject"] == "Hello"
    assert late["message_sender"] == "app@example.com" and late["upstream_id"] == "0100-one"
    assert set(queries.EVENT_COLUMNS) <= set(late) and "message_id" not in queries.EVENT_COLUMNS
    assert [e["recipient"] for e in await queries.list_events(any_store, EventFilter(relay_id="m2"))] == []
    messages = await queries.list_messages(any_store, MessageFilter())
    assert [m["id"] for m in messages] == ["m2", "m1"]
    assert messages[1]["recipients"] == ["a@example.org", "b@example.org"] and messages[1]["recipient_count"] == 2
    assert messages[1]["duplicate"] is False and messages[1]["message_id"] == "<one@relay.test>"
    (mail,) = await queries.list_inbound(any_store, InboundFilter())
    assert mail["id"] == inbound_id and mail["size"] == len(DSN) and mail["rcpt_tos"] == ["bounce+tok@bounces.test"]
    assert mail["state"] == "parsed" and "raw" not in mail


async def test_stats_with_identities_and_pauses(any_store):
    await seed(any_store)
    await any_store.pause_identity("example.com", NOW, "hard bounce rate 50% over 10%")
    summary = await queries.stats_summary(any_store, NOW - 3600)
    assert summary["messages"] == 2 and summary["recipients"] == 3 and summary["by_status"] == {"partial": 1, "sent": 1}
    assert summary["bounces"] == 1 and summary["hard_bounces"] == 1 and summary["complaints"] == 1
    assert summary["bounce_rate"] == round(1 / 3, 4) and summary["by_correlation"] == {"verp": 1}
    assert summary["since"] == queries.iso(NOW - 3600)
    assert summary["identities"] == [
        {"identity": "example.com", "recipients": 2, "hard_bounces": 1, "complaints": 1, "hard_bounce_rate": 0.5,
         "complaint_rate": 0.5, "paused": "hard bounce rate 50% over 10%"},
        {"identity": "news.example", "recipients": 1, "hard_bounces": 0, "complaints": 0, "hard_bounce_rate": 0.0,
         "complaint_rate": 0.0, "paused": None}]
    text = "\n".join(queries.stats_lines(summary))
    assert "2 messages to 3 recipients (partial 1, sent 1)" in text and "bounce rate 33.33%" in text
    assert (await queries.stats_summary(any_store, NOW + 60))["identities"] == []
    assert await queries.resume_identity(any_store, "Example.COM") == "example.com"
    with pytest.raises(queries.NotFound, match="not paused"):
        await queries.resume_identity(any_store, "example.com")


SES_EXPORT = ("EmailAddress,Reason,LastUpdateTime\n"
              "bounced@example.com,BOUNCE,2026-11-20T10:00:00.000Z\n"
              "angry@example.org,COMPLAINT,2026-11-21T11:30:00.237Z\n")


async def test_ses_csv_round_trip(any_store):
    rows = queries.parse_suppressions_csv(SES_EXPORT, "in.csv", "")
    assert [(r.address, r.kind, r.reason) for r in rows] == [("bounced@example.com", "import", "bounce"),
                                                            ("angry@example.org", "complaint", "complaint")]
    assert await queries.import_suppressions(any_store, rows) == 2
    out = io.StringIO()
    assert await queries.export_suppressions_csv(any_store, "", out) == 2
    assert sorted(csv.reader(io.StringIO(out.getvalue()))) == sorted(csv.reader(io.StringIO(SES_EXPORT)))
    # importing the same export again changes nothing that shows
    await queries.import_suppressions(any_store, queries.parse_suppressions_csv(out.getvalue(), "again.csv", ""))
    again = io.StringIO()
    await queries.export_suppressions_csv(any_store, "", again)
    assert sorted(again.getvalue().splitlines()) == sorted(out.getvalue().splitlines())
    other = io.StringIO()
    assert await queries.export_suppressions_csv(any_store, "sender.example", other) == 0
    assert other.getvalue() == "EmailAddress,Reason,LastUpdateTime\n"


@pytest.mark.parametrize("text, error", [
    ("Address,Reason\nx@y.example,BOUNCE\n", "in.csv: expected a header row"),
    ("EmailAddress,Reason\nnot-an-address,BOUNCE\n", "in.csv:2: expected an address"),
    ("EmailAddress,Reason\na@b.example,SPAM\n", "in.csv:2:"),
    ("EmailAddress,Reason,LastUpdateTime\na@b.example,BOUNCE,yesterday\n", "in.csv:2: LastUpdateTime"),
])
def test_bad_csv_names_file_and_line(text, error):
    with pytest.raises(queries.QueryError) as exc:
        queries.parse_suppressions_csv(text, "in.csv", "")
    assert str(exc.value).startswith(error) and "\n" not in str(exc.value)


async def test_check_says_whether_and_why(any_store):
    await seed(any_store)
    (bounce,) = await any_store.list_events(EventFilter(kind="bounce"))
    await any_store.upsert_suppressions([
        Suppression("", "gone@example.com", "userunknown", "hard", NOW - 86400, source_event=bounce.event.id),
        Suppression("", "full@example.com", "mailboxfull", "soft", NOW - 86400, expires_at=NOW + 86400),
        Suppression("", "was@example.com", "mailboxfull", "soft", NOW - 86400, expires_at=NOW - 60),
        Suppression("sender.example", "scoped@example.com", "manual", "manual", NOW),
    ])
    hard = await queries.check_address(any_store, "Gone@EXAMPLE.com")
    assert hard["address"] == "gone@example.com" and hard["suppressed"] is True
    assert hard["suppression"]["kind"] == "hard" and hard["suppression"]["created_at"] == queries.iso(NOW - 86400)
    assert queries.check_line(hard) == (f"gone@example.com: suppressed (hard, userunknown) since "
                                        f"{queries.iso(NOW - 86400)}, source event #{bounce.event.id}")
    soft = await queries.check_address(any_store, "full@example.com")
    assert f"until {queries.iso(NOW + 86400)}" in queries.check_line(soft)
    expired = await queries.check_address(any_store, "was@example.com")
    assert expired["suppressed"] is False and queries.check_line(expired) == "was@example.com: not suppressed"
    assert (await queries.check_address(any_store, "scoped@example.com"))["suppressed"] is False
    assert (await queries.check_address(any_store, "scoped@example.com", "sender.example"))["suppressed"] is True
    # add and remove by hand
    assert await queries.add_suppressions(any_store, "", ["New@Example.com"], "manual", days=1, now=NOW) == 1
    assert (await queries.check_address(any_store, "new@example.com"))["suppression"]["expires_at"] == queries.iso(NOW + 86400)
    assert await queries.remove_suppressions(any_store, "", ["new@example.com", "never@example.com"]) == ["never@example.com"]
    with pytest.raises(queries.QueryError, match="not an email address"):
        await queries.add_suppressions(any_store, "", ["nobody"])


async def test_ses_notifications(any_store):
    await seed(any_store)
    notes = await queries.ses_notifications(any_store, EventFilter())
    assert [n["notificationType"] for n in notes] == ["Complaint", "Bounce"]
    bounce = notes[1]
    assert bounce["bounce"]["bounceType"] == "Permanent"
    assert bounce["bounce"]["bouncedRecipients"][0]["emailAddress"] == "b@example.org"
    assert bounce["mail"]["source"] == "app@example.com"
    assert bounce["mail"]["destination"] == ["a@example.org", "b@example.org"]
