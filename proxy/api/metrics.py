"""/metrics through prometheus_client: the bounce log's figures, the live counters, process and Python.

The bounce log's figures come from the store's row counts (`Store.metric_counts`), cached for `ttl`
seconds so that scraping stays cheap; concurrent scrapes share one computation. Live figures (open
sessions, the upstream's state, the bounce MX's parse queue...) come from an optional callback, read
on every scrape, as `name` or `name{label="v",...}` -> value: a name ending in `_total` is a counter,
any other a gauge. prometheus_client writes the exposition (HELP and TYPE for every family, escaping,
number formats) and adds its process and Python collectors.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.model import Correlation, MessageStatus, MetricCounts, ParseState, RecipientStatus
from proxy.store import StoreError

log = logging.getLogger(__name__)

# The text format Prometheus 2 and promtool read (prometheus_client writes it whatever it advertises).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LiveMetrics = Callable[[], "dict[str, float]"]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r'^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"$')

# HELP of the live figures the service reports (proxy.app.Service._live_metrics, proxy.relay.health).
LIVE_HELP = {
    "bounceproxy_relay_open_sessions": "Client sessions open on the relay now.",
    "bounceproxy_relay_refused_connections_total": "Client connections the relay refused with 421 (connection limits).",
    "bounceproxy_inbound_queue": "Mails the bounce MX has stored and that wait to be parsed and correlated.",
    "bounceproxy_inbound_processed_total": "Mails the bounce MX parsed and correlated since start.",
    "bounceproxy_upstream_connects_total": "Connections opened to the upstream since start.",
    "bounceproxy_relay_busy_poll_window_seconds": "How long the relay polls for its client's or its upstream's next "
                                                  "answer now ([relay] busy_poll_us at most; 0: it sleeps).",
    "bounceproxy_upstream_up": "1 while the upstream is usable (the relay's last attempt or probe got a connection), else 0.",
    "bounceproxy_upstream_state_since_timestamp_seconds": "Unix time the upstream's state (up or down) last changed.",
    "bounceproxy_upstream_failures_total": "Client attempts to get an upstream connection that failed, by kind "
                                           "(connect, timeout, tls, closed, protocol, auth, busy, lost_during_data, other).",
    "bounceproxy_suppression_hits_total": "Recipients refused at RCPT because they are on the suppression list.",
    "bounceproxy_suppression_index_entries": "Addresses in the relay's in-memory suppression index.",
    "bounceproxy_preflight_total": "DNS preflight verdicts on recipient domains, by outcome.",
    "bounceproxy_store_commits_total": "Transactions the bounce log committed since start.",
    "bounceproxy_webhooks_delivered_total": "Webhook notifications this process delivered (2xx) since start.",
    "bounceproxy_webhooks_failed_total": "Webhook tries that failed (non-2xx, timeout, network) since start.",
    "bounceproxy_webhooks_dead_total": "Webhook notifications given up after [webhooks] max_attempts since start.",
    "bounceproxy_webhooks_in_flight": "Webhook POSTs in flight now.",
    "bounceproxy_spool_attempts_total": "Delivery attempts from the spool since start.",
    "bounceproxy_spool_recipients_total": "Spooled recipients by what came of them since start.",
    "bounceproxy_spool_rate": "The spool's current pace of delivery (recipients per second).",
    "bounceproxy_spool_rate_ceiling": "The upstream's rate as the spool learnt it (0: not learnt yet).",
    "bounceproxy_spool_in_flight": "Deliveries from the spool in flight now.",
    "bounceproxy_spool_quota_held": "1 while the spool holds its queue for the upstream's daily quota, else 0.",
}


def _by(seen: dict[str, int], known: list[str]) -> list[tuple[str, float]]:
    """Samples per label value: every known value (0 when absent, so series exist from the start) + any other seen."""
    values = known + sorted(str(v) for v in seen if v not in known)
    return [(v, seen.get(v, 0)) for v in values]


def _gauge(name: str, help_text: str, label: str | None, samples) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=[label] if label else None)
    for value, n in samples:
        family.add_metric([value] if label else [], n)
    return family


WEBHOOK_STATES = ["pending", "delivered", "dead"]


def store_families(counts: MetricCounts, webhooks: dict[str, tuple[int, float | None]] | None = None,
                   spool=None) -> list[Metric]:
    """The bounce log's figures. They are row counts that may fall (a reparse, a purge): gauges, so no `_total`.
    `webhooks`: the outbox's count and oldest entry per state (`Store.webhook_counts`)."""
    families = [
        _gauge("bounceproxy_messages", "Relayed messages in the bounce log, by status.", "status",
               _by(counts.messages, [s.value for s in MessageStatus])),
        _gauge("bounceproxy_recipients", "Recipients of relayed messages, by status.", "status",
               _by(counts.recipients, [s.value for s in RecipientStatus])),
    ]
    events = GaugeMetricFamily(
        "bounceproxy_events",
        "Bounces, delays, complaints and auto-replies in the bounce log, by source, kind and bounce type.",
        labels=["source", "kind", "bounce_type"])
    for source, kind, bounce_type, n in sorted(counts.events):
        events.add_metric([str(source), str(kind), str(bounce_type)], n)
    families.append(events)
    families.append(_gauge("bounceproxy_inbound", "Mails received by the bounce MX, by parse state.", "state",
                           _by(counts.inbound, [s.value for s in ParseState])))
    families.append(_gauge(
        "bounceproxy_report_events_by_correlation",
        "Events of late reports by the evidence that tied them to a message; foreign_recipient = an "
        "address the identified message was never sent to (never acted on).", "correlation",
        _by(counts.correlations, [c.value for c in Correlation])))
    families.append(_gauge(
        "bounceproxy_inbound_flagged",
        "Mails received by the bounce MX that named addresses their message never went to "
        "(foreign_recipients) or that a parse limit cut (truncated).", "flag",
        _by(counts.inbound_flags, ["foreign_recipients", "truncated"])))
    families.append(_gauge("bounceproxy_suppressions", "Active (unexpired) suppressions, by kind.", "kind",
                           _by(counts.suppressions, [])))
    webhooks = webhooks or {}
    families.append(_gauge("bounceproxy_webhook_outbox", "Webhook notifications in the durable outbox, by state "
                           "(pending: still to send; dead: given up, see `bounceproxy webhooks retry`).", "state",
                           _by({k: n for k, (n, _) in webhooks.items()}, WEBHOOK_STATES)))
    oldest = webhooks.get("pending", (0, None))[1]
    if oldest is not None:
        families.append(_gauge("bounceproxy_webhook_oldest_pending_timestamp_seconds",
                               "Unix time the oldest webhook notification still to send was queued.", None,
                               [(None, oldest)]))
    if spool is not None:
        families.append(_gauge("bounceproxy_spool_messages", "Messages in the spool (spool mode), by state (queued: "
                               "to deliver; held: waiting for an operator, `bounceproxy queue release`).", "state",
                               [("queued", spool.queued), ("held", spool.held)]))
        families.append(_gauge("bounceproxy_spool_recipients", "Recipients in the spool still to deliver.", None,
                               [(None, spool.recipients)]))
        if spool.oldest_at is not None:
            families.append(_gauge("bounceproxy_spool_oldest_timestamp_seconds",
                                   "Unix time the oldest message in the spool was queued.", None, [(None, spool.oldest_at)]))
    for at, name, what in ((counts.last_event_at, "bounceproxy_last_event_timestamp_seconds", "event"),
                           (counts.last_message_at, "bounceproxy_last_message_timestamp_seconds", "relayed message")):
        if at is not None:
            families.append(_gauge(name, f"Unix time of the newest {what} in the bounce log.", None, [(None, at)]))
    return families


def _base(name: str) -> str:
    return name[:-6] if name.endswith("_total") else name


class _Snapshot:
    """A registry collector over the families of the scrape being rendered (collect() cannot await)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self):
        return list(self.families)


class MetricsCollector:
    """Renders /metrics: cached store figures, the live callback's figures, process and Python metrics."""

    def __init__(self, store, live_metrics: LiveMetrics | None = None, ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.live_metrics = live_metrics
        self.ttl = ttl
        self.clock = clock
        self.queries = 0  # store computations, for tests
        self._cached: list[Metric] | None = None
        self._cached_at = 0.0
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()
        self._snapshot = _Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.registry.register(self._snapshot)

    async def _store_families(self) -> tuple[list[Metric], bool]:
        if self._cached is not None and self.clock() - self._cached_at < self.ttl:
            return self._cached, True
        async with self._lock:  # concurrent scrapes wait for one computation
            if self._cached is not None and self.clock() - self._cached_at < self.ttl:
                return self._cached, True
            try:
                counts = await self.store.metric_counts(time.time())
                webhooks = await self.store.webhook_counts()
                spool = await self.store.spool_counts(time.time())
            except StoreError as exc:
                log.warning("metrics: bounce log unavailable: %s", exc)
                return [], False
            self.queries += 1
            self._cached = store_families(counts, webhooks, spool)
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

    def _ignore(self, key, value) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("metrics: ignoring live metric %r = %r (bad name, labels or value, or a name taken)", key, value)

    def live_families(self, values: dict, taken: set[str]) -> list[Metric]:
        """`name` or `name{label="v",...}` -> value; a family per name, counter when it ends in _total."""
        groups: dict[str, list[tuple[dict, float]]] = {}
        for key, value in values.items():
            name, brace, label_text = str(key).partition("{")
            labels: dict[str, str] | None = {}
            if brace:
                labels = _parse_labels(label_text[:-1]) if label_text.endswith("}") else None
            number = _number(value)
            if (not _NAME.match(name) or _base(name) in taken or labels is None or number is None
                    or (groups.get(name) and set(groups[name][0][0]) != set(labels))):
                self._ignore(key, value)
                continue
            groups.setdefault(name, []).append((labels, number))
        families: list[Metric] = []
        for name in sorted(groups):
            samples = sorted(groups[name], key=lambda s: sorted(s[0].items()))
            label_names = sorted(samples[0][0])
            help_text = LIVE_HELP.get(name, f"{name.replace('_', ' ')} (a live figure of the running service).")
            cls = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
            family = cls(name, help_text, labels=label_names)
            for labels, number in samples:
                family.add_metric([labels[k] for k in label_names], number)
            families.append(family)
        return families

    async def render(self) -> str:
        families, store_up = await self._store_families()
        families = list(families)
        families.append(_gauge("bounceproxy_store_up", "1 when the bounce log answered the last metrics query.",
                               None, [(None, 1 if store_up else 0)]))
        taken = {f.name for f in families} | {"process", "python"}  # process_* and python_* are the library's
        live = self.live_families(await self._live(), taken)
        self._snapshot.families = families + [f for f in live if not f.name.startswith(("process_", "python_"))]
        return generate_latest(self.registry).decode("utf-8")


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) and not isinstance(value, float) else number


def _parse_labels(text: str) -> dict[str, str] | None:
    """`a="x",b="y,z"` -> {"a": "x", "b": "y,z"}; None when a part is not a proper label."""
    labels: dict[str, str] = {}
    for part in _split_labels(text):
        m = _LABEL.match(part)
        if not m or m.group(1) in labels:
            return None
        labels[m.group(1)] = re.sub(r'\\(["\\n])', lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
    return labels


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
