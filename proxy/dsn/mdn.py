"""Message disposition notifications (RFC 8098): read receipts are no bounce, but a Sieve
"reject" (RFC 5429) travels as an MDN whose disposition is "deleted" or "denied".

Claimed here either way, so that a read receipt never reaches the generic text reader.
"""
from __future__ import annotations

from proxy.dsn.rfc3464 import blocks_of_part
from proxy.dsn.text import normalise_address, squash, strip_angle, strip_type
from proxy.model import Kind, RecipientReport, Report

_MDN_PARTS = ("message/disposition-notification", "message/global-disposition-notification")
_REFUSALS = ("deleted", "denied", "failed", "rejected", "error")


def detect(mail) -> Report | None:
    if mail.types.isdisjoint(_MDN_PARTS):
        return None
    fields: dict[str, str] = {}
    for ctype, part in mail.typed:
        if ctype in _MDN_PARTS:
            for block in blocks_of_part(part):
                for name, value in block.items():
                    fields.setdefault(name, value)
    disposition = fields.get("disposition", "").lower()
    address = normalise_address(strip_type(fields.get("final-recipient") or fields.get("original-recipient")))
    if not any(word in disposition.partition(";")[2] for word in _REFUSALS) or not address:
        return Report(kind=Kind.UNKNOWN, format="mdn")  # a receipt: read, displayed, processed
    reason = squash(mail.text[:2000]) or disposition
    report = Report(kind=Kind.BOUNCE, format="mdn",
                    recipients=[RecipientReport(recipient=address, action="failed", diagnostic=reason[:1000])])
    report.reporting_mta = strip_type(fields.get("reporting-ua") or fields.get("reporting-mta")) or None
    report.original.message_id = strip_angle(fields.get("original-message-id"))
    return report
