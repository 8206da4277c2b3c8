"""Filters shared by the CLI and the HTTP API, turned into SQL in one place."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`90m`, `1h`, `7d`, or an ISO date/time -> epoch seconds."""
    text = text.strip()
    m = _DURATION.match(text)
    if m:
        return (now if now is not None else time.time()) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: expected a duration like 30m, 1h, 7d or an ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass
class EventFilter:
    since: float | None = None
    recipient: str | None = None
    bounce_type: str | None = None
    reason: str | None = None
    source: str | None = None
    kind: str | None = None
    correlation: str | None = None
    message: str | None = None
    limit: int = 100

    def where(self) -> tuple[str, list]:
        clauses, params = [], []
        if self.since is not None:
            clauses.append("e.at >= ?")
            params.append(self.since)
        if self.recipient:
            clauses.append("e.recipient = ? COLLATE NOCASE")
            params.append(self.recipient)
        for column, value in (("bounce_type", self.bounce_type), ("reason", self.reason), ("source", self.source),
                              ("kind", self.kind), ("correlation", self.correlation), ("message_id", self.message)):
            if value:
                clauses.append(f"e.{column} = ?")
                params.append(value)
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


_WENT_OUT = "('sent', 'partial', 'possibly_sent')"  # proxy.model.MAY_HAVE_GONE_OUT


def duplicate_sql(earlier_only: bool = False) -> str:
    """SQL true for a message `m` that may have reached a recipient who may also have received another
    message with the same client Message-ID (a client's retry after a crash or a lost connection).
    Postfix splitting one message over transactions to different recipients is no duplicate."""
    order = " AND (o.created_at, o.id) < (m.created_at, m.id)" if earlier_only else ""
    return (
        f"(m.message_id IS NOT NULL AND m.status IN {_WENT_OUT} AND EXISTS (SELECT 1 FROM messages o "
        "JOIN recipients ro ON ro.message_id = o.id AND ro.status = 'accepted' "
        "JOIN recipients rm ON rm.message_id = m.id AND rm.status = 'accepted' AND rm.address = ro.address COLLATE NOCASE "
        f"WHERE o.message_id = m.message_id AND o.id != m.id AND o.status IN {_WENT_OUT}{order}))"
    )


@dataclass
class MessageFilter:
    since: float | None = None
    recipient: str | None = None
    status: str | None = None
    sender: str | None = None
    limit: int = 100
    duplicates: bool = False  # only messages that may have reached someone twice (see duplicate_sql)

    def where(self) -> tuple[str, list]:
        clauses, params = [], []
        if self.since is not None:
            clauses.append("m.created_at >= ?")
            params.append(self.since)
        if self.recipient:
            clauses.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.address = ? COLLATE NOCASE)")
            params.append(self.recipient)
        if self.status:
            clauses.append("m.status = ?")
            params.append(self.status)
        if self.sender:
            clauses.append("m.sender = ? COLLATE NOCASE")
            params.append(self.sender)
        if self.duplicates:
            clauses.append(duplicate_sql())
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
