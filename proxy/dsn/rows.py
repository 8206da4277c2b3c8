"""A Report as the flat rows `bounceproxy parse --json` prints (DESIGN.md, Interfaces).

One row per bounced, delayed or complained recipient, each with its own kind (a DSN that
mixes a failure and a delivery gives one `bounce` row; the delivered recipient is no
bounce). A report with no such recipient (a success notice, an auto-reply, a mail that is
no report at all) gives one row with `recipient: None` and the report's kind, so that
every file is accounted for and nobody is reported who did not bounce.
"""
from __future__ import annotations

from proxy.model import Kind, Report

ROW_KINDS = frozenset((Kind.BOUNCE, Kind.DELAY, Kind.COMPLAINT))

KEYS = ("file", "recipient", "kind", "action", "status", "smtp_code", "bounce_type", "reason", "diagnostic",
        "remote_mta", "reporting_mta", "original_message_id", "format", "status_source", "feedback_type",
        "smtp_command", "decided_by")


def report_rows(file: str, report: Report) -> list[dict]:
    from proxy.dsn.parser import recipient_kind

    common = {
        "file": file,
        "reporting_mta": report.reporting_mta,
        "original_message_id": _bare(report.original.message_id),
        "format": report.format,
        "feedback_type": report.feedback_type,
    }
    rows = []
    for rr in report.recipients:
        kind = recipient_kind(report, rr)
        if kind not in ROW_KINDS:
            continue
        row = dict.fromkeys(KEYS)
        row.update(common)
        row.update(
            recipient=rr.recipient,
            kind=str(kind),
            action=rr.action,
            status=rr.status,
            smtp_code=rr.smtp_code,
            bounce_type=str(rr.bounce_type),
            reason=rr.reason,
            diagnostic=rr.diagnostic,
            remote_mta=rr.remote_mta,
            status_source=str(rr.status_source) if rr.status_source else None,
            smtp_command=rr.command,
            decided_by=rr.decided_by,
        )
        rows.append(row)
    if not rows:
        row = dict.fromkeys(KEYS)
        row.update(common, kind=str(report.kind))
        rows.append(row)
    return rows


def _bare(message_id: str | None) -> str | None:
    return message_id.strip().strip("<>").strip() or None if message_id else None
