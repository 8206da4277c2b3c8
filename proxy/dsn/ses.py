"""Amazon SES vocabulary for what bounceproxy records: bounce types, sub-types, notifications.

Pure: dicts in, dicts out. For consumers written against SES's Amazon SNS notifications
("notificationType": "Bounce" / "Complaint", the ``bounce`` / ``complaint`` and ``mail``
objects), so that they can read bounceproxy's events unchanged.

Mapping (DESIGN.md, Classification):
- bounce_type hard -> Permanent, soft -> Transient, undetermined -> Undetermined.
- reason -> bounceSubType, within the pairs SES itself publishes:
  Permanent: General, NoEmail, Suppressed, OnAccountSuppressionList;
  Transient: General, MailboxFull, MessageTooLarge, ContentRejected, AttachmentRejected;
  Undetermined: Undetermined.
- ``suppressed`` is Permanent whatever our bounce_type says: SES publishes every suppression-list
  bounce as Permanent (Suppressed / OnAccountSuppressionList), and a consumer expects that.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from proxy.model import BounceType

BOUNCE_TYPES = {BounceType.HARD: "Permanent", BounceType.SOFT: "Transient", BounceType.UNDETERMINED: "Undetermined"}

PERMANENT_SUBTYPES = ("General", "NoEmail", "Suppressed", "OnAccountSuppressionList")
TRANSIENT_SUBTYPES = ("General", "MailboxFull", "MessageTooLarge", "ContentRejected", "AttachmentRejected")

_PERMANENT_SUBTYPE = {"userunknown": "NoEmail", "hostunknown": "NoEmail"}
_TRANSIENT_SUBTYPE = {
    "mailboxfull": "MailboxFull",
    "emailtoolarge": "MessageTooLarge",
    "spamdetected": "ContentRejected",
    "contenterror": "ContentRejected",
    "policyviolation": "ContentRejected",
    "notcompliantrfc": "ContentRejected",
    "virusdetected": "AttachmentRejected",
}
_ACCOUNT_LIST = re.compile(r"suppression list for your account|account-level suppression", re.I)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?:ipv6:)?((?:[0-9a-f]{1,4}:){2,7}[0-9a-f]{1,4})", re.I)


def ses_bounce_type(bounce_type: BounceType | str | None) -> str:
    """hard -> Permanent, soft -> Transient, anything else -> Undetermined."""
    try:
        return BOUNCE_TYPES[BounceType(bounce_type)]
    except ValueError:
        return "Undetermined"


def ses_bounce_subtype(reason: str | None, bounce_type: BounceType | str | None, diagnostic: str | None = None) -> str:
    """The bounceSubType SES would give, consistent with ses_bounce_type (see the module's mapping).

    `diagnostic` only tells SES's two suppression lists apart (the account's own list says so)."""
    if reason == "suppressed":
        return "OnAccountSuppressionList" if diagnostic and _ACCOUNT_LIST.search(diagnostic) else "Suppressed"
    kind = ses_bounce_type(bounce_type)
    if kind == "Permanent":
        return _PERMANENT_SUBTYPE.get(reason or "", "General")
    if kind == "Transient":
        return _TRANSIENT_SUBTYPE.get(reason or "", "General")
    return "Undetermined"


def ses_notification(event: dict[str, Any], message: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object SES would publish for one bounce or complaint event.

    event keys: id, at, recipient, kind (bounce|delay|complaint), bounce_type, reason, status,
    smtp_code, diagnostic, remote_mta, reporting_mta, feedback_type.
    message keys (None when the event is not correlated): id, upstream_id, sender, header_from,
    message_id, recipients, subject, created_at.
    """
    kind = str(event.get("kind") or "bounce")
    timestamp = _timestamp(event.get("at"))
    feedback_id = str(event["id"]) if event.get("id") is not None else None
    recipient = event.get("recipient")
    mail = _mail(event, message)
    if kind == "complaint":
        complaint: dict[str, Any] = {
            "complainedRecipients": [{"emailAddress": recipient}] if recipient else [],
            "timestamp": timestamp,
            "feedbackId": feedback_id,
        }
        if event.get("feedback_type"):
            complaint["complaintFeedbackType"] = str(event["feedback_type"])
        return {"notificationType": "Complaint", "complaint": _compact(complaint), "mail": mail}
    if kind not in ("bounce", "delay"):
        raise ValueError(f"SES publishes bounce and complaint notifications, not {kind!r} ones")

    reason = event.get("reason")
    bounce_type = ses_bounce_type(event.get("bounce_type"))
    if reason == "suppressed":
        bounce_type = "Permanent"
    sub_type = ses_bounce_subtype(reason, "hard" if bounce_type == "Permanent" else event.get("bounce_type"),
                                  event.get("diagnostic"))
    bounced: dict[str, Any] = {"emailAddress": recipient, "action": "delayed" if kind == "delay" else "failed"}
    if event.get("status"):
        bounced["status"] = str(event["status"])
    if event.get("diagnostic"):
        bounced["diagnosticCode"] = _diagnostic_code(str(event["diagnostic"]))
    bounce: dict[str, Any] = {
        "bounceType": bounce_type,
        "bounceSubType": sub_type,
        "bouncedRecipients": [_compact(bounced)] if recipient else [],
        "timestamp": timestamp,
        "feedbackId": feedback_id,
    }
    if event.get("reporting_mta"):
        bounce["reportingMTA"] = _mta(str(event["reporting_mta"]))
    ip = _ip(event.get("remote_mta"))
    if ip:
        bounce["remoteMtaIp"] = ip
    return {"notificationType": "Bounce", "bounce": _compact(bounce), "mail": mail}


def _mail(event: dict[str, Any], message: dict[str, Any] | None) -> dict[str, Any]:
    recipient = event.get("recipient")
    if not message:
        return _compact({"timestamp": _timestamp(event.get("at")), "messageId": None,
                         "destination": [recipient] if recipient else []}, keep=("messageId",))
    recipients = [str(r) for r in (message.get("recipients") or [])] or ([recipient] if recipient else [])
    common = _compact({
        "from": [str(message["header_from"])] if message.get("header_from") else None,
        "to": recipients or None,
        "messageId": message.get("message_id"),
        "subject": message.get("subject"),
    })
    message_id = message.get("upstream_id") or message.get("id")
    return _compact({
        "timestamp": _timestamp(message.get("created_at")),
        "messageId": str(message_id) if message_id is not None else None,
        "source": message.get("sender"),
        "destination": recipients,
        "commonHeaders": common,
    }, keep=("messageId",))


def _timestamp(value: Any) -> str | None:
    """ISO 8601 in UTC with milliseconds, as SES writes it (2016-01-27T14:59:38.237Z)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        when = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _diagnostic_code(text: str) -> str:
    """SES writes the Diagnostic-Code with its type: 'smtp; 550 5.1.1 user unknown'."""
    text = text.strip()
    return text if re.match(r"^[a-z][\w.-]{0,20};", text, re.I) or not re.match(r"^[245]\d\d\b", text) else f"smtp; {text}"


def _mta(value: str) -> str:
    value = value.strip()
    return value if ";" in value else f"dns; {value}"


def _ip(remote_mta: Any) -> str | None:
    if not remote_mta:
        return None
    text = str(remote_mta)
    m = _IPV4.search(text)
    if m:
        return m.group(0)
    m = _IPV6.search(text)
    return m.group(1) if m else None


def _compact(obj: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None or k in keep}
