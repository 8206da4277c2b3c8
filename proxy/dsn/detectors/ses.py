"""Amazon SES notifications delivered by mail (SNS "AWS Notification Message"): JSON.

Bounce, Complaint and Delivery notifications carry their recipients and SES's message id
as JSON; the mail transport may have wrapped the long line ("!" + newline + space).
"""
from __future__ import annotations

import re

from proxy.dsn.text import find_status, leading_code, normalise_address, strip_type
from proxy.model import Kind, RecipientReport, Report

_SIGN_RE = re.compile(r'\\?"notificationType\\?"\s*:\s*\\?"(Bounce|Complaint|Delivery)')
_WRAP_RE = re.compile(r"!\r?\n ")


def detect(mail):
    text = mail.text
    if "notificationType" not in text[:16384]:
        return None
    m = _SIGN_RE.search(text[:16384])
    if not m:
        return None
    data = _load(text[text.find("{", 0, m.start() + 1) :])
    if isinstance(data, dict) and isinstance(data.get("Message"), str):  # the SNS envelope around it
        data = _load(data["Message"])
    if not isinstance(data, dict):
        return None
    kind = {"Bounce": Kind.BOUNCE, "Complaint": Kind.COMPLAINT, "Delivery": Kind.DELIVERED}[m.group(1)]
    report = Report(kind=kind, format="ses-json")
    section = data.get(m.group(1).lower()) or {}
    if kind is Kind.BOUNCE:
        report.reporting_mta = strip_type(str(section.get("reportingMTA") or "")) or None
        for item in section.get("bouncedRecipients") or []:
            rr = _recipient(item)
            if rr:
                rr.action = str(item.get("action") or "failed").lower()
                report.recipients.append(rr)
    elif kind is Kind.COMPLAINT:
        report.feedback_type = section.get("complaintFeedbackType") or "abuse"
        report.user_agent = section.get("userAgent")
        for item in section.get("complainedRecipients") or []:
            rr = _recipient(item)
            if rr:
                report.recipients.append(rr)
    else:
        for address in section.get("recipients") or []:
            response = str(section.get("smtpResponse") or "")
            rr = _recipient({"emailAddress": address, "diagnosticCode": response, "status": response})
            if rr:
                rr.action = "delivered"
                report.recipients.append(rr)
    _original(report, data.get("mail") or {})
    return report


def _load(text: str):
    import json

    end = text.rfind("}")
    if end < 0:
        return None
    candidate = text[: end + 1]
    for attempt in (candidate, _WRAP_RE.sub("", candidate)):
        try:
            return json.loads(attempt)
        except ValueError:
            continue
    return None


def _recipient(item) -> RecipientReport | None:
    if not isinstance(item, dict):
        return None
    address = normalise_address(str(item.get("emailAddress") or ""))
    if not address:
        return None
    diagnostic = strip_type(str(item.get("diagnosticCode") or "")) or None
    return RecipientReport(
        recipient=address,
        status=find_status(str(item.get("status") or "")),
        smtp_code=leading_code(diagnostic),
        diagnostic=diagnostic,
    )


def _original(report: Report, mail: dict) -> None:
    from proxy.dsn.text import strip_angle

    report.original.ses_message_id = mail.get("messageId") or None
    common = mail.get("commonHeaders") or {}
    report.original.message_id = strip_angle(str(common.get("messageId") or "")) or None
    report.original.subject = common.get("subject")
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            report.original.message_id = report.original.message_id or strip_angle(str(header.get("value") or ""))
