"""bytes -> Report: run the formats in the registry's order, then classify each recipient.

Formats only say *who* failed and *what the mail says* (status, code, text); what that
means (reason, hard/soft) is decided here, once, by `classify`.
"""
from __future__ import annotations

from proxy.dsn import ParseError
from proxy.dsn.classify import classify, stage_near
from proxy.dsn.classify.stage import ADDRESS_REASONS
from proxy.dsn.detectors.registry import DETECTORS
from proxy.dsn.limits import DEFAULT_LIMITS, Limits
from proxy.dsn.mail import Mail
from proxy.model import BounceType, Kind, OriginalMessage, Report, StatusSource

# Set by tests: let a detector's exception through instead of skipping that detector.
STRICT = False

_FIXED_REASON = {Kind.COMPLAINT: "feedback", Kind.AUTOREPLY: "vacation", Kind.DELIVERED: "delivered"}
_KIND_OF_ACTION = {"failed": Kind.BOUNCE, "delayed": Kind.DELAY, "delivered": Kind.DELIVERED,
                   "relayed": Kind.DELIVERED, "expanded": Kind.DELIVERED}
_CLASS_OF_ACTION = {"failed": "5.0.0", "delayed": "4.0.0"}


def parse(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Report:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ParseError(f"expected bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if not raw or raw.isspace():  # = not raw.strip(), without copying the mail
        raise ParseError("empty input is not a mail")
    try:
        mail = Mail(raw, limits)
    except Exception as error:  # the stdlib parser itself gave up
        if STRICT:
            raise
        raise ParseError(f"not readable as a mail: {type(error).__name__}") from error
    report = detect(mail)
    keep_within_limits(mail, report)
    finish(mail, report)
    return report


def keep_within_limits(mail: Mail, report: Report) -> None:
    """At most `max_recipients` recipients, and every limit the mail reached written on the report."""
    most = mail.limits.max_recipients
    if len(report.recipients) > most:
        mail.truncated.append(f"recipients: {most} of {len(report.recipients)} kept")
        del report.recipients[most:]
    report.truncated = list(mail.truncated)


def detect(mail: Mail) -> Report:
    for name, detector in DETECTORS:
        try:
            report = detector(mail)
        except Exception:
            if STRICT:
                raise
            continue  # one broken format must not cost the others
        if report is not None:
            report.format = report.format or name
            return report
    return Report(kind=Kind.UNKNOWN, format="unknown")


def finish(mail: Mail, report: Report) -> None:
    """Fill what every report shares: the original's headers, the verdict per recipient."""
    report.subject = report.subject or mail.subject or None
    report.sender_address = report.sender_address or mail.from_address or None
    try:
        original = mail.original
    except Exception:
        if STRICT:
            raise
        original = OriginalMessage()
    _merge_original(report.original, original)
    for rr in report.recipients:
        kind = recipient_kind(report, rr)
        if kind in _FIXED_REASON:
            rr.reason, rr.bounce_type = _FIXED_REASON[kind], BounceType.UNDETERMINED
            rr.status_source = StatusSource.DSN if rr.status else None
            continue
        try:
            verdict = classify(rr.status, rr.smtp_code, rr.diagnostic, kind, rr.action, command=rr.command,
                               recipient=rr.recipient)
            if verdict.stage is None and verdict.reason in ADDRESS_REASONS:
                # The stage decides these; a report often states it only in its human-readable part.
                stage = _stage_in_text(mail, report, rr)
                if stage:
                    rr.command = stage
                    verdict = classify(rr.status, rr.smtp_code, rr.diagnostic, kind, rr.action, command=stage,
                                       recipient=rr.recipient)
        except Exception:
            if STRICT:
                raise
            verdict = None  # no verdict is better than no report: reason stays "undefined"
        if verdict is not None:
            rr.reason, rr.bounce_type, rr.evidence = verdict.reason, verdict.bounce_type, verdict.evidence
            rr.status, rr.status_source = verdict.status, verdict.status_source
            rr.command = verdict.stage
            rr.decided_by = verdict.decided_by
        elif rr.status:
            rr.status_source = StatusSource.DSN
        if rr.status is None and rr.action in _CLASS_OF_ACTION:
            rr.status, rr.status_source = _CLASS_OF_ACTION[rr.action], StatusSource.ACTION


def _stage_in_text(mail: Mail, report: Report, rr) -> str | None:
    """The SMTP stage the human-readable part states for this recipient (see `stage_near`)."""
    from proxy.dsn.detectors.base import text_before_original

    found = stage_near(text_before_original(mail), rr.recipient, [r.recipient for r in report.recipients])
    if found is None and rr.final_recipient and rr.final_recipient != rr.recipient:
        found = stage_near(text_before_original(mail), rr.final_recipient, [r.recipient for r in report.recipients])
    return found[0] if found else None


def recipient_kind(report: Report, rr) -> Kind:
    """A recipient's own kind: its Action decides in a DSN that mixes outcomes."""
    if report.kind in (Kind.BOUNCE, Kind.DELAY, Kind.DELIVERED):
        return _KIND_OF_ACTION.get(rr.action or "", report.kind)
    return report.kind


def _merge_original(target: OriginalMessage, found: OriginalMessage) -> None:
    for name in OriginalMessage.__slots__:
        if not getattr(target, name) and getattr(found, name):
            setattr(target, name, getattr(found, name))
