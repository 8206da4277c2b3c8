"""What the CLI and the API both show: one place, two front ends; neither reads the store any other way.

Every function here takes an open Store (proxy.store.Store) and answers with plain data ready for
JSON (dicts of str, int, float, bool, None and lists, times as ISO 8601 UTC), or text lines for the
CLI. The names of ids follow one rule everywhere: `id` is a record's own key, `relay_id` the relay's
id of a message (a message row's `id`), `message_id` the client's Message-ID header.

Failures a user can cause (no such message, a bad CSV row) raise QueryError or NotFound, with one
line saying what; the front ends turn them into an exit code or an HTTP status.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import IO, Any

from proxy.model import BounceEvent, EventEntry, IdentityStats, InboundRecord, LogStats, MessageRecord, Suppression
from proxy.store.query import EventFilter, InboundFilter, MessageFilter, SuppressionFilter

__all__ = [
    "QueryError", "NotFound", "iso", "EVENT_FIELDS", "EVENT_COLUMNS", "EXPLAIN_COLUMNS", "MESSAGE_FIELDS",
    "MESSAGE_COLUMNS", "INBOUND_COLUMNS", "SUPPRESSION_COLUMNS", "event_row", "message_row", "inbound_row",
    "suppression_row", "list_events", "list_messages", "list_inbound", "list_suppressions", "message_story",
    "message_raw", "inbound_raw", "story_lines", "why", "summarize", "stats_summary", "stats_lines",
    "ses_notifications", "SES_CSV_HEADER", "export_suppressions_csv", "parse_suppressions_csv", "import_suppressions",
    "add_suppressions", "remove_suppressions", "check_address", "check_line", "resume_identity",
    "encode_cursor", "decode_cursor", "events_page", "messages_page", "inbound_page", "suppressions_page",
    "ses_notifications_page", "suppressions_csv_chunks", "SES_THRESHOLDS", "activity", "webhook_outbox", "check_dns",
]


class QueryError(Exception):
    """Something asked of the log that cannot be answered as asked (one line)."""


class NotFound(QueryError):
    """No such message, inbound mail or entry."""


def iso(ts: float | None) -> str:
    """Epoch seconds -> `2024-05-01T12:00:00Z` (UTC, whole seconds); None -> ""."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


# -- rows ---------------------------------------------------------------------------------------------
# Every field of an event, in the order JSON objects list them; a listing adds what the log knows of
# the event's message (its sender, Message-ID header, upstream id and subject).
EVENT_FIELDS = ["id", "at", "relay_id", "recipient", "source", "kind", "bounce_type", "reason", "status",
                "status_source", "smtp_code", "diagnostic", "remote_mta", "reporting_mta", "correlation",
                "inbound_id", "evidence", "feedback_type", "parser_version", "smtp_command", "action", "decided_by"]
EVENT_MESSAGE_FIELDS = ["message_sender", "message_id", "upstream_id", "subject"]
# The CLI's columns (`bounces`), and what `--explain` adds.
EVENT_COLUMNS = ["id", "at", "source", "kind", "recipient", "bounce_type", "reason", "status", "smtp_code",
                 "correlation", "relay_id", "diagnostic"]
EXPLAIN_COLUMNS = ["smtp_command", "action", "status_source", "decided_by", "evidence"]

MESSAGE_FIELDS = ["id", "created_at", "client_peer", "client_user", "sender", "header_from", "message_id", "subject",
                  "upstream_id", "verp_token", "size", "status", "upstream_reply", "send_failure", "content_sha256"]
MESSAGE_COLUMNS = ["id", "created_at", "status", "sender", "recipients", "message_id", "duplicate", "upstream_id",
                   "size", "upstream_reply"]
INBOUND_COLUMNS = ["id", "received_at", "state", "kind", "format", "size", "peer", "mail_from", "rcpt_tos",
                   "parser_version", "error", "foreign_recipients", "flag", "truncated"]
SUPPRESSION_COLUMNS = ["address", "scope", "kind", "reason", "created_at", "expires_at", "source_event"]


def event_row(item: EventEntry | BounceEvent) -> dict:
    """An event as JSON: every field (`at` in ISO), plus its message's when listed (EventEntry)."""
    event = item.event if isinstance(item, EventEntry) else item
    row = {f: _plain(getattr(event, f)) for f in EVENT_FIELDS}
    row["at"] = iso(event.at)
    if isinstance(item, EventEntry):
        row.update(message_sender=item.sender, message_id=item.message_id, upstream_id=item.upstream_id,
                   subject=item.subject)
    return row


def message_row(m: MessageRecord) -> dict:
    """A message as listed: its fields, its recipients' addresses, their count and `duplicate`."""
    row = {f: _plain(getattr(m, f)) for f in MESSAGE_FIELDS}
    row["created_at"] = iso(m.created_at)
    row["recipients"] = [r.address for r in m.recipients]
    row["recipient_count"] = len(m.recipients)
    row["duplicate"] = bool(m.duplicate)
    return row


def inbound_row(r: InboundRecord) -> dict:
    """An inbound mail as listed (never its bytes)."""
    return {"id": r.id, "received_at": iso(r.received_at), "peer": r.peer, "mail_from": r.mail_from,
            "rcpt_tos": list(r.rcpt_tos), "size": r.size, "sha256": r.sha256, "state": _plain(r.state),
            "parser_version": r.parser_version, "kind": r.kind, "format": r.format, "error": r.error,
            "foreign_recipients": r.foreign_recipients, "flag": r.flag, "truncated": r.truncated}


def suppression_row(s: Suppression) -> dict:
    row = asdict(s)
    row["created_at"] = iso(s.created_at)
    row["expires_at"] = iso(s.expires_at) or None
    return row


async def list_events(store, flt: EventFilter) -> list[dict]:
    return [event_row(e) for e in await store.list_events(flt)]


async def list_messages(store, flt: MessageFilter) -> list[dict]:
    return [message_row(m) for m in await store.list_messages(flt)]


async def list_inbound(store, flt: InboundFilter) -> list[dict]:
    return [inbound_row(r) for r in await store.list_inbound(flt)]


async def list_suppressions(store, flt: SuppressionFilter) -> list[dict]:
    return [suppression_row(s) for s in await store.list_suppressions(flt)]


# -- pages: every list continues by a cursor ----------------------------------------------------------
# A cursor is the sort key of a page's last row, as an opaque URL-safe token (base64 of JSON) tagged
# with its list, so that a token from one list is refused by another.
_CURSOR_SHAPES = {"events": (float, int), "messages": (float, str), "inbound": (int,),
                  "suppressions": (float, str, str)}
MAX_CURSOR = 2048


def encode_cursor(kind: str, key: tuple) -> str:
    raw = json.dumps({"k": kind, "b": list(key)}, separators=(",", ":"), ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, token: str) -> tuple:
    """The key a token carries; QueryError starting `cursor:` when it is not one this list gave out."""
    bad = QueryError(f"cursor: not a cursor of this list ({kind}); pass the next_cursor of its last page")
    if len(token) > MAX_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    shape = _CURSOR_SHAPES[kind]
    key = data.get("b") if isinstance(data, dict) and data.get("k") == kind else None
    if not isinstance(key, list) or len(key) != len(shape):
        raise bad
    out = []
    for value, want in zip(key, shape):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        if want is float and isinstance(value, (int, float)) and math.isfinite(value):
            out.append(float(value))
        elif want is int and isinstance(value, int) and abs(value) < 2 ** 63:
            out.append(value)
        elif want is str and isinstance(value, str) and len(value) <= 1000:
            out.append(value)
        else:
            raise bad
    return tuple(out) if len(out) > 1 else out[0]


async def _page(list_fn, flt, kind: str, key) -> tuple[list, str | None]:
    """One page of a store list (one row more is asked for, so the last page says so: next cursor None)."""
    limit = flt.limit
    flt.limit = limit + 1
    try:
        rows = await list_fn(flt)
    finally:
        flt.limit = limit
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = key(rows[-1])
    return rows, encode_cursor(kind, last if isinstance(last, tuple) else (last,))


async def events_page(store, flt: EventFilter) -> tuple[list[dict], str | None]:
    rows, cursor = await _page(store.list_events, flt, "events", lambda e: (e.event.at, e.event.id))
    return [event_row(e) for e in rows], cursor


async def messages_page(store, flt: MessageFilter) -> tuple[list[dict], str | None]:
    rows, cursor = await _page(store.list_messages, flt, "messages", lambda m: (m.created_at, m.id))
    return [message_row(m) for m in rows], cursor


async def inbound_page(store, flt: InboundFilter) -> tuple[list[dict], str | None]:
    rows, cursor = await _page(store.list_inbound, flt, "inbound", lambda r: r.id)
    return [inbound_row(r) for r in rows], cursor


async def suppressions_page(store, flt: SuppressionFilter) -> tuple[list[dict], str | None]:
    rows, cursor = await _page(store.list_suppressions, flt, "suppressions",
                               lambda s: (s.created_at, s.scope, s.address))
    return [suppression_row(s) for s in rows], cursor


# -- the message story --------------------------------------------------------------------------------
async def message_story(store, relay_id: str) -> dict:
    """One message's whole story as one JSON object: its fields, `recipients` (address, status, reply),
    `events` (oldest first: the relay's replies, then every late DSN, complaint and auto-reply) and
    `raw_kept` (whether the simulator kept its bytes: `message_raw`)."""
    message = await store.get_message(relay_id)
    if message is None:
        raise NotFound(f"no message {relay_id!r}")
    story = {f: _plain(getattr(message, f)) for f in MESSAGE_FIELDS}
    story["created_at"] = iso(message.created_at)
    story["recipients"] = [{"address": r.address, "status": _plain(r.status), "reply": r.reply}
                           for r in message.recipients]
    story["events"] = [event_row(e) for e in await store.message_events(relay_id)]
    story["raw_kept"] = await store.outbox_raw(relay_id) is not None
    return story


async def message_raw(store, relay_id: str) -> bytes:
    if await store.get_message(relay_id) is None:
        raise NotFound(f"no message {relay_id!r}")
    raw = await store.outbox_raw(relay_id)
    if raw is None:
        raise NotFound(f"message {relay_id} was delivered upstream; only the simulator keeps bodies")
    return raw


async def inbound_raw(store, inbound_id: int) -> bytes:
    record = await store.get_inbound(inbound_id)
    if record is None or record.raw is None:
        raise NotFound(f"no inbound mail #{inbound_id}")
    return record.raw


def why(e: dict) -> str:
    """One line: the stage, Action and status source the verdict read, and the rule that decided."""
    made_from = ", ".join(f"{k} {e[k]}" for k in ("smtp_command", "action", "status_source") if e.get(k))
    return f"why: {e.get('decided_by') or '(not recorded)'}" + (f" [{made_from}]" if made_from else "")


def story_lines(story: dict) -> list[str]:
    """The story as the CLI prints it (`bounceproxy messages show ID`)."""
    lines = [f"message {story['id']}  {story['created_at']}  {story['status']}"]
    for key in ("client_peer", "client_user", "sender", "header_from", "message_id", "subject", "upstream_id",
                "verp_token", "size", "upstream_reply", "send_failure"):
        if story.get(key) not in (None, ""):
            lines.append(f"  {key + ':':16}{story[key]}")
    lines.append("recipients:")
    for r in story["recipients"]:
        lines.append(f"  {r['address']:40} {r['status']:10} {r['reply']}")
    lines.append("events:")
    if not story["events"]:
        lines.append("  (none)")
    for e in story["events"]:
        lines.append(f"  {e['at']} {e['source']:5} {e['kind']:9} {e['recipient'] or '-'} {e['bounce_type']} "
                     f"{e['reason']} {e['status'] or ''} via {e['correlation']}")
        if e["diagnostic"]:
            lines.append(f"      {e['diagnostic']}")
        if e["kind"] in ("bounce", "delay"):
            lines.append(f"      {why(e)}")
    return lines


# -- stats --------------------------------------------------------------------------------------------
def summarize(data: LogStats, since: float | None, identities: Iterable[IdentityStats] = (),
              paused: dict[str, str] | None = None) -> dict:
    """`store.stats(since)` (+ per-identity counts and pauses) -> messages, bounces, complaints and rates.

    Keys: since messages by_status recipients bounces hard_bounces complaints bounce_rate
    hard_bounce_rate complaint_rate by_reason (rows: source kind bounce_type reason n) by_correlation
    (late reports' events per correlation) foreign_recipients (addresses reports named that their
    message was never sent to: left out of every rate, never acted on) duplicates (messages that went
    out repeating an earlier one that went out: same Message-ID, a recipient in common) identities
    (per sending identity: recipients hard_bounces complaints hard_bounce_rate complaint_rate paused,
    the reason of a reputation-guard pause or null).
    """
    events = [dict(e) for e in data.events]
    sent = sum(data.messages.values())
    hard = sum(e["n"] for e in events if e["kind"] == "bounce" and e["bounce_type"] == "hard")
    bounced = sum(e["n"] for e in events if e["kind"] == "bounce")
    complaints = sum(e["n"] for e in events if e["kind"] == "complaint")
    rcpts = data.recipients
    paused = paused or {}

    def rate(n: int, of: int) -> float:
        return round(n / of, 4) if of else 0.0

    return {
        "since": iso(since), "messages": sent, "by_status": dict(data.messages), "recipients": rcpts,
        "bounces": bounced, "hard_bounces": hard, "complaints": complaints,
        "bounce_rate": rate(bounced, rcpts), "hard_bounce_rate": rate(hard, rcpts),
        "complaint_rate": rate(complaints, rcpts),
        "by_reason": events,
        "by_correlation": dict(data.correlations),
        "foreign_recipients": data.correlations.get("foreign_recipient", 0),
        "duplicates": data.duplicates,
        "identities": [
            {"identity": i.identity, "recipients": i.recipients, "hard_bounces": i.hard_bounces,
             "complaints": i.complaints, "hard_bounce_rate": rate(i.hard_bounces, i.recipients),
             "complaint_rate": rate(i.complaints, i.recipients), "paused": paused.get(i.identity)}
            for i in identities
        ],
    }


async def stats_summary(store, since: float) -> dict:
    """The summary of `bounceproxy stats --json` and `GET /api/stats`, with the spool's depth and age."""
    summary = summarize(await store.stats(since), since, await store.identity_stats(since),
                        await store.paused_identities())
    summary["queue"] = queue_summary(await store.spool_counts(time.time()), time.time())
    return summary


def queue_summary(counts, now: float) -> dict:
    """The spool at a glance (spool mode): messages queued and held, recipients still to send, due now,
    being delivered, and the oldest message's age."""
    return {"queued": counts.queued, "held": counts.held, "recipients": counts.recipients, "due": counts.due,
            "in_flight": counts.in_flight,
            "oldest_age_seconds": round(now - counts.oldest_at, 1) if counts.oldest_at is not None else None}


def stats_lines(summary: dict) -> list[str]:
    """The head of `bounceproxy stats` (the CLI prints the by-reason and per-identity tables after it)."""
    lines = [f"since {summary['since']}: {summary['messages']} messages to {summary['recipients']} recipients "
             f"({', '.join(f'{k} {v}' for k, v in sorted(summary['by_status'].items())) or 'none'})"]
    if summary["duplicates"]:
        lines.append(f"duplicates {summary['duplicates']}: messages that went out again with the Message-ID of one "
                     "that had gone out (`bounceproxy messages --duplicates`)")
    lines.append(f"bounces {summary['bounces']} (hard {summary['hard_bounces']}), complaints {summary['complaints']}; "
                 f"bounce rate {summary['bounce_rate']:.2%}, complaint rate {summary['complaint_rate']:.2%}")
    queue = summary.get("queue") or {}
    if queue.get("queued") or queue.get("held"):
        lines.append(f"queue: {queue['queued']} messages queued ({queue['recipients']} recipients, {queue['due']} due now, "
                     f"{queue['in_flight']} being delivered), {queue['held']} held; oldest "
                     f"{queue['oldest_age_seconds']:.0f}s (`bounceproxy queue list`)")
    if summary["foreign_recipients"]:
        lines.append(f"foreign recipients {summary['foreign_recipients']}: addresses named by reports about messages "
                     "never sent to them (forged or forwarded; never acted on, not in any rate): "
                     "bounceproxy bounces --correlation foreign_recipient")
    return lines


# -- SES notifications (`bounces --format ses`) -------------------------------------------------------
async def ses_notifications(store, flt: EventFilter) -> list[dict]:
    """Each bounce or complaint the filter selects as the JSON notification SES would publish."""
    return await _ses_of(store, await store.list_events(flt))


async def ses_notifications_page(store, flt: EventFilter) -> tuple[list[dict], str | None]:
    """A page of `ses_notifications`: the cursor pages the events, so a page may hold fewer notifications
    than its limit (delays and auto-replies have none); follow next_cursor until it is None."""
    rows, cursor = await _page(store.list_events, flt, "events", lambda e: (e.event.at, e.event.id))
    return await _ses_of(store, rows), cursor


async def _ses_of(store, entries: list[EventEntry]) -> list[dict]:
    from proxy.dsn.ses import ses_notification

    out = []
    for entry in entries:
        event = entry.event
        if event.kind not in ("bounce", "complaint"):
            continue
        message = await store.get_message(event.relay_id) if event.relay_id else None
        mail = None
        if message is not None:
            mail = {"id": message.id, "upstream_id": message.upstream_id, "sender": message.sender,
                    "header_from": message.header_from, "message_id": message.message_id,
                    "recipients": [r.address for r in message.recipients], "subject": message.subject,
                    "created_at": message.created_at}
        fields = {f: _plain(getattr(event, f)) for f in EVENT_FIELDS}
        out.append(ses_notification(fields, mail))
    return out


# -- the suppression list in SES's CSV ----------------------------------------------------------------
SES_CSV_HEADER = ["EmailAddress", "Reason", "LastUpdateTime"]
_SES_REASON = {"complaint": "COMPLAINT"}


def _ses_time(ts: float) -> str:
    ms = round(ts * 1000)
    return datetime.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


async def export_suppressions_csv(store, scope: str | None, out: IO[str]) -> int:
    """Write the list (one scope, or all) as SES exports it: EmailAddress,Reason,LastUpdateTime.
    Returns how many rows were written."""
    count = 0
    async for chunk, n in suppressions_csv_chunks(store, scope):
        out.write(chunk)
        count += n
    return count


async def suppressions_csv_chunks(store, scope: str | None, page: int = 5000):
    """The SES CSV in chunks of text (header first) with their row counts, read page by page by cursor:
    a list of millions is never in memory at once (the API streams it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SES_CSV_HEADER)
    flt = SuppressionFilter(scope=scope, limit=page)
    while True:
        rows = await store.list_suppressions(flt)
        for s in rows:
            writer.writerow([s.address, _SES_REASON.get(s.kind, "BOUNCE"), _ses_time(s.created_at)])
        yield buffer.getvalue(), len(rows)
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < page:
            return
        flt.before = (rows[-1].created_at, rows[-1].scope, rows[-1].address)


def parse_suppressions_csv(text: str | IO[str], name: str, scope: str, now: float | None = None) -> list[Suppression]:
    """SES's CSV (EmailAddress,Reason[,LastUpdateTime]; BOUNCE or COMPLAINT) -> suppressions in `scope`.
    A bad row raises QueryError naming `name:line`."""
    from proxy.suppression import normalize_address

    reader = csv.DictReader(io.StringIO(text) if isinstance(text, str) else text)
    if not reader.fieldnames or "EmailAddress" not in [f.strip() for f in reader.fieldnames]:
        raise QueryError(f"{name}: expected a header row with EmailAddress,Reason[,LastUpdateTime]")
    reader.fieldnames = [f.strip() for f in reader.fieldnames]
    now = time.time() if now is None else now
    rows = []
    for number, record in enumerate(reader, start=2):
        address = (record.get("EmailAddress") or "").strip()
        reason = (record.get("Reason") or "BOUNCE").strip().upper()
        if "@" not in address or reason not in ("BOUNCE", "COMPLAINT"):
            raise QueryError(f"{name}:{number}: expected an address and BOUNCE or COMPLAINT, got {address!r}, {reason!r}")
        stamp = now
        if (record.get("LastUpdateTime") or "").strip():
            try:
                moment = datetime.fromisoformat(record["LastUpdateTime"].strip().replace("Z", "+00:00"))
            except ValueError:
                raise QueryError(f"{name}:{number}: LastUpdateTime {record['LastUpdateTime']!r} is not a date") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            stamp = moment.timestamp()
        kind = "complaint" if reason == "COMPLAINT" else "import"
        rows.append(Suppression(scope=scope, address=normalize_address(address), reason=reason.lower(), kind=kind,
                                created_at=stamp))
    return rows


async def import_suppressions(store, rows: list[Suppression]) -> int:
    await store.upsert_suppressions(rows)
    return len(rows)


async def add_suppressions(store, scope: str, addresses: Iterable[str], reason: str = "manual",
                           days: float = 0, now: float | None = None) -> int:
    """Suppress addresses by hand (`suppressions add`); `days` > 0 makes them expire."""
    from proxy.suppression import normalize_address

    now = time.time() if now is None else now
    rows = []
    for given in addresses:
        address = normalize_address(given)
        if "@" not in address:
            raise QueryError(f"{given!r} is not an email address")
        rows.append(Suppression(scope=scope, address=address, reason=reason, kind="manual", created_at=now,
                                expires_at=now + days * 86400 if days else None))
    await store.upsert_suppressions(rows)
    return len(rows)


async def remove_suppressions(store, scope: str, addresses: Iterable[str]) -> list[str]:
    """Take addresses off the list; returns those that were not on it."""
    from proxy.suppression import normalize_address

    return [a for a in addresses if not await store.delete_suppression(scope, normalize_address(a))]


# -- check ADDRESS ------------------------------------------------------------------------------------
async def check_address(store, address: str, scope: str = "") -> dict:
    """Is the address suppressed (in `scope`), and why: {address, suppressed, suppression}."""
    from proxy.suppression import normalize_address

    normalized = normalize_address(address)
    entry = await store.get_suppression(scope, normalized) if store is not None else None
    if entry is not None and entry.expires_at is not None and entry.expires_at <= time.time():
        entry = None  # expired: the relay no longer refuses it
    return {"address": normalized, "suppressed": entry is not None,
            "suppression": suppression_row(entry) if entry is not None else None}


def check_line(result: dict) -> str:
    s = result["suppression"]
    if not s:
        return f"{result['address']}: not suppressed"
    return (f"{result['address']}: suppressed ({s['kind']}, {s['reason']}) since {s['created_at']}"
            + (f" until {s['expires_at']}" if s["expires_at"] else "")
            + (f", source event #{s['source_event']}" if s["source_event"] else ""))


async def resume_identity(store, identity: str) -> str:
    """Lift a reputation-guard pause; NotFound when the identity is not paused."""
    identity = identity.lower()
    if not await store.resume_identity(identity):
        raise NotFound(f"{identity} is not paused")
    return identity


# -- activity over time (the dashboard's charts) -----------------------------------------------------
# SES's account-level lines: above `review` SES reviews the account, above `pause` it may pause sending.
# SES's bounce rate counts hard (Permanent) bounces.
SES_THRESHOLDS = {"hard_bounce_rate": {"review": 0.05, "pause": 0.10},
                  "complaint_rate": {"review": 0.001, "pause": 0.005}}


async def activity(store, since: float, bucket_seconds: int, now: float | None = None) -> dict:
    """Counts and rates per bucket from the bucket holding `since` to the one holding `now`, empty buckets
    included (a chart's x axis is then time), and SES's thresholds to draw the rates against."""
    now = time.time() if now is None else now
    b = int(bucket_seconds)
    counted = {int(r["bucket_start"]): r for r in await store.activity(since, b)}
    first, last = int(since // b) * b, int(now // b) * b
    buckets = []
    for start in range(first, last + b, b):
        r = counted.get(start) or {"messages": 0, "recipients": 0, "hard": 0, "soft": 0, "undetermined": 0,
                                   "complaints": 0}
        rcpts = r["recipients"]
        bounces = r["hard"] + r["soft"] + r["undetermined"]
        buckets.append({
            "start": iso(start), "messages": r["messages"], "recipients": rcpts, "hard": r["hard"], "soft": r["soft"],
            "undetermined": r["undetermined"], "complaints": r["complaints"],
            "bounce_rate": round(bounces / rcpts, 4) if rcpts else None,
            "hard_bounce_rate": round(r["hard"] / rcpts, 4) if rcpts else None,
            "complaint_rate": round(r["complaints"] / rcpts, 4) if rcpts else None,
        })
    return {"since": iso(since), "bucket_seconds": b, "thresholds": SES_THRESHOLDS, "buckets": buckets}


# -- the webhooks' outbox -----------------------------------------------------------------------------
async def webhook_outbox(store, state: str | None = None, limit: int = 100) -> dict:
    """`webhooks list` as JSON: the newest entries (times in ISO, URLs without credentials or query) and
    the count and oldest entry per state."""
    from proxy.webhooks import outbox_rows, safe_url

    rows = []
    for row in await outbox_rows(store, state, limit):
        row["url"] = safe_url(row["url"])
        for key in ("created_at", "next_at", "delivered_at"):
            row[key] = iso(row[key]) or None
        rows.append(row)
    counts = {s: {"count": n, "oldest": iso(oldest) or None}
              for s, (n, oldest) in sorted((await store.webhook_counts()).items())}
    return {"webhooks": rows, "counts": counts}


# -- what DNS says of a domain (`check`) --------------------------------------------------------------
async def check_dns(preflight_config, domain: str) -> dict:
    """The preflight's verdict on a domain, looked up even when the relay does not look."""
    import dataclasses

    from proxy.relay.preflight import Preflight

    verdict = await Preflight(dataclasses.replace(preflight_config, enabled=True)).check(domain)
    return {"dns": verdict.verdict, "dns_detail": verdict.detail}
