"""Raw inbound mail -> events: parse, correlate, record. Idempotent by construction.

The raw bytes are already committed when this runs, so a crash here loses nothing: the row
stays `pending` and `bounceproxy reparse` (or the next start) redoes it. Events are unique on
(inbound row, recipient), and a second copy of the same bytes is recorded as a duplicate of the
first, so replays and reparses add nothing.
"""
from __future__ import annotations

import asyncio
import json
import logging

from proxy.dsn import PARSER_VERSION as _PARSER, parse
from proxy.dsn.classify import PARSER_CLASSIFIER_VERSION, classify
from proxy.dsn.parser import recipient_kind
from proxy.inbound.correlate import Match, correlate_recipient, correlate_report, verp_tokens
from proxy.model import BounceEvent, BounceType, Kind, ParseState, Report, Source
from proxy.relay.verp import VerpSigner

log = logging.getLogger(__name__)

# Recorded on every row and event: parser and classifier versions, so upgrades can be redone.
PARSER_VERSION = f"{_PARSER}.{PARSER_CLASSIFIER_VERSION}"

PARSE_IN_THREAD_ABOVE = 512 * 1024  # big mails are parsed off the event loop


class Pipeline:
    def __init__(self, store, signer: VerpSigner | None, bounce_domains: tuple[str, ...],
                 window_days: float = 30.0, suppressor=None):
        self.store = store
        self.suppressor = suppressor
        self.signer = signer
        self.bounce_domains = tuple(d.lower() for d in bounce_domains)
        self.window = window_days * 86400
        self.processed = 0

    async def process(self, inbound_id: int) -> list[BounceEvent]:
        """Parse one stored inbound mail and record its events; returns them."""
        row = await self.store.get_inbound(inbound_id)
        if row is None:
            return []
        first = await self.store.first_inbound_with_sha(row["sha256"])
        if first != inbound_id:
            await self.store.record_inbound_result(
                inbound_id, ParseState.PARSED, PARSER_VERSION, None, None, f"duplicate of inbound #{first}", [])
            return []
        raw: bytes = row["raw"]
        try:
            if len(raw) > PARSE_IN_THREAD_ABOVE:
                report = await asyncio.to_thread(parse, raw)
            else:
                report = parse(raw)
        except Exception as exc:  # noqa: BLE001 - a parser bug must cost a `failed` row, never the mail
            log.error("inbound #%d: parse failed: %s", inbound_id, exc)
            await self.store.record_inbound_result(
                inbound_id, ParseState.FAILED, PARSER_VERSION, None, None, f"{type(exc).__name__}: {exc}", [])
            return []
        rcpt_tos = json.loads(row["rcpt_tos"] or "[]")
        events = await self.events_for(report, inbound_id, rcpt_tos, row["received_at"])
        await self.store.record_inbound_result(
            inbound_id, ParseState.PARSED, PARSER_VERSION, str(report.kind), report.format, None, events)
        self.processed += 1
        if self.suppressor is not None:
            await self.suppressor.consider(events)
        return events

    async def events_for(self, report: Report, inbound_id: int, rcpt_tos: list[str], received_at: float) -> list[BounceEvent]:
        tokens = verp_tokens(rcpt_tos, self.signer, self.bounce_domains)
        window_start = received_at - self.window
        events: list[BounceEvent] = []
        report_match = await correlate_report(self.store, report, tokens)
        if report.recipients:
            for rr in report.recipients:
                match = await correlate_recipient(self.store, report_match, rr.recipient, window_start)
                kind = recipient_kind(report, rr)
                events.append(BounceEvent(
                    at=received_at, source=Source.ASYNC, kind=kind, recipient=rr.recipient.lower(),
                    bounce_type=rr.bounce_type, reason=rr.reason, status=rr.status,
                    status_source=rr.status_source, smtp_code=rr.smtp_code, diagnostic=rr.diagnostic,
                    remote_mta=rr.remote_mta, reporting_mta=report.reporting_mta,
                    correlation=match.correlation, message_id=_id(match), inbound_id=inbound_id,
                    evidence=rr.evidence, feedback_type=report.feedback_type, parser_version=PARSER_VERSION,
                ))
            return events
        # A report that names nobody (an auto-reply, an unreadable bounce): the recipient is the
        # one the VERP token names, else the sender of an auto-reply, else nobody; kept either way.
        recipient = report_match.recipient
        if recipient is None and report.kind == Kind.AUTOREPLY:
            recipient = report.sender_address
        match = await correlate_recipient(self.store, report_match, recipient, window_start)
        reason = {Kind.AUTOREPLY: "vacation", Kind.COMPLAINT: "feedback", Kind.DELIVERED: "delivered"}.get(report.kind, "undefined")
        events.append(BounceEvent(
            at=received_at, source=Source.ASYNC, kind=report.kind, recipient=recipient.lower() if recipient else None,
            bounce_type=BounceType.UNDETERMINED, reason=reason, reporting_mta=report.reporting_mta,
            correlation=match.correlation, message_id=_id(match), inbound_id=inbound_id,
            evidence=f"report format {report.format}, kind {report.kind}", feedback_type=report.feedback_type,
            parser_version=PARSER_VERSION,
        ))
        return events

    async def reclassify(self) -> int:
        """Re-derive reason and bounce_type of stored events with the current classifier."""
        rows = await self.store.events_to_reclassify()
        updates = []
        for e in rows:
            status = e["status"] if e["status_source"] == "dsn" else None
            verdict = classify(status, e["smtp_code"], e["diagnostic"], Kind(e["kind"]))
            updates.append((verdict.reason, verdict.bounce_type, verdict.status, verdict.status_source,
                            verdict.evidence, PARSER_VERSION, e["id"]))
        await self.store.update_events_verdicts(updates)
        return len(updates)

    async def reparse(self, states: list[str] | None) -> int:
        """Redo the rows in these states (all rows when None); returns how many were processed."""
        ids = await self.store.inbound_ids(states)
        for inbound_id in ids:
            await self.process(inbound_id)
        return len(ids)


def _id(match: Match) -> str | None:
    return match.message["id"] if match.message else None

