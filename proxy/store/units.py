"""Every read and write of the bounce log, once, for both backends.

A unit is a generator: it yields the statements it needs (`fetch`, `execute`, `execute_many`),
receives each one's result, and returns its answer. A backend's driver runs it inside one
transaction: SQLite on its writer thread, several units to a commit (each in a savepoint, so a
failing one fails only its caller); PostgreSQL on a pooled connection. Read-then-write is atomic
because the whole unit is one transaction. Units do no I/O of their own and build model records.
"""
from __future__ import annotations

import json
import re
from operator import attrgetter
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.model import (
    NOTIFIED_KINDS, BounceEvent, BounceType, Correlation, EventEntry, IdentityStats, InboundRecord, InboundResult, Kind,
    LogStats, MAY_HAVE_GONE_OUT, MessageRecord, MessageStatus, MetricCounts, NotificationType, OutboxEntry, ParseState,
    RecipientRecord, RecipientStatus, SoftBounce, Source, StatusSource, Suppression, WebhookTarget,
    SpoolCounts, SpoolEntry, SpoolRecipient, SpoolRecipientState, SpoolState, spool_status,
)
from proxy.store.dialect import Dialect
from proxy.store.query import EventFilter, InboundFilter, MessageFilter, SuppressionFilter


@dataclass(frozen=True, slots=True)
class Op:
    """One statement of a unit: `fetch` -> list of dict rows, `execute` -> rows changed,
    `many` -> None (the same statement for each parameter row)."""

    kind: str
    sql: str
    params: Sequence = ()


def fetch(sql: str, params: Sequence = ()) -> Op:
    return Op("fetch", sql, tuple(params))


def execute(sql: str, params: Sequence = ()) -> Op:
    return Op("execute", sql, tuple(params))


def execute_many(sql: str, rows: list[Sequence]) -> Op:
    return Op("many", sql, rows)


Unit = Generator[Op, Any, Any]

POSSIBLY_SENT_NOTE = ("no final reply recorded: bounceproxy stopped while the message was going upstream, "
                      "which may have accepted it")

# -- columns and rows ---------------------------------------------------------------------------
MESSAGE_COLUMNS = (
    "id created_at client_peer client_user sender header_from message_id subject upstream_id "
    "verp_token size status upstream_reply send_failure content_sha256"
).split()
EVENT_COLUMNS = (
    "at relay_id recipient source kind bounce_type reason status status_source smtp_code "
    "diagnostic remote_mta reporting_mta correlation inbound_id evidence feedback_type parser_version "
    "smtp_command action decided_by"
).split()
# What a reparse (a new parser version) rewrites in place; a replay of the same mail changes nothing.
_REPARSED = ("kind bounce_type reason status status_source smtp_code diagnostic remote_mta reporting_mta correlation "
             "relay_id evidence feedback_type parser_version smtp_command action decided_by").split()
INBOUND_LISTED = ("id, received_at, peer, mail_from, rcpt_tos, length(raw) AS size, sha256, state, parser_version, "
                  "kind, format, error, foreign_recipients, flag, truncated")

# Tables in the order a copy must follow (what a row refers to comes first), with their keys.
TABLES: dict[str, tuple[str, ...]] = {
    "messages": ("id",), "recipients": ("relay_id", "address"), "inbound": ("id",), "events": ("id",),
    "outbox": ("relay_id",), "suppressions": ("scope", "address"), "paused_identities": ("identity",),
    "notifications_seen": ("key",), "webhook_outbox": ("id",),
    "spool": ("relay_id",), "spool_recipients": ("relay_id", "address"),
}


def _insert_message(d: Dialect, rows: int = 1, update: Sequence[str] = MESSAGE_COLUMNS[1:]) -> str:
    """Insert whole rows; a row already there gets only the `update` columns."""
    one = "(" + ", ".join("?" * len(MESSAGE_COLUMNS)) + ")"
    return (f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) VALUES {', '.join([one] * rows)} "
            "ON CONFLICT (id) DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in update))


def _insert_recipients(rows: int = 1) -> str:
    return ("INSERT INTO recipients (relay_id, address, status, reply, position) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?)"] * rows)
            + " ON CONFLICT (relay_id, address) DO UPDATE SET status=excluded.status, reply=excluded.reply")


_INSERT_RECIPIENT = _insert_recipients()


_ONCE_KEY = "COALESCE(recipient, '')"  # with inbound_id, the key of index events_once


def _insert_event(d: Dialect) -> str:
    return (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))}) "
            f"ON CONFLICT (inbound_id, {d.index_expr(_ONCE_KEY)}) "
            "DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in _REPARSED))


# A record's values in column order, in one C call: the relay writes two rows of each message this way.
# Enum members are str subclasses, which both drivers bind as text.
message_row = attrgetter(*MESSAGE_COLUMNS)
event_row = attrgetter(*EVENT_COLUMNS)


def _plain(value):
    """Enum members as their plain values, where a value is compared in Python afterwards."""
    return value.value if hasattr(value, "value") else value


def to_message(row: dict, recipients: list[dict] | None = None) -> MessageRecord:
    m = MessageRecord(**{c: row[c] for c in MESSAGE_COLUMNS})
    m.status = MessageStatus(m.status)
    if recipients is not None:
        m.recipients = [RecipientRecord(r["address"], RecipientStatus(r["status"]), r["reply"]) for r in recipients]
    if "duplicate" in row:
        m.duplicate = bool(row["duplicate"])
    return m


def to_event(row: dict) -> BounceEvent:
    return BounceEvent(
        at=row["at"], source=Source(row["source"]), kind=Kind(row["kind"]), recipient=row["recipient"],
        bounce_type=BounceType(row["bounce_type"]), reason=row["reason"], status=row["status"],
        status_source=StatusSource(row["status_source"]) if row["status_source"] else None,
        smtp_code=row["smtp_code"], diagnostic=row["diagnostic"], remote_mta=row["remote_mta"],
        reporting_mta=row["reporting_mta"], correlation=Correlation(row["correlation"]), relay_id=row["relay_id"],
        inbound_id=row["inbound_id"], evidence=row["evidence"], feedback_type=row["feedback_type"],
        parser_version=row["parser_version"], id=row["id"], smtp_command=row["smtp_command"], action=row["action"],
        decided_by=row["decided_by"],
    )


def to_inbound(row: dict) -> InboundRecord:
    raw = row.get("raw")
    return InboundRecord(
        id=row["id"], received_at=row["received_at"], peer=row["peer"], mail_from=row["mail_from"],
        rcpt_tos=json.loads(row["rcpt_tos"] or "[]"), size=row["size"] if "size" in row else len(raw or b""),
        sha256=row["sha256"], state=ParseState(row["state"]), raw=bytes(raw) if raw is not None else None,
        parser_version=row["parser_version"], kind=row["kind"], format=row["format"], error=row["error"],
        foreign_recipients=row["foreign_recipients"], flag=row["flag"], truncated=row["truncated"],
    )


def to_suppression(row: dict) -> Suppression:
    return Suppression(scope=row["scope"], address=row["address"], reason=row["reason"], kind=row["kind"],
                       created_at=row["created_at"], expires_at=row["expires_at"], source_event=row["source_event"],
                       seq=row["seq"])


def _one(rows: list[dict]) -> dict | None:
    return rows[0] if rows else None


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


# -- events and what applications hear of them ------------------------------------------------------
Targets = tuple[WebhookTarget, ...]


def _record_events(d: Dialect, events: list[BounceEvent], targets: Targets, at: float) -> Unit:
    """Insert events; with webhook targets, each one's outbox rows in the same transaction."""
    if not events:
        return
    if not targets:
        yield execute_many(_insert_event(d), [event_row(e) for e in events])
        return
    for e in events:
        event_id = (yield fetch(_insert_event(d) + " RETURNING id", event_row(e)))[0]["id"]
        kind = NOTIFIED_KINDS.get(e.kind)
        if kind is None or e.correlation == Correlation.FOREIGN_RECIPIENT:  # an attack is no news for the app
            continue
        yield from _enqueue(d, targets, f"event-{event_id}", kind, e.recipient or "", at, relay_id=e.relay_id,
                            event_id=event_id)


def _enqueue(d: Dialect, targets: Targets, key: str, kind: NotificationType, address: str, at: float,
             relay_id: str | None = None, event_id: int | None = None, snapshot: dict | None = None) -> Unit:
    rows = [(key, t.url, kind.value, address.lower(), relay_id, event_id,
             json.dumps(snapshot, sort_keys=True) if snapshot is not None else None, at, at)
            for t in targets if t.wants(kind.value)]
    if rows:
        yield execute_many(
            "INSERT INTO webhook_outbox (key, url, type, address, relay_id, event_id, snapshot, created_at, next_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key, url) DO NOTHING", rows)


# -- the relay --------------------------------------------------------------------------------------
# What the relay learns of a message after its in-flight record: over that row, its final record writes only
# these (half the work of rewriting the row and each of its index entries).
OUTCOME_COLUMNS = ("status", "upstream_reply", "upstream_id", "send_failure")


def _updated(recipients: bool) -> Sequence[str]:
    """The columns a record writes over a row already there: all, or (after an in-flight record, which
    `recipients=False` says) the outcome's."""
    return MESSAGE_COLUMNS[1:] if recipients else OUTCOME_COLUMNS


def record_message(d: Dialect, message: MessageRecord, events: Iterable[BounceEvent] = (), raw: bytes | None = None,
                   recipients: bool = True, targets: Targets = (), at: float = 0.0) -> Unit:
    """A message, its recipients and its synchronous events; a send failure is news for the webhooks too.
    `recipients=False`: its in-flight record holds the rest, recipients included (a row not there is
    written whole all the same)."""
    yield execute(_insert_message(d, update=_updated(recipients)), message_row(message))
    if recipients and message.recipients:
        yield execute_many(_INSERT_RECIPIENT, [(message.id, r.address, _plain(r.status), r.reply, i)
                                               for i, r in enumerate(message.recipients)])
    yield from _record_events(d, list(events), targets, at)
    if targets and message.send_failure and message.status != MessageStatus.PENDING:
        yield from _enqueue(d, targets, f"failure-{message.id}", NotificationType.SEND_FAILURE,
                            _address_of(message.sender), at, relay_id=message.id,
                            snapshot={"send_failure": message.send_failure, "upstream_reply": message.upstream_reply,
                                      "recipients": [r.address for r in message.recipients]})
    if raw is not None:
        yield execute("INSERT INTO outbox (relay_id, raw) VALUES (?, ?) ON CONFLICT (relay_id) DO UPDATE SET raw=excluded.raw",
                      (message.id, raw))


def plain_record(unit, args: tuple) -> tuple[MessageRecord, bool] | None:
    """(message, recipients) when a queued record_message unit only writes the message's rows (no events,
    no raw bytes, no send failure for the webhooks): such units can go into one record_messages."""
    if unit is not record_message or len(args) < 4:
        return None
    message, events, raw, recipients = args[:4]
    if events or raw is not None or message.send_failure:
        return None
    return message, recipients


_ROWS_PER_STATEMENT = 60  # 900 values (15 a message, 5 a recipient x 3): within 999, SQLite's bound before 3.32


def record_messages(d: Dialect, records: list[tuple[MessageRecord, bool]]) -> Unit:
    """Several plain record_message units as one statement per table: what a group commit of the relay's
    in-flight records carries. Its writer gives up the GIL for each statement it runs, and waits to have
    it back while the event loop runs: one statement for a whole group, not two per message."""
    for start in range(0, len(records), _ROWS_PER_STATEMENT):
        chunk = records[start:start + _ROWS_PER_STATEMENT]
        for kind in (True, False):  # whole records, then final ones (_coalesced: no message twice in a group)
            rows = [message for message, recipients in chunk if recipients is kind]
            if rows:
                yield execute(_insert_message(d, len(rows), _updated(kind)), [v for m in rows for v in message_row(m)])
        rows = [(message.id, r.address, _plain(r.status), r.reply, i) for message, recipients in chunk
                if recipients for i, r in enumerate(message.recipients)]
        for at in range(0, len(rows), _ROWS_PER_STATEMENT * 3):
            part = rows[at:at + _ROWS_PER_STATEMENT * 3]
            yield execute(_insert_recipients(len(part)), [v for row in part for v in row])


def mark_possibly_sent(d: Dialect, before: float) -> Unit:
    """Messages a previous run left in flight become `possibly_sent`: nobody will learn the upstream's answer."""
    return (yield execute(
        "UPDATE messages SET status = 'possibly_sent', upstream_reply = CASE WHEN upstream_reply = '' "
        "THEN ? ELSE upstream_reply END WHERE status = 'pending' AND created_at < ?",
        (POSSIBLY_SENT_NOTE, before)))


def outbox_raw(d: Dialect, relay_id: str) -> Unit:
    row = _one((yield fetch("SELECT raw FROM outbox WHERE relay_id = ?", (relay_id,))))
    return bytes(row["raw"]) if row else None


# -- the bounce MX ----------------------------------------------------------------------------------
def store_inbound(d: Dialect, received_at: float, peer: str, mail_from: str, rcpt_tos: list[str], raw: bytes,
                  sha256: str) -> Unit:
    rows = yield fetch(
        "INSERT INTO inbound (received_at, peer, mail_from, rcpt_tos, raw, sha256, state) "
        "VALUES (?, ?, ?, ?, ?, ?, 'pending') RETURNING id",
        (received_at, peer, mail_from, json.dumps(rcpt_tos), raw, sha256))
    return rows[0]["id"]


def get_inbound(d: Dialect, inbound_id: int) -> Unit:
    row = _one((yield fetch("SELECT * FROM inbound WHERE id = ?", (inbound_id,))))
    return to_inbound(row) if row else None


# The first other row holding the same bytes whose events were recorded: what makes a row a duplicate,
# for the bounce MX's check before parsing and for the store's own decision when a result is recorded.
_RECORDED_TWIN = ("SELECT MIN(id) AS id FROM inbound WHERE sha256 = ? AND id != ? AND state = 'parsed' "
                  "AND error IS NULL")


def first_inbound_with_sha(d: Dialect, sha256: str, other_than: int) -> Unit:
    return (yield fetch(_RECORDED_TWIN, (sha256, other_than)))[0]["id"]


def inbound_ids(d: Dialect, states: Sequence[str] | None) -> Unit:
    if states:
        rows = yield fetch(f"SELECT id FROM inbound WHERE state IN ({', '.join('?' * len(states))}) ORDER BY id",
                           tuple(states))
    else:
        rows = yield fetch("SELECT id FROM inbound ORDER BY id")
    return [r["id"] for r in rows]


def list_inbound(d: Dialect, flt: InboundFilter) -> Unit:
    clauses, params = [], []
    if flt.flagged:
        clauses.append("(flag IS NOT NULL OR truncated IS NOT NULL)")
    if flt.state:
        clauses.append("state = ?")
        params.append(flt.state)
    if flt.since is not None:
        clauses.append("received_at >= ?")
        params.append(flt.since)
    if flt.before is not None:
        clauses.append("id < ?")
        params.append(flt.before)
    rows = yield fetch(f"SELECT {INBOUND_LISTED} FROM inbound {_where(clauses)} ORDER BY id DESC LIMIT ?",
                       (*params, flt.limit))
    return [to_inbound(r) for r in rows]


def _address_of(sender: str) -> str:
    return (sender or "").lower()


def record_inbound_result(d: Dialect, inbound_id: int, result: InboundResult, targets: Targets = (),
                          at: float = 0.0) -> Unit:
    """An inbound mail's verdict and events. When `result.sha256` is given and another row holding the same
    bytes was already recorded with its events (a second bounce MX got the same DSN, or a replay raced the
    first), this one is recorded as its duplicate instead, so that a report counts once. Returns whether
    the events were recorded."""
    error, events, duplicate_of = result.error, list(result.events), None
    lock = d.lock("inbound")
    if lock and result.sha256:
        yield fetch(lock)
    if result.sha256:
        first = _one((yield fetch(_RECORDED_TWIN, (result.sha256, inbound_id))))
        if first and first["id"] is not None:
            duplicate_of = first["id"]
            error, events = f"duplicate of inbound #{duplicate_of}", []
    yield from _record_events(d, events, targets, at)
    yield execute(
        "UPDATE inbound SET state=?, parser_version=?, kind=?, format=?, error=?, foreign_recipients=?, flag=?, "
        "truncated=? WHERE id=?",
        (_plain(result.state), result.parser_version, result.kind, result.format, error,
         result.foreign_recipients if events else 0, result.flag if events else None, result.truncated, inbound_id))
    return duplicate_of is None


def record_notification(d: Dialect, at: float, keys: Sequence[str], events: list[BounceEvent],
                        targets: Targets = ()) -> Unit:
    """Events of one outside notification (SES over SNS), once: its keys (SNS MessageId, SES feedbackId)
    are remembered in the same transaction, and when any of them was seen before nothing is added.
    Returns whether the events were recorded."""
    keys = sorted(set(keys))
    # the insert itself decides (a concurrent twin waits on the key's index, then inserts nothing)
    fresh = yield fetch(f"INSERT INTO notifications_seen (key, at) VALUES {', '.join('(?, ?)' for _ in keys)} "
                        "ON CONFLICT (key) DO NOTHING RETURNING key", [v for k in keys for v in (k, at)])
    if len(fresh) != len(keys):
        return False
    yield from _record_events(d, events, targets, at)
    return True


def events_to_reclassify(d: Dialect) -> Unit:
    # SES's own notifications keep SES's verdict as it mapped it (proxy.sns): the classifier alone would lose it
    return [to_event(r) for r in (yield fetch("SELECT * FROM events WHERE kind IN ('bounce', 'delay') "
                                              "AND source != 'ses' ORDER BY id"))]


def update_events_verdicts(d: Dialect, events: Iterable[BounceEvent]) -> Unit:
    rows = [(e.reason, _plain(e.bounce_type), e.status, _plain(e.status_source), e.evidence, e.parser_version,
             e.decided_by, e.id) for e in events]
    if rows:
        yield execute_many("UPDATE events SET reason=?, bounce_type=?, status=?, status_source=?, evidence=?, "
                           "parser_version=?, decided_by=? WHERE id=?", rows)


# -- correlation and the message story --------------------------------------------------------------
def _with_recipients(row: dict | None) -> Unit:
    if row is None:
        return None
    rcpts = yield fetch("SELECT address, status, reply FROM recipients WHERE relay_id = ? ORDER BY position, address",
                        (row["id"],))
    return to_message(row, rcpts)


def get_message(d: Dialect, relay_id: str) -> Unit:
    return (yield from _with_recipients(_one((yield fetch("SELECT * FROM messages WHERE id = ?", (relay_id,))))))


def find_message_by_upstream_id(d: Dialect, upstream_id: str) -> Unit:
    row = _one((yield fetch("SELECT * FROM messages WHERE upstream_id = ? ORDER BY created_at DESC LIMIT 1",
                            (upstream_id,))))
    return (yield from _with_recipients(row))


def find_message_by_message_id(d: Dialect, message_id: str) -> Unit:
    row = _one((yield fetch("SELECT * FROM messages WHERE message_id = ? ORDER BY created_at DESC LIMIT 1",
                            (message_id,))))
    return (yield from _with_recipients(row))


def find_latest_message_to(d: Dialect, address: str, since: float) -> Unit:
    row = _one((yield fetch(
        "SELECT m.* FROM recipients r JOIN messages m ON m.id = r.relay_id "
        f"WHERE {d.ci_eq('r.address')} AND m.created_at >= ? ORDER BY m.created_at DESC LIMIT 1", (address, since))))
    return (yield from _with_recipients(row))


def message_events(d: Dialect, relay_id: str) -> Unit:
    return [to_event(r) for r in (yield fetch("SELECT * FROM events WHERE relay_id = ? ORDER BY at, id", (relay_id,)))]


# -- the log as listed ------------------------------------------------------------------------------
_WENT_OUT = "(" + ", ".join(f"'{s.value}'" for s in MAY_HAVE_GONE_OUT) + ")"


def duplicate_sql(d: Dialect, earlier_only: bool = False) -> str:
    """SQL true for a message `m` that may have reached a recipient who may also have received another
    message with the same client Message-ID (a client's retry after a crash or a lost connection).
    Postfix splitting one message over transactions to different recipients is no duplicate."""
    order = " AND (o.created_at, o.id) < (m.created_at, m.id)" if earlier_only else ""
    # Nested, so that the planner starts from the other messages with this Message-ID (an index lookup that
    # almost always finds none) and never from the recipients: a newsletter's thousands of messages to one
    # address made the flat join quadratic (15 s for `stats` over 6,000 messages).
    return (
        f"(m.message_id IS NOT NULL AND m.status IN {_WENT_OUT} AND EXISTS (SELECT 1 FROM messages o "
        f"WHERE o.message_id = m.message_id AND o.id != m.id AND o.status IN {_WENT_OUT}{order} "
        "AND EXISTS (SELECT 1 FROM recipients rm JOIN recipients ro ON ro.relay_id = o.id AND ro.status = 'accepted' "
        f"AND {d.ci_same('ro.address', 'rm.address')} WHERE rm.relay_id = m.id AND rm.status = 'accepted')))"
    )


def list_messages(d: Dialect, flt: MessageFilter) -> Unit:
    clauses, params = [], []
    if flt.since is not None:
        clauses.append("m.created_at >= ?")
        params.append(flt.since)
    if flt.recipient:
        clauses.append(f"EXISTS (SELECT 1 FROM recipients r WHERE r.relay_id = m.id AND {d.ci_eq('r.address')})")
        params.append(flt.recipient)
    if flt.status:
        clauses.append("m.status = ?")
        params.append(flt.status)
    if flt.sender:
        clauses.append(d.ci_eq("m.sender"))
        params.append(flt.sender)
    if flt.duplicates:
        clauses.append(duplicate_sql(d))
    if flt.before is not None:
        clauses.append("(m.created_at, m.id) < (?, ?)")
        params.extend(flt.before)
    rows = yield fetch(f"SELECT m.*, {duplicate_sql(d)} AS duplicate FROM messages m {_where(clauses)} "
                       "ORDER BY m.created_at DESC, m.id DESC LIMIT ?", (*params, flt.limit))
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    rcpts = yield fetch(f"SELECT relay_id, address, status, reply FROM recipients WHERE relay_id IN "
                        f"({', '.join('?' * len(ids))}) ORDER BY relay_id, position, address", ids)
    by_message: dict[str, list[dict]] = {}
    for r in rcpts:
        by_message.setdefault(r["relay_id"], []).append(r)
    return [to_message(r, by_message.get(r["id"], [])) for r in rows]


def list_events(d: Dialect, flt: EventFilter) -> Unit:
    clauses, params = [], []
    if flt.since is not None:
        clauses.append("e.at >= ?")
        params.append(flt.since)
    if flt.recipient:
        clauses.append(d.ci_eq("e.recipient"))
        params.append(flt.recipient)
    for column, value in (("bounce_type", flt.bounce_type), ("reason", flt.reason), ("source", flt.source),
                          ("kind", flt.kind), ("correlation", flt.correlation), ("relay_id", flt.relay_id)):
        if value:
            clauses.append(f"e.{column} = ?")
            params.append(value)
    if flt.before is not None:
        clauses.append("(e.at, e.id) < (?, ?)")
        params.extend(flt.before)
    rows = yield fetch(
        "SELECT e.*, m.sender AS m_sender, m.message_id AS m_message_id, m.upstream_id AS m_upstream_id, "
        f"m.subject AS m_subject FROM events e LEFT JOIN messages m ON m.id = e.relay_id {_where(clauses)} "
        "ORDER BY e.at DESC, e.id DESC LIMIT ?", (*params, flt.limit))
    return [EventEntry(to_event(r), r["m_sender"], r["m_message_id"], r["m_upstream_id"], r["m_subject"]) for r in rows]


def stats(d: Dialect, since: float) -> Unit:
    msgs = yield fetch("SELECT status, COUNT(*) AS n FROM messages WHERE created_at >= ? GROUP BY status", (since,))
    rcpts = yield fetch("SELECT COUNT(*) AS n FROM recipients r JOIN messages m ON m.id = r.relay_id "
                        "WHERE m.created_at >= ?", (since,))
    events = yield fetch(
        "SELECT source, kind, bounce_type, reason, COUNT(*) AS n FROM events WHERE at >= ? "
        "AND correlation != 'foreign_recipient' "  # addresses never sent to are no bounce rate of ours
        "GROUP BY source, kind, bounce_type, reason ORDER BY n DESC, source, kind, bounce_type, reason", (since,))
    correlations = yield fetch(
        "SELECT correlation, COUNT(*) AS n FROM events WHERE at >= ? AND source = 'async' GROUP BY correlation",
        (since,))
    duplicates = yield fetch(
        f"SELECT COUNT(*) AS n FROM messages m WHERE m.created_at >= ? AND {duplicate_sql(d, earlier_only=True)}",
        (since,))
    return LogStats(
        messages={r["status"]: int(r["n"]) for r in msgs},
        recipients=int(rcpts[0]["n"]) if rcpts else 0,
        events=[{**r, "n": int(r["n"])} for r in events],
        correlations={r["correlation"]: int(r["n"]) for r in correlations},
        duplicates=int(duplicates[0]["n"]),
    )


def identity_stats(d: Dialect, since: float, identity: str | None = None) -> Unit:
    """Per sending identity (sender domain), or for one: recipients, hard bounces, complaints of the
    messages sent since `since`. Foreign recipients never count against a sender."""
    only = "WHERE identity = ?" if identity else ""
    rows = yield fetch(
        f"WITH m AS (SELECT * FROM (SELECT id, {d.domain_of('sender')} AS identity "
        f"FROM messages WHERE created_at >= ?) ids {only}), "
        "r AS (SELECT m.identity, COUNT(*) AS n FROM recipients JOIN m ON m.id = recipients.relay_id "
        "GROUP BY m.identity), "
        "e AS (SELECT m.identity, SUM(CASE WHEN kind = 'bounce' AND bounce_type = 'hard' THEN 1 ELSE 0 END) AS hard, "
        "SUM(CASE WHEN kind = 'complaint' THEN 1 ELSE 0 END) AS complaints FROM events JOIN m ON m.id = events.relay_id "
        "WHERE events.correlation != 'foreign_recipient' GROUP BY m.identity) "
        "SELECT r.identity, r.n AS recipients, COALESCE(e.hard, 0) AS hard_bounces, "
        "COALESCE(e.complaints, 0) AS complaints FROM r LEFT JOIN e ON e.identity = r.identity "
        "ORDER BY recipients DESC, r.identity",
        (since, identity) if identity else (since,))
    return [IdentityStats(r["identity"], int(r["recipients"]), int(r["hard_bounces"]), int(r["complaints"]))
            for r in rows]


def metric_counts(d: Dialect, now: float) -> Unit:
    def by(rows, key):
        return {r[key]: int(r["n"]) for r in rows}
    messages = yield fetch("SELECT status, COUNT(*) AS n FROM messages GROUP BY status")
    recipients = yield fetch("SELECT status, COUNT(*) AS n FROM recipients GROUP BY status")
    events = yield fetch("SELECT source, kind, bounce_type, COUNT(*) AS n FROM events GROUP BY source, kind, bounce_type")
    inbound = yield fetch("SELECT state, COUNT(*) AS n FROM inbound GROUP BY state")
    correlations = yield fetch("SELECT correlation, COUNT(*) AS n FROM events WHERE source = 'async' GROUP BY correlation")
    flags = yield fetch("SELECT 'foreign_recipients' AS flag, COUNT(*) AS n FROM inbound WHERE foreign_recipients > 0 "
                        "UNION ALL SELECT 'truncated', COUNT(*) FROM inbound WHERE truncated IS NOT NULL")
    last_event = yield fetch("SELECT MAX(at) AS at FROM events")
    last_message = yield fetch("SELECT MAX(created_at) AS at FROM messages")
    suppressions = yield fetch("SELECT kind, COUNT(*) AS n FROM suppressions WHERE expires_at IS NULL OR expires_at > ? "
                               "GROUP BY kind", (now,))
    return MetricCounts(
        messages=by(messages, "status"), recipients=by(recipients, "status"),
        events=[(r["source"], r["kind"], r["bounce_type"], int(r["n"])) for r in events],
        inbound=by(inbound, "state"), correlations=by(correlations, "correlation"), inbound_flags=by(flags, "flag"),
        suppressions=by(suppressions, "kind"), last_event_at=last_event[0]["at"], last_message_at=last_message[0]["at"],
    )



def _bucketed(time_sql: str, columns: str, source: str) -> str:
    """`SELECT bucket, <columns>, COUNT(*) AS n` over `source` (FROM ... WHERE ..., whose time is `time_sql`)
    grouped per bucket; parameters: bucket seconds (int), bucket seconds (float), then the source's. CAST
    truncates on SQLite and rounds on PostgreSQL, so an index one too high is taken back: the same buckets on
    both, without FLOOR (SQLite has it only when built with its math functions)."""
    extra = f", {columns}" if columns else ""
    return (f"SELECT bucket{extra}, COUNT(*) AS n FROM (SELECT k - CASE WHEN k * ? > t THEN 1 ELSE 0 END AS bucket{extra} "
            f"FROM (SELECT CAST({time_sql} / ? AS BIGINT) AS k, {time_sql} AS t{extra} {source}) s) b "
            f"GROUP BY bucket{extra}")


def activity(d: Dialect, since: float, bucket_seconds: int) -> Unit:
    """Per bucket of `bucket_seconds` (aligned on the epoch) since `since`: messages and their recipients by
    when the message was relayed; hard, soft and undetermined bounces and complaints by when they were
    recorded, foreign recipients left out as in `stats`. Buckets with nothing are absent; oldest first."""
    b, bf = int(bucket_seconds), float(bucket_seconds)
    messages = yield fetch(_bucketed("created_at", "", "FROM messages WHERE created_at >= ?"), (b, bf, since))
    recipients = yield fetch(_bucketed("m.created_at", "", "FROM recipients r JOIN messages m ON m.id = r.relay_id "
                                                           "WHERE m.created_at >= ?"), (b, bf, since))
    events = yield fetch(_bucketed("at", "kind, bounce_type", "FROM events WHERE at >= ? AND kind IN ('bounce', "
                                   "'complaint') AND correlation != 'foreign_recipient'"), (b, bf, since))
    out: dict[int, dict] = {}

    def row(bucket) -> dict:
        return out.setdefault(int(bucket), {"bucket_start": float(int(bucket) * b), "messages": 0, "recipients": 0,
                                            "hard": 0, "soft": 0, "undetermined": 0, "complaints": 0})
    for r in messages:
        row(r["bucket"])["messages"] = int(r["n"])
    for r in recipients:
        row(r["bucket"])["recipients"] = int(r["n"])
    for r in events:
        key = "complaints" if r["kind"] == "complaint" else r["bounce_type"]
        if key in ("hard", "soft", "undetermined", "complaints"):
            row(r["bucket"])[key] += int(r["n"])
    return [out[k] for k in sorted(out)]


# -- the suppression list ---------------------------------------------------------------------------
def suppression_seq(d: Dialect) -> Unit:
    return (yield fetch("SELECT COALESCE(MAX(seq), 0) AS seq FROM suppressions"))[0]["seq"]


def suppressions_after(d: Dialect, seq: int) -> Unit:
    rows = yield fetch("SELECT scope, address, seq FROM suppressions WHERE seq > ? ORDER BY seq", (seq,))
    return [(r["scope"], r["address"], r["seq"]) for r in rows]


def get_suppression(d: Dialect, scope: str, address: str) -> Unit:
    row = _one((yield fetch("SELECT * FROM suppressions WHERE scope = ? AND address = ?", (scope, address))))
    return to_suppression(row) if row else None


def upsert_suppressions(d: Dialect, rows: Iterable[Suppression], targets: Targets = (), at: float = 0.0) -> Unit:
    """Add or replace entries (a later one wins). Each write takes the next `seq`, under a lock that
    makes seq order commit order, so another instance polling `seq > last` misses none."""
    rows = list(rows)
    if not rows:
        return
    lock = d.lock("suppressions")
    if lock:
        yield fetch(lock)
    seq = (yield fetch("SELECT COALESCE(MAX(seq), 0) AS seq FROM suppressions"))[0]["seq"]
    yield execute_many(
        "INSERT INTO suppressions (scope, address, reason, kind, source_event, created_at, expires_at, seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, address) DO UPDATE SET reason=excluded.reason, "
        "kind=excluded.kind, source_event=excluded.source_event, created_at=excluded.created_at, "
        "expires_at=excluded.expires_at, seq=excluded.seq",
        [(s.scope, s.address, s.reason, s.kind, s.source_event, s.created_at, s.expires_at, seq + i)
         for i, s in enumerate(rows, start=1)])
    for i, s in enumerate(rows, start=1) if targets else ():
        yield from _enqueue(d, targets, f"suppression-{s.scope}-{s.address}-{seq + i}",
                            NotificationType.SUPPRESSION_ADDED, s.address, at, event_id=s.source_event,
                            snapshot=_suppression_snapshot(s))


def _suppression_snapshot(s: Suppression) -> dict:
    return {"scope": s.scope, "address": s.address, "reason": s.reason, "kind": s.kind, "created_at": s.created_at,
            "expires_at": s.expires_at, "source_event": s.source_event}


def delete_suppression(d: Dialect, scope: str, address: str, targets: Targets = (), at: float = 0.0) -> Unit:
    row = _one((yield fetch("DELETE FROM suppressions WHERE scope = ? AND address = ? RETURNING *", (scope, address))))
    if row is None:  # never there, or another instance removed it first
        return False
    if targets:
        s = to_suppression(row)
        yield from _enqueue(d, targets, f"unsuppression-{scope}-{address}-{s.seq}-{at!r}",
                            NotificationType.SUPPRESSION_REMOVED, address, at, snapshot=_suppression_snapshot(s))
    return True


def list_suppressions(d: Dialect, flt: SuppressionFilter) -> Unit:
    clauses, params = [], []
    if flt.address:
        clauses.append("address = ?")
        params.append(flt.address)
    if flt.scope is not None:
        clauses.append("scope = ?")
        params.append(flt.scope)
    if flt.search:
        # the text as typed: an address's own "_" or "%" is matched, never taken as a wildcard
        clauses.append("address LIKE ? ESCAPE '!'")
        params.append("%" + re.sub(r"([!%_])", r"!\1", flt.search.lower()) + "%")
    if flt.before is not None:
        clauses.append("(created_at < ? OR (created_at = ? AND (scope, address) > (?, ?)))")
        params.extend((flt.before[0], flt.before[0], flt.before[1], flt.before[2]))
    limit = "LIMIT ?" if flt.limit else ""
    rows = yield fetch(f"SELECT * FROM suppressions {_where(clauses)} ORDER BY created_at DESC, scope, address {limit}",
                       (*params, *([flt.limit] if flt.limit else [])))
    return [to_suppression(r) for r in rows]


def _soft_where(d: Dialect, address: str, since: float, excluded_reasons, trusted_correlations) -> tuple[str, tuple]:
    """Soft bounces that may count against the address: since `since` and its last delivery, and
    only those that could act (synchronous, or correlated by trusted evidence)."""
    excluded = sorted(excluded_reasons)
    trusted = sorted(trusted_correlations)
    last_delivery = f"COALESCE((SELECT MAX(at) FROM events WHERE {d.ci_eq('recipient')} AND kind = 'delivered'), 0)"
    not_excluded = f"AND e.reason NOT IN ({', '.join('?' * len(excluded))}) " if excluded else ""
    return (
        f"{d.ci_eq('e.recipient')} AND e.kind = 'bounce' AND e.bounce_type = 'soft' {not_excluded}"
        f"AND (e.source = 'sync' OR e.correlation IN ({', '.join('?' * len(trusted)) or 'NULL'})) "
        f"AND e.at >= {d.greatest('?', last_delivery)}",
        (address, *excluded, *trusted, float(since), address),
    )


def soft_bounce_span(d: Dialect, address: str, since: float, excluded_reasons, trusted_correlations) -> Unit:
    where, params = _soft_where(d, address, since, excluded_reasons, trusted_correlations)
    return (yield fetch(f"SELECT MAX(e.at) - MIN(e.at) AS span FROM events e WHERE {where}", params))[0]["span"]


def soft_bounces(d: Dialect, address: str, since: float, excluded_reasons, trusted_correlations) -> Unit:
    where, params = _soft_where(d, address, since, excluded_reasons, trusted_correlations)
    rows = yield fetch(
        "SELECT e.at, e.relay_id, m.message_id, m.content_sha256, m.verp_token "
        f"FROM events e LEFT JOIN messages m ON m.id = e.relay_id WHERE {where} ORDER BY e.at, e.id", params)
    return [SoftBounce(r["at"], r["relay_id"], r["message_id"], r["content_sha256"], r["verp_token"]) for r in rows]


def event_id_for(d: Dialect, event: BounceEvent) -> Unit:
    if event.inbound_id is not None:
        rows = yield fetch("SELECT id FROM events WHERE inbound_id = ? AND COALESCE(recipient, '') = ?",
                           (event.inbound_id, event.recipient or ""))
    else:
        rows = yield fetch("SELECT id FROM events WHERE relay_id IS NOT DISTINCT FROM ? AND recipient = ? AND source = ? "
                           "ORDER BY id DESC LIMIT 1", (event.relay_id, event.recipient, _plain(event.source)))
    return rows[0]["id"] if rows else None


# -- the webhooks' outbox ---------------------------------------------------------------------------
def to_outbox(row: dict) -> OutboxEntry:
    return OutboxEntry(
        id=row["id"], key=row["key"], url=row["url"], type=NotificationType(row["type"]), address=row["address"],
        created_at=row["created_at"], state=row["state"], attempts=row["attempts"], next_at=row["next_at"],
        relay_id=row["relay_id"], event_id=row["event_id"],
        snapshot=json.loads(row["snapshot"]) if row["snapshot"] else None, last_error=row["last_error"],
        delivered_at=row["delivered_at"])


def claim_webhooks(d: Dialect, owner: str, now: float, lease_seconds: float, limit: int) -> Unit:
    """Due entries at the head of their (url, address) queue, leased to `owner` so that no other instance
    sends them meanwhile. An entry waits while an earlier one of its queue is pending: order per address."""
    rows = yield from _lease(
        d, "webhook_outbox", "id", "w.state = 'pending' AND NOT EXISTS (SELECT 1 FROM webhook_outbox o "
        "WHERE o.url = w.url AND o.address = w.address AND o.state = 'pending' AND o.id < w.id)", "w.id",
        owner, now, lease_seconds, limit)
    return [to_outbox(r) for r in rows]


def _lease(d: Dialect, table: str, key: str, due: str, order: str, owner: str, now: float, lease_seconds: float,
           limit: int) -> Unit:
    """Rows of `table` (aliased w) that are `due`, whose time has come (next_at) and that no live lease
    holds, leased to `owner` until now + lease_seconds; returns them whole, in `order`. On PostgreSQL
    rows another instance is claiming are skipped, not waited for."""
    rows = yield fetch(f"SELECT w.{key} FROM {table} w WHERE {due} AND w.next_at <= ? "
                       f"AND (w.lease_until IS NULL OR w.lease_until < ?) ORDER BY {order} LIMIT ?{d.skip_locked()}",
                       (now, now, limit))
    if not rows:
        return []
    ids = [r[key] for r in rows]
    marks = ", ".join("?" * len(ids))
    yield execute(f"UPDATE {table} SET lease_owner = ?, lease_until = ? WHERE {key} IN ({marks})",
                  (owner, now + lease_seconds, *ids))
    return (yield fetch(f"SELECT * FROM {table} w WHERE {key} IN ({marks}) ORDER BY {order}", ids))


_LEASED = ("spool", "webhook_outbox")


def lease_owners(d: Dialect, table: str, now: float) -> Unit:
    """Who holds live leases on `table` (the spool or the webhooks' outbox)."""
    assert table in _LEASED
    rows = yield fetch(f"SELECT DISTINCT lease_owner FROM {table} WHERE lease_owner IS NOT NULL AND lease_until >= ?",
                       (now,))
    return sorted(r["lease_owner"] for r in rows)


def release_leases(d: Dialect, table: str, owners: Sequence[str]) -> Unit:
    """Free what these holders (gone) leased: it is due again at once."""
    assert table in _LEASED
    if not owners:
        return 0
    return (yield execute(f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL "
                          f"WHERE lease_owner IN ({', '.join('?' * len(owners))})", list(owners)))


def webhook_delivered(d: Dialect, entry_id: int, owner: str, at: float) -> Unit:
    return (yield execute("UPDATE webhook_outbox SET state = 'delivered', delivered_at = ?, attempts = attempts + 1, "
                          "last_error = NULL, lease_owner = NULL, lease_until = NULL WHERE id = ? AND state = 'pending'",
                          (at, entry_id))) > 0


def webhook_failed(d: Dialect, entry_id: int, owner: str, error: str, next_at: float | None) -> Unit:
    """A failed try: the entry waits until `next_at`, or is given up (`dead`) when that is None."""
    return (yield execute(
        "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = ?, lease_owner = NULL, lease_until = NULL, "
        "state = CASE WHEN ? THEN 'dead' ELSE 'pending' END, next_at = COALESCE(?, next_at) "
        "WHERE id = ? AND state = 'pending'", (error[:500], next_at is None, next_at, entry_id))) > 0


def list_webhooks(d: Dialect, state: str | None, limit: int) -> Unit:
    where = "WHERE state = ?" if state else ""
    rows = yield fetch(f"SELECT * FROM webhook_outbox {where} ORDER BY id DESC LIMIT ?",
                       (state, limit) if state else (limit,))
    return [to_outbox(r) for r in rows]


def retry_webhooks(d: Dialect, ids: Sequence[int] | None, now: float) -> Unit:
    """Given-up entries (or these ids) go back to pending, due now, with their count of tries reset."""
    if ids:
        return (yield execute(f"UPDATE webhook_outbox SET state = 'pending', attempts = 0, next_at = ?, lease_until = NULL "
                              f"WHERE state != 'delivered' AND id IN ({', '.join('?' * len(ids))})", (now, *ids)))
    return (yield execute("UPDATE webhook_outbox SET state = 'pending', attempts = 0, next_at = ?, lease_until = NULL "
                          "WHERE state = 'dead'", (now,)))


def webhook_counts(d: Dialect) -> Unit:
    rows = yield fetch("SELECT state, COUNT(*) AS n, MIN(created_at) AS oldest FROM webhook_outbox GROUP BY state")
    return {r["state"]: (int(r["n"]), r["oldest"]) for r in rows}


def get_event(d: Dialect, event_id: int) -> Unit:
    row = _one((yield fetch("SELECT * FROM events WHERE id = ?", (event_id,))))
    return to_event(row) if row else None


# -- the reputation guard ---------------------------------------------------------------------------
def pause_identity(d: Dialect, identity: str, at: float, why: str) -> Unit:
    yield execute("INSERT INTO paused_identities (identity, paused_at, why) VALUES (?, ?, ?) "
                  "ON CONFLICT (identity) DO UPDATE SET paused_at=excluded.paused_at, why=excluded.why",
                  (identity, at, why))


def resume_identity(d: Dialect, identity: str) -> Unit:
    return (yield execute("DELETE FROM paused_identities WHERE identity = ?", (identity,))) > 0


def paused_identities(d: Dialect) -> Unit:
    return {r["identity"]: r["why"] for r in (yield fetch("SELECT identity, why FROM paused_identities ORDER BY identity"))}


# -- moving a log between backends ------------------------------------------------------------------
def table_rows(d: Dialect, table: str, after: tuple | None, limit: int) -> Unit:
    """Rows of one table in key order, after the key `after`: a copy reads any size in pages."""
    key = TABLES[table]
    cond = f"WHERE ({', '.join(key)}) > ({', '.join('?' * len(key))})" if after else ""
    rows = yield fetch(f"SELECT * FROM {table} {cond} ORDER BY {', '.join(key)} LIMIT ?", (*(after or ()), limit))
    return [{k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in r.items()} for r in rows]


def insert_rows(d: Dialect, table: str, rows: list[dict]) -> Unit:
    """Insert rows a copy read; rows already there (same key) are left alone, so a second copy adds nothing.
    Ids assigned by the database move past the copied ones."""
    if not rows:
        return
    TABLES[table]  # only known tables
    columns = list(rows[0])
    yield execute_many(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING",
        [tuple(r[c] for c in columns) for r in rows])
    move_ids = d.after_explicit_ids(table)
    if move_ids:
        yield fetch(move_ids)


def count_rows(d: Dialect, table: str) -> Unit:
    TABLES[table]
    return int((yield fetch(f"SELECT COUNT(*) AS n FROM {table}"))[0]["n"])


# -- the spool --------------------------------------------------------------------------------------
# Spool mode (issue 16): a message the client was told 250 for waits in `spool` (its body as it goes upstream)
# with one `spool_recipients` row per recipient, until none is pending; then both go and the bounce log keeps
# the story. Delivery workers claim due rows with a lease, so that several instances never send one twice.
SPOOL_LISTED = ("relay_id, created_at, sender, mail_options, size, state, attempts, next_at, expires_at, last_error, "
                "held_reason, lease_owner, lease_until")


def _to_spool(row: dict, recipients: list[dict], message: MessageRecord | None = None) -> SpoolEntry:
    body = row.get("body")
    return SpoolEntry(
        relay_id=row["relay_id"], created_at=row["created_at"], sender=row["sender"],
        mail_options=json.loads(row["mail_options"] or "[]"), state=SpoolState(row["state"]), next_at=row["next_at"],
        expires_at=row["expires_at"], size=int(row["size"]), attempts=row["attempts"], last_error=row["last_error"],
        lease_owner=row["lease_owner"], lease_until=row["lease_until"], held_reason=row["held_reason"],
        recipients=[SpoolRecipient(r["address"], r["position"], SpoolRecipientState(r["state"]), r["attempts"],
                                   r["last_reply"]) for r in recipients],
        body=bytes(body) if body is not None else None, message=message)


def _spool_recipients(ids: Sequence[str]) -> Unit:
    """Spool recipients of these messages, by message, in the client's order."""
    if not ids:
        return {}
    rows = yield fetch(f"SELECT * FROM spool_recipients WHERE relay_id IN ({', '.join('?' * len(ids))}) "
                       "ORDER BY relay_id, position, address", tuple(ids))
    out: dict[str, list[dict]] = {i: [] for i in ids}
    for r in rows:
        out[r["relay_id"]].append(r)
    return out


def spool_accept(d: Dialect, message: MessageRecord, events: list[BounceEvent], entry: SpoolEntry,
                 targets: Targets = (), at: float = 0.0) -> Unit:
    """The message (status queued), its recipients and synchronous events, and its spool rows: one transaction,
    committed before the client hears 250."""
    yield from record_message(d, message, events, None, True, targets, at)
    yield execute(
        "INSERT INTO spool (relay_id, created_at, sender, mail_options, body, size, state, attempts, next_at, "
        "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
        (entry.relay_id, entry.created_at, entry.sender, json.dumps(entry.mail_options), entry.body, entry.size,
         _plain(entry.state), entry.next_at, entry.expires_at))
    yield execute_many(
        "INSERT INTO spool_recipients (relay_id, address, position, state) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (relay_id, address) DO NOTHING",
        [(entry.relay_id, r.address, r.position, _plain(r.state)) for r in entry.recipients])


def claim_spool(d: Dialect, owner: str, now: float, lease_seconds: float, limit: int) -> Unit:
    """Due queued messages no live lease holds, leased to `owner` until now + lease_seconds, oldest due first;
    each with its body, spool recipients and bounce-log message. On PostgreSQL rows another instance is
    claiming are skipped, not waited for."""
    full = yield from _lease(d, "spool", "relay_id", "w.state = 'queued'", "w.next_at, w.relay_id", owner, now,
                             lease_seconds, limit)
    if not full:
        return []
    recipients = yield from _spool_recipients([r["relay_id"] for r in full])
    out = []
    for row in full:
        message = yield from get_message(d, row["relay_id"])
        out.append(_to_spool(row, recipients[row["relay_id"]], message))
    return out


def spool_attempt(d: Dialect, entry: SpoolEntry, owner: str, message: MessageRecord, events: list[BounceEvent],
                  targets: Targets = (), at: float = 0.0) -> Unit:
    """What one delivery attempt came to, in one transaction: the message and its recipients' replies (an upstream
    250 among them) with their events, each spool recipient's state, and then the spool row: gone when no
    recipient is pending, else its state, next_at, error and hold with the lease released. Returns whether the
    lease was still `owner`'s (False: it expired and another worker may have claimed the message)."""
    lease = _one((yield fetch("SELECT lease_owner FROM spool WHERE relay_id = ?", (entry.relay_id,))))
    yield from record_message(d, message, events, None, True, targets, at)
    yield execute_many(
        "UPDATE spool_recipients SET state = ?, attempts = ?, last_reply = ? WHERE relay_id = ? AND address = ?",
        [(_plain(r.state), r.attempts, r.last_reply, entry.relay_id, r.address) for r in entry.recipients])
    if not entry.pending:
        yield execute("DELETE FROM spool_recipients WHERE relay_id = ?", (entry.relay_id,))
        yield execute("DELETE FROM spool WHERE relay_id = ?", (entry.relay_id,))
    else:
        yield execute(
            "UPDATE spool SET state = ?, attempts = ?, next_at = ?, last_error = ?, held_reason = ?, lease_owner = NULL, "
            "lease_until = NULL WHERE relay_id = ?",
            (_plain(entry.state), entry.attempts, entry.next_at, entry.last_error, entry.held_reason, entry.relay_id))
    return lease is not None and lease["lease_owner"] == owner


def spool_unlease(d: Dialect, relay_id: str, owner: str, next_at: float) -> Unit:
    """Give a claimed message back unattempted (shutting down, the daily quota reached), due at `next_at`."""
    return (yield execute("UPDATE spool SET lease_owner = NULL, lease_until = NULL, next_at = ? "
                          "WHERE relay_id = ? AND lease_owner = ?", (next_at, relay_id, owner))) > 0


def list_spool(d: Dialect, state: str | None, limit: int, relay_id: str | None = None) -> Unit:
    """Spooled messages, oldest first, without their bodies (`relay_id`: that one, with its body)."""
    if relay_id is not None:
        rows = yield fetch("SELECT * FROM spool WHERE relay_id = ?", (relay_id,))
    elif state:
        rows = yield fetch(f"SELECT {SPOOL_LISTED} FROM spool WHERE state = ? ORDER BY created_at, relay_id LIMIT ?",
                           (state, limit))
    else:
        rows = yield fetch(f"SELECT {SPOOL_LISTED} FROM spool ORDER BY created_at, relay_id LIMIT ?", (limit,))
    recipients = yield from _spool_recipients([r["relay_id"] for r in rows])
    return [_to_spool(r, recipients[r["relay_id"]]) for r in rows]


def spool_counts(d: Dialect, now: float) -> Unit:
    rows = yield fetch("SELECT state, COUNT(*) AS n, MIN(created_at) AS oldest, "
                       "SUM(CASE WHEN state = 'queued' AND next_at <= ? THEN 1 ELSE 0 END) AS due, "
                       "SUM(CASE WHEN lease_until IS NOT NULL AND lease_until >= ? THEN 1 ELSE 0 END) AS leased "
                       "FROM spool GROUP BY state", (now, now))
    pending = (yield fetch("SELECT COUNT(*) AS n FROM spool_recipients WHERE state = 'pending'"))[0]["n"]
    counts = SpoolCounts(recipients=int(pending))
    for r in rows:
        if r["state"] in ("queued", "held"):
            setattr(counts, r["state"], int(r["n"]))
        counts.due += int(r["due"] or 0)
        counts.in_flight += int(r["leased"] or 0)
        if r["oldest"] is not None and (counts.oldest_at is None or r["oldest"] < counts.oldest_at):
            counts.oldest_at = r["oldest"]
    return counts


def _spool_ids(ids: Sequence[str] | None, state: str) -> tuple[str, tuple]:
    if ids:
        return f"state = ? AND relay_id IN ({', '.join('?' * len(ids))})", (state, *ids)
    return "state = ?", (state,)


def spool_control(d: Dialect, action: str, ids: Sequence[str] | None, now: float, why: str = "",
                  targets: Targets = ()) -> Unit:
    """An operator's change, returns how many messages it touched. `retry`: queued ones due now; `hold`: queued
    ones kept back (`why`); `release`: held ones queued again, due now; `delete`: these messages (ids required)
    leave the spool, their pending recipients recorded as deleted, never sent."""
    if action == "retry":
        where, params = _spool_ids(ids, "queued")
        return (yield execute(f"UPDATE spool SET next_at = ? WHERE {where}", (now, *params)))
    if action == "hold":
        where, params = _spool_ids(ids, "queued")
        return (yield execute(f"UPDATE spool SET state = 'held', held_reason = ? WHERE {where}", (why, *params)))
    if action == "release":
        where, params = _spool_ids(ids, "held")
        return (yield execute(f"UPDATE spool SET state = 'queued', held_reason = NULL, next_at = ? WHERE {where}",
                              (now, *params)))
    if action != "delete" or not ids:
        raise ValueError(f"spool_control: {action!r} (delete needs ids)")
    done = 0
    for relay_id in ids:
        if not (yield execute("DELETE FROM spool WHERE relay_id = ?", (relay_id,))):
            continue
        done += 1
        pending = {r["address"] for r in (yield fetch(
            "SELECT address FROM spool_recipients WHERE relay_id = ? AND state = 'pending'", (relay_id,)))}
        yield execute("DELETE FROM spool_recipients WHERE relay_id = ?", (relay_id,))
        message = yield from get_message(d, relay_id)
        if message is None:
            continue
        for r in message.recipients:
            if r.address in pending:
                r.status, r.reply = RecipientStatus.DEFERRED, f"deleted from the spool by the operator{why and ': ' + why}"
        message.status = spool_status(message.recipients)
        yield from record_message(d, message, [], None, True, targets, now)
    return done
