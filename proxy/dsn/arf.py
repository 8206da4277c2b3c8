"""Complaints: ARF (RFC 5965) feedback reports, and the few providers that send their own shape.

A complaint names the recipient who complained; ARF says it in Original-Rcpt-To (or
Removal-Recipient), and otherwise the returned message's To is the best evidence.
"""
from __future__ import annotations

from proxy.dsn.text import ADDR_RE, normalise_address, squash, strip_type
from proxy.model import Kind, RecipientReport, Report

_FEEDBACK_PARTS = ("message/feedback-report", "text/feedback-report")
_RECIPIENT_HEADERS = ("X-HmXmrOriginalRecipient", "X-Original-To", "Delivered-To")


def detect(mail) -> Report | None:
    """An ARF report, wherever its feedback part sits (some wrap it in multipart/mixed)."""
    if mail.types.isdisjoint(_FEEDBACK_PARTS):
        return None
    for ctype, part in mail.typed:
        if ctype in _FEEDBACK_PARTS:
            return _from_fields(mail, _fields(part))
    return None


def _fields(part) -> dict[str, list[str]]:
    """The feedback fields; the stdlib stores a message/* part as a parsed message."""
    from proxy.dsn.mail import part_text
    from proxy.dsn.rfc3464 import blocks_in_text

    fields: dict[str, list[str]] = {}
    payload = part.get_payload()
    if isinstance(payload, list):
        for block in payload[:1]:
            for name, value in block.items():
                fields.setdefault(name.lower(), []).append(squash(str(value)))
            body = block.get_payload()
            if isinstance(body, str) and body.strip():
                for extra in blocks_in_text(body, start_anywhere=True):
                    for name, value in extra.items():
                        fields.setdefault(name, []).append(value)
    else:
        for block in blocks_in_text(part_text(part), start_anywhere=True):
            for name, value in block.items():
                fields.setdefault(name, []).append(value)
    return fields


def _from_fields(mail, fields: dict[str, list[str]]) -> Report:
    first = lambda name: (fields.get(name) or [""])[0]  # noqa: E731 - one-line accessor
    recipients = []
    for name in ("original-rcpt-to", "removal-recipient"):
        for value in fields.get(name, []):
            address = normalise_address(strip_type(value))
            if address and address.lower() not in {r.recipient.lower() for r in recipients}:
                recipients.append(RecipientReport(recipient=address))
        if recipients:
            break
    if not recipients:
        address = _original_recipient(mail)
        if address:
            recipients.append(RecipientReport(recipient=address))
    report = Report(kind=Kind.COMPLAINT, format="arf", recipients=recipients)
    report.feedback_type = first("feedback-type").lower() or "abuse"
    report.user_agent = first("user-agent") or None
    report.reporting_mta = strip_type(first("reporting-mta")) or None
    report.arrival_date = first("arrival-date") or first("received-date") or None
    report.envelope_sender = normalise_address(first("original-mail-from"))
    return report


def _original_recipient(mail) -> str | None:
    """The complained-about recipient when the report does not name one: the returned mail's."""
    for ctype, part in mail.typed:
        if ctype in ("message/rfc822", "message/global") and part is not mail.msg:
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                for name in _RECIPIENT_HEADERS:
                    address = normalise_address(mail.header(name, inner[0]))
                    if address:
                        return address
    to = mail.original.to
    return normalise_address(to) if to and ADDR_RE.search(to) else None


def detect_hotmail(mail) -> Report | None:
    """Outlook.com's JMRP: the complained mail attached, its recipient in X-HmXmrOriginalRecipient."""
    if "complaint about message from" not in mail.subject.lower():
        return None
    address = _original_recipient(mail)
    report = Report(kind=Kind.COMPLAINT, format="hotmail-jmrp",
                    recipients=[RecipientReport(recipient=address)] if address else [])
    report.feedback_type = "abuse"
    return report


def detect_unsubscribe(mail) -> Report | None:
    """Apple Mail's one-click unsubscribe: the user asks, by mail, never to be written again."""
    if mail.header("X-Apple-Unsubscribe").lower() != "true":
        return None
    address = normalise_address(mail.from_header)
    report = Report(kind=Kind.COMPLAINT, format="apple-unsubscribe",
                    recipients=[RecipientReport(recipient=address)] if address else [])
    report.feedback_type = "unsubscribe"
    return report
