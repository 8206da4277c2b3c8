"""Filters shared by the CLI and the HTTP API: plain data here, turned into SQL by the store."""
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
    relay_id: str | None = None
    limit: int = 100
    before: tuple[float, int] | None = None  # a page's cursor: (at, id) of the last event of the page before


@dataclass
class MessageFilter:
    since: float | None = None
    recipient: str | None = None
    status: str | None = None
    sender: str | None = None
    limit: int = 100
    duplicates: bool = False  # only messages that may have reached someone twice
    before: tuple[float, str] | None = None  # a page's cursor: (created_at, id) of the last message before


@dataclass
class InboundFilter:
    state: str | None = None
    since: float | None = None
    limit: int = 100
    flagged: bool = False  # named addresses its message never went to, or cut by a parse limit
    before: int | None = None  # a page's cursor: the id of the last mail of the page before


@dataclass
class SuppressionFilter:
    address: str | None = None  # normalised
    scope: str | None = None
    limit: int | None = 100  # None: all of them (export)
    search: str | None = None  # a part of the address, any case
    before: tuple[float, str, str] | None = None  # a page's cursor: (created_at, scope, address) of the last one
