"""Raw inbound mail -> events: parse, correlate, record. Idempotent by construction.

The raw bytes are already committed when this runs, so a crash here loses nothing: the row
stays `pending` and `bounceproxy reparse` (or the next start) redoes it. Events are unique on
(inbound row, recipient), and a second copy of the same bytes is recorded as a duplicate of the
first, so replays and reparses add nothing.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging

from proxy.dsn import PARSER_VERSION as _PARSER, parse
from proxy.dsn.classify import PARSER_CLASSIFIER_VERSION, classify
from proxy.dsn.limits import DEFAULT_LIMITS, Limits
from proxy.dsn.parser import recipient_kind
from proxy.inbound.correlate import Match, correlate_recipient, correlate_report, verp_tokens
from proxy.logging_setup import log_inbound
from proxy.model import BounceEvent, BounceType, Correlation, InboundResult, Kind, ParseState, Report, Source, StatusSource
from proxy.relay.verp import VerpSigner

log = logging.getLogger(__name__)

# Recorded on every row and event: parser and classifier versions, so upgrades can be redone.
PARSER_VERSION = f"{_PARSER}.{PARSER_CLASSIFIER_VERSION}"

PARSE_IN_THREAD_ABOVE = 512 * 1024  # big mails are parsed off the event loop


class Pipeline:
    def __init__(self, store, signer: VerpSigner | None, bounce_domains: tuple[str, ...],
                 window_days: float = 30.0, suppressor=None, limits: Limits = DEFAULT_LIMITS):
        self.store = store
        self.limits = limits  # what one parse reads at most; each limit reached is recorded on the row
        self.suppressor = suppressor
        self.signer = signer
        self.bounce_domains = tuple(d.lower() for d in bounce_domains)
        self.window = window_days * 86400
        self.processed = 0

    async def process(self, inbound_id: int) -> list[BounceEvent]:
        """Parse one stored inbound mail and record its events; returns them (none when the same bytes
        were already recorded from another row: a second bounce MX, a replay)."""
        row = await self.store.get_inbound(inbound_id)
        if row is None:
            return []
        first = await self.store.first_inbound_with_sha(row.sha256, other_than=inbound_id)
        if first is not None:  # the cheap pre-check, by the store's own rule; it decides atomically below
            await self.store.record_inbound_result(inbound_id, InboundResult(
                ParseState.PARSED, PARSER_VERSION, error=f"duplicate of inbound #{first}"))
            return []
        raw = row.raw or b""
        try:
            if len(raw) > PARSE_IN_THREAD_ABOVE:
                report = await asyncio.to_thread(parse, raw, self.limits)
            else:
                report = parse(raw, self.limits)
        except Exception as exc:  # noqa: BLE001 - a parser bug must cost a `failed` row, never the mail
            log.error("inbound #%d: parse failed: %s", inbound_id, exc)
            await self.store.record_inbound_result(inbound_id, InboundResult(
                ParseState.FAILED, PARSER_VERSION, error=f"{type(exc).__name__}: {exc}"))
            return []
        events = await self.events_for(report, inbound_id, row.rcpt_tos, row.received_at)
        foreign, flag = foreign_flag(events)
        if flag:
            log.warning("inbound #%d: %s", inbound_id, flag)
        truncated = "; ".join(report.truncated) or None
        if truncated:
            log.warning("inbound #%d: parse limits reached: %s", inbound_id, truncated)
        recorded = await self.store.record_inbound_result(inbound_id, InboundResult(
            ParseState.PARSED, PARSER_VERSION, kind=str(report.kind), format=report.format, events=events,
            foreign_recipients=foreign, flag=flag, truncated=truncated, sha256=row.sha256))
        if not recorded:  # another row with the same bytes recorded them first (another bounce MX)
            log.info("inbound #%d: a duplicate of a mail already recorded; its events count once", inbound_id)
            return []
        self.processed += 1
        log_inbound(inbound_id, row, report, events)
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
                match, address = await correlate_recipient(
                    self.store, report_match, [rr.recipient, rr.final_recipient], window_start)
                kind = recipient_kind(report, rr)
                events.append(BounceEvent(
                    at=received_at, source=Source.ASYNC, kind=kind, recipient=(address or rr.recipient).lower(),
                    bounce_type=rr.bounce_type, reason=rr.reason, status=rr.status,
                    status_source=rr.status_source, smtp_code=rr.smtp_code, diagnostic=rr.diagnostic,
                    remote_mta=rr.remote_mta, reporting_mta=report.reporting_mta,
                    correlation=match.correlation, relay_id=_id(match), inbound_id=inbound_id,
                    evidence=rr.evidence, feedback_type=report.feedback_type, parser_version=PARSER_VERSION,
                    smtp_command=rr.command, action=rr.action, decided_by=rr.decided_by,
                ))
            return events
        # A report that names nobody (an auto-reply, an unreadable bounce): the recipient is the
        # one the VERP token names, else the sender of an auto-reply, else nobody; kept either way.
        recipient = report_match.recipient
        if recipient is None and report.kind == Kind.AUTOREPLY:
            recipient = report.sender_address
        match, recipient = await correlate_recipient(self.store, report_match, [recipient], window_start)
        if recipient is None and report_match.message is not None:
            match = report_match  # nobody named: the report is about the message, for no address
        reason = {Kind.AUTOREPLY: "vacation", Kind.COMPLAINT: "feedback", Kind.DELIVERED: "delivered"}.get(report.kind, "undefined")
        events.append(BounceEvent(
            at=received_at, source=Source.ASYNC, kind=report.kind, recipient=recipient.lower() if recipient else None,
            bounce_type=BounceType.UNDETERMINED, reason=reason, reporting_mta=report.reporting_mta,
            correlation=match.correlation, relay_id=_id(match), inbound_id=inbound_id,
            evidence=f"report format {report.format}, kind {report.kind}", feedback_type=report.feedback_type,
            parser_version=PARSER_VERSION,
        ))
        return events

    async def reclassify(self) -> int:
        """Re-derive reason and bounce_type of stored events with the current classifier, from the
        inputs the first verdict was made from (status as the mail gave it, reply code, text, Action and
        SMTP stage): an unchanged classifier gives every event the verdict it has."""
        events = await self.store.events_to_reclassify()
        updates = []
        for e in events:
            status = e.status if e.status_source == StatusSource.DSN else None
            verdict = classify(status, e.smtp_code, e.diagnostic, e.kind, e.action,
                               command=e.smtp_command, recipient=e.recipient)
            updates.append(dataclasses.replace(
                e, reason=verdict.reason, bounce_type=verdict.bounce_type, status=verdict.status,
                status_source=verdict.status_source, evidence=verdict.evidence, parser_version=PARSER_VERSION,
                decided_by=verdict.decided_by))
        await self.store.update_events_verdicts(updates)
        return len(updates)

    async def reparse(self, states: list[str] | None) -> int:
        """Redo the rows in these states (all rows when None); returns how many were processed."""
        ids = await self.store.inbound_ids(states)
        for inbound_id in ids:
            await self.process(inbound_id)
        return len(ids)


def foreign_flag(events: list[BounceEvent]) -> tuple[int, str | None]:
    """How many addresses the report named that its message was never sent to, and the sentence
    that flags it: the mark of a forged report, or of a forwarded address."""
    foreign = [e for e in events if e.correlation == Correlation.FOREIGN_RECIPIENT]
    if not foreign:
        return 0, None
    message = foreign[0].relay_id
    own = sum(1 for e in events if e.relay_id == message and e.correlation != Correlation.FOREIGN_RECIPIENT)
    sample = ", ".join(e.recipient or "?" for e in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return len(foreign), (f"names {len(foreign)} of {len(events)} addresses that message {message} was never sent to "
                          f"({sample}); {own} of its own recipients named; not acted on")


def _id(match: Match) -> str | None:
    return match.message.id if match.message else None

