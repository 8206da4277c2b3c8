"""Prometheus text exposition (format 0.0.4) of the bounce log and of live counters.

The bounce log's figures come from a few GROUP BY queries (`proxy.api.queries`), cached for
`ttl` seconds so that scraping stays cheap; concurrent scrapes share one computation. Live
figures (open sessions, queue lengths...) come from an optional callback, read on every scrape.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
from collections.abc import Callable

from proxy.api.queries import metric_counts
from proxy.model import Correlation, MessageStatus, ParseState, RecipientStatus
from proxy.store.sqlite import StoreError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LiveMetrics = Callable[[], "dict[str, float]"]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r'^[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"$')


def escape_label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def family(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> list[str]:
    """One metric family: HELP, TYPE and a line per sample (labels in the order given)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label_text = ",".join(f'{k}="{escape_label("" if v is None else v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{label_text}}} {format_value(value)}" if label_text else f"{name} {format_value(value)}")
    return lines


def _by(rows: list[dict], label: str, known: list[str]) -> list[tuple[dict, float]]:
    """Samples per label value: every known value (0 when absent, so series exist from the start) + any other seen."""
    seen = {r[label]: r["n"] for r in rows}
    values = known + sorted(str(v) for v in seen if v not in known)
    return [({label: v}, seen.get(v, 0)) for v in values]


def render_counts(counts: dict) -> list[str]:
    lines: list[str] = []
    lines += family("bounceproxy_messages_total", "gauge", "Relayed messages in the bounce log, by status.",
                    _by(counts["messages"], "status", [s.value for s in MessageStatus]))
    lines += family("bounceproxy_recipients_total", "gauge", "Recipients of relayed messages, by status.",
                    _by(counts["recipients"], "status", [s.value for s in RecipientStatus]))
    events = sorted(counts["events"], key=lambda r: (r["source"], r["kind"], r["bounce_type"]))
    lines += family(
        "bounceproxy_events_total", "gauge",
        "Bounces, delays, complaints and auto-replies in the bounce log, by source, kind and bounce type.",
        [({"source": r["source"], "kind": r["kind"], "bounce_type": r["bounce_type"]}, r["n"]) for r in events],
    )
    lines += family("bounceproxy_inbound_total", "gauge", "Mails received by the bounce MX, by parse state.",
                    _by(counts["inbound"], "state", [s.value for s in ParseState]))
    lines += family("bounceproxy_report_events_by_correlation", "gauge",
                    "Events of late reports by the evidence that tied them to a message; foreign_recipient = an "
                    "address the identified message was never sent to (never acted on).",
                    _by(counts.get("correlations", []), "correlation", [c.value for c in Correlation]))
    lines += family("bounceproxy_inbound_flagged", "gauge",
                    "Mails received by the bounce MX that named addresses their message never went to "
                    "(foreign_recipients) or that a parse limit cut (truncated).",
                    _by(counts.get("inbound_flags", []), "flag", ["foreign_recipients", "truncated"]))
    if counts.get("suppressions") is not None:
        lines += family("bounceproxy_suppressions", "gauge", "Active (unexpired) suppressions, by kind.",
                        _by(counts["suppressions"], "kind", []))
    for key, name, what in (("last_event_at", "bounceproxy_last_event_timestamp_seconds", "event"),
                            ("last_message_at", "bounceproxy_last_message_timestamp_seconds", "relayed message")):
        if counts.get(key) is not None:
            lines += family(name, "gauge", f"Unix time of the newest {what} in the bounce log.", [({}, counts[key])])
    return lines


class MetricsCollector:
    """Renders /metrics: cached store figures plus the live callback's figures."""

    def __init__(self, store, live_metrics: LiveMetrics | None = None, ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.live_metrics = live_metrics
        self.ttl = ttl
        self.clock = clock
        self.queries = 0  # store computations, for tests
        self._cached: list[str] | None = None
        self._cached_at = 0.0
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()

    async def _store_lines(self) -> tuple[list[str], bool]:
        if self._cached is not None and self.clock() - self._cached_at < self.ttl:
            return self._cached, True
        async with self._lock:  # concurrent scrapes wait for one computation
            if self._cached is not None and self.clock() - self._cached_at < self.ttl:
                return self._cached, True
            try:
                counts = await metric_counts(self.store)
            except StoreError as exc:
                log.warning("metrics: bounce log unavailable: %s", exc)
                return [], False
            self.queries += 1
            self._cached = render_counts(counts)
            self._cached_at = self.clock()
            return self._cached, True

    async def _live(self) -> dict:
        if self.live_metrics is None:
            return {}
        try:
            values = self.live_metrics()
            if inspect.isawaitable(values):
                values = await values
            return dict(values or {})
        except Exception as exc:  # noqa: BLE001 - a broken callback must not break the scrape
            log.warning("metrics: live metrics callback failed: %s", exc)
            return {}

    def _live_lines(self, values: dict, taken: set[str]) -> list[str]:
        """`name` or `name{label="v",...}` -> value; a family per name, counter when it ends in _total."""
        groups: dict[str, list[str]] = {}
        for key, value in values.items():
            name, brace, labels = str(key).partition("{")
            if brace:
                labels = labels[:-1] if labels.endswith("}") else None
            ok = bool(_NAME.match(name)) and name not in taken and labels is not None and all(
                _LABEL.match(part) for part in _split_labels(labels))
            try:
                number = format_value(value)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("metrics: ignoring live metric %r = %r (bad name, labels or value)", key, value)
                continue
            groups.setdefault(name, []).append(f"{name}{{{labels}}} {number}" if labels else f"{name} {number}")
        lines: list[str] = []
        for name in sorted(groups):
            lines.append(f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}")
            lines += sorted(groups[name])
        return lines

    async def render(self) -> str:
        store_lines, store_up = await self._store_lines()
        lines = list(store_lines)
        lines += family("bounceproxy_store_up", "gauge", "1 when the bounce log answered the last metrics query.",
                        [({}, 1 if store_up else 0)])
        taken = {line.split()[2] for line in lines if line.startswith("# TYPE ")}
        lines += self._live_lines(await self._live(), taken)
        return "\n".join(lines) + "\n"


def _split_labels(text: str) -> list[str]:
    """Split `a="x",b="y,z"` on the commas between labels (not those inside quoted values)."""
    if not text:
        return []
    parts, current, quoted, escaped = [], "", False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return parts
