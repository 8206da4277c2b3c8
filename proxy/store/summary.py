"""The stats summary shared by `bounceproxy stats --json` and `GET /api/stats`, computed in one place."""
from __future__ import annotations

from datetime import datetime, timezone


def iso(ts: float | None) -> str:
    """Epoch seconds -> `2024-05-01T12:00:00Z` (UTC, whole seconds); None -> ""."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def summarize(data: dict, since: float | None) -> dict:
    """`store.stats(since)` -> messages, bounces, complaints and the rates per recipient.

    Keys: since messages by_status recipients bounces hard_bounces complaints bounce_rate
    hard_bounce_rate complaint_rate by_reason (the store's rows: source kind bounce_type reason n)
    by_correlation (late reports' events per correlation) foreign_recipients (addresses reports named
    that their message was never sent to: left out of every rate, never acted on) duplicates (messages
    that went out repeating an earlier one that went out: same Message-ID, a recipient in common).
    """
    events = data["events"]
    sent = sum(data["messages"].values())
    hard = sum(e["n"] for e in events if e["kind"] == "bounce" and e["bounce_type"] == "hard")
    bounced = sum(e["n"] for e in events if e["kind"] == "bounce")
    complaints = sum(e["n"] for e in events if e["kind"] == "complaint")
    rcpts = data["recipients"]
    return {
        "since": iso(since), "messages": sent, "by_status": data["messages"], "recipients": rcpts,
        "bounces": bounced, "hard_bounces": hard, "complaints": complaints,
        "bounce_rate": round(bounced / rcpts, 4) if rcpts else 0.0,
        "hard_bounce_rate": round(hard / rcpts, 4) if rcpts else 0.0,
        "complaint_rate": round(complaints / rcpts, 4) if rcpts else 0.0,
        "by_reason": events,
        "by_correlation": data.get("correlations", {}),
        "foreign_recipients": data.get("correlations", {}).get("foreign_recipient", 0),
        "duplicates": data.get("duplicates", 0),
    }
