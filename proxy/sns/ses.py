"""SES's JSON (the `Message` of an SNS notification) -> bounceproxy events. Pure: no I/O.

Written from AWS's "Amazon SES notification contents" and "Amazon SES event publishing contents".
Two shapes carry the same objects: identity feedback names its type `notificationType` (Bounce,
Complaint, Delivery); configuration-set event publishing names it `eventType` (also DeliveryDelay,
Reject, Send, Open, Click, Rendering Failure, Subscription).

What becomes an event, one per recipient (kinds as DESIGN.md, Classification):
- Bounce (`bounce.bouncedRecipients`): kind bounce;
- Complaint (`complaint.complainedRecipients`): kind complaint, reason feedback, feedback_type from
  `complaintFeedbackType` (abuse, fraud, virus, not-spam, other...);
- Delivery (`delivery.recipients`): kind delivered;
- DeliveryDelay (`deliveryDelay.delayedRecipients`): kind delay, soft;
- Reject (`mail.destination`): kind bounce, soft, reason virusdetected: SES refused the content
  itself (it rejects for a virus), which says nothing of the addresses.
Send, Open, Click, Rendering Failure, Subscription and anything else are acknowledged and recorded as
nothing: they teach the bounce log nothing about an address.

Reason and bounce_type of a bounce (and reason of a delay), so that bounceproxy's own policy, not
SES's label, decides what an address deserves:
- the reason is the project's classifier's (`proxy.dsn.classify`) verdict on the recipient's
  `status`, `diagnosticCode` and `action`, when it finds a cause; when it finds none (no diagnostic,
  or only its fallback onhold/expired/undefined), SES's bounceSubType (or delayType) gives it:
  NoEmail userunknown, Suppressed and OnAccountSuppressionList suppressed, MailboxFull mailboxfull,
  MessageTooLarge emailtoolarge, ContentRejected contenterror, AttachmentRejected virusdetected (the
  inverse of proxy.dsn.ses's export), General and Undetermined nothing (onhold / undefined stays).
  Suppressed and OnAccountSuppressionList always give `suppressed`: SES itself refused to send.
- bounce_type: bounceType Transient -> soft; Undetermined -> undetermined; Permanent -> hard only
  when the reason says the address itself is bad (userunknown, hostunknown, hasmoved, notaccept) and,
  when the classifier gave that reason, the classifier agrees it is a permanent failure; any other
  Permanent bounce (a blocklisted IP, a rejected content, a suppression) -> soft.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proxy.dsn.classify import HARD_REASONS, classify
from proxy.dsn.text import leading_code
from proxy.model import BounceEvent, BounceType, Kind, Source, Verdict

PARSER_VERSION = "ses-1"  # recorded on SES events; bump when this mapping changes

SUBTYPE_REASON = {
    "NoEmail": "userunknown",
    "Suppressed": "suppressed",
    "OnAccountSuppressionList": "suppressed",
    "MailboxFull": "mailboxfull",
    "MessageTooLarge": "emailtoolarge",
    "ContentRejected": "contenterror",
    "AttachmentRejected": "virusdetected",
}
SES_DECIDES = frozenset({"Suppressed", "OnAccountSuppressionList"})  # SES's own refusal: its word stands
DELAY_TYPE_REASON = {
    "MailboxFull": "mailboxfull",
    "SpamDetected": "spamdetected",
    "RecipientServerError": "systemerror",
    "IPFailure": "blocked",
    "TransientCommunicationFailure": "networkerror",
    "BYOIPHostNameLookupUnavailable": "networkerror",
    "InternalFailure": "systemerror",
    "SendingDeliveryQuotaExceeded": "speeding",
}
BOUNCE_TYPES = {"Transient": BounceType.SOFT, "Undetermined": BounceType.UNDETERMINED}
RECORDED = ("Bounce", "Complaint", "Delivery", "DeliveryDelay", "Reject")


@dataclass(slots=True)
class SesNotice:
    """One SES notification: what it names the message by, its feedback ids, and its events (not yet
    correlated: correlation none, no relay_id)."""

    event_type: str
    upstream_id: str | None = None  # mail.messageId: SES's id, the one in its "250 Ok <id>"
    header_message_id: str | None = None  # mail.commonHeaders.messageId, without <>
    feedback_ids: list[str] = field(default_factory=list)
    events: list[BounceEvent] = field(default_factory=list)


def read_notice(message: str, received_at: float) -> SesNotice | None:
    """The SES notification in an SNS `Message`, or None when it is not one (SES's own test message
    when a topic is set up is plain text)."""
    try:
        doc = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    event_type = _text(doc.get("eventType")) or _text(doc.get("notificationType"))
    if event_type is None:
        return None
    mail = _obj(doc, "mail")
    notice = SesNotice(event_type, upstream_id=_text(mail.get("messageId")),
                       header_message_id=_bare(_text(_obj(mail, "commonHeaders").get("messageId"))))
    at = _when(_text(mail.get("timestamp")), received_at)
    if event_type == "Bounce":
        notice.events = bounce_events(_obj(doc, "bounce"), at)
        notice.feedback_ids = _ids(_obj(doc, "bounce"))
    elif event_type == "Complaint":
        notice.events = complaint_events(_obj(doc, "complaint"), at)
        notice.feedback_ids = _ids(_obj(doc, "complaint"))
    elif event_type == "Delivery":
        notice.events = delivery_events(_obj(doc, "delivery"), at)
    elif event_type == "DeliveryDelay":
        notice.events = delay_events(_obj(doc, "deliveryDelay"), at)
    elif event_type == "Reject":
        notice.events = reject_events(_obj(doc, "reject"), mail, at)
    return notice


# -- one function per recorded type -----------------------------------------------------------------
def bounce_events(bounce: dict, at: float) -> list[BounceEvent]:
    at = _when(_text(bounce.get("timestamp")), at)
    ses_type, subtype = _text(bounce.get("bounceType")) or "", _text(bounce.get("bounceSubType")) or ""
    reporting_mta, remote_mta = _mta(bounce.get("reportingMTA")), _text(bounce.get("remoteMtaIp"))
    events = []
    for r in _objects(bounce, "bouncedRecipients"):
        address = _address(r.get("emailAddress"))
        if address is None:
            continue
        status, diagnostic, action = _text(r.get("status")), _text(r.get("diagnosticCode")), _text(r.get("action"))
        smtp_code = leading_code(diagnostic)
        verdict = classify(status, smtp_code, diagnostic, Kind.BOUNCE, action, recipient=address)
        reason, decided_by, by_classifier = bounce_reason(verdict, subtype)
        events.append(BounceEvent(
            at=at, source=Source.SES, kind=Kind.BOUNCE, recipient=address,
            bounce_type=bounce_type_for(ses_type, reason, verdict if by_classifier else None),
            reason=reason, status=verdict.status or status, status_source=verdict.status_source, smtp_code=smtp_code,
            diagnostic=diagnostic, remote_mta=_text(r.get("remoteMtaIp")) or remote_mta, reporting_mta=reporting_mta,
            evidence=f"SES {ses_type or '?'}/{subtype or '?'}; {verdict.evidence}", action=action,
            decided_by=decided_by, parser_version=PARSER_VERSION,
        ))
    return events


def complaint_events(complaint: dict, at: float) -> list[BounceEvent]:
    at = _when(_text(complaint.get("timestamp")), at)
    feedback = _text(complaint.get("complaintFeedbackType"))
    subtype = _text(complaint.get("complaintSubType"))
    evidence = f"SES complaint, feedback type {feedback or 'not given'}" + (f", {subtype}" if subtype else "")
    return [BounceEvent(at=at, source=Source.SES, kind=Kind.COMPLAINT, recipient=address, reason="feedback",
                        feedback_type=feedback.lower() if feedback else None, evidence=evidence,
                        decided_by="ses: complaint", parser_version=PARSER_VERSION)
            for address in _addresses(r.get("emailAddress") for r in _objects(complaint, "complainedRecipients"))]


def delivery_events(delivery: dict, at: float) -> list[BounceEvent]:
    at = _when(_text(delivery.get("timestamp")), at)
    response = _text(delivery.get("smtpResponse"))
    verdict = classify(None, leading_code(response), response, Kind.DELIVERED)
    recipients = delivery.get("recipients")
    return [BounceEvent(at=at, source=Source.SES, kind=Kind.DELIVERED, recipient=address, reason="delivered",
                        status=verdict.status, status_source=verdict.status_source, smtp_code=leading_code(response),
                        diagnostic=response, remote_mta=_text(delivery.get("remoteMtaIp")),
                        reporting_mta=_mta(delivery.get("reportingMTA")), evidence="SES delivery",
                        decided_by="ses: delivery", parser_version=PARSER_VERSION)
            for address in _addresses(recipients if isinstance(recipients, list) else [])]


def delay_events(delay: dict, at: float) -> list[BounceEvent]:
    at = _when(_text(delay.get("timestamp")), at)
    delay_type = _text(delay.get("delayType")) or ""
    reporting_mta = _mta(delay.get("reportingMTA"))
    events = []
    for r in _objects(delay, "delayedRecipients"):
        address = _address(r.get("emailAddress"))
        if address is None:
            continue
        status, diagnostic = _text(r.get("status")), _text(r.get("diagnosticCode"))
        smtp_code = leading_code(diagnostic)
        verdict = classify(status, smtp_code, diagnostic, Kind.DELAY, "delayed", recipient=address)
        reason, decided_by = verdict.reason, verdict.decided_by
        if _no_cause(verdict) and delay_type in DELAY_TYPE_REASON:
            reason, decided_by = DELAY_TYPE_REASON[delay_type], f"ses: delayType {delay_type}"
        events.append(BounceEvent(
            at=at, source=Source.SES, kind=Kind.DELAY, recipient=address, bounce_type=BounceType.SOFT,
            reason=reason, status=verdict.status or status, status_source=verdict.status_source, smtp_code=smtp_code,
            diagnostic=diagnostic, remote_mta=_text(delay.get("remoteMtaIp")), reporting_mta=reporting_mta,
            evidence=f"SES delay {delay_type or '?'}; {verdict.evidence}", action="delayed", decided_by=decided_by,
            parser_version=PARSER_VERSION,
        ))
    return events


def reject_events(reject: dict, mail: dict, at: float) -> list[BounceEvent]:
    why = _text(reject.get("reason")) or "not given"
    destination = mail.get("destination")
    return [BounceEvent(at=at, source=Source.SES, kind=Kind.BOUNCE, recipient=address, bounce_type=BounceType.SOFT,
                        reason="virusdetected", diagnostic=f"Amazon SES rejected the message: {why}",
                        evidence="SES reject: the content, not the address", decided_by="ses: reject",
                        parser_version=PARSER_VERSION)
            for address in _addresses(destination if isinstance(destination, list) else [])]


# -- the mapping (see the module's docstring) --------------------------------------------------------
def bounce_reason(verdict: Verdict, subtype: str) -> tuple[str, str | None, bool]:
    """(reason, what decided it, whether the classifier did)."""
    if subtype in SES_DECIDES or (_no_cause(verdict) and subtype in SUBTYPE_REASON):
        return SUBTYPE_REASON[subtype], f"ses: bounceSubType {subtype}", False
    return verdict.reason, verdict.decided_by, True


def bounce_type_for(ses_type: str, reason: str, verdict: Verdict | None) -> BounceType:
    """SES's bounceType, held to DESIGN.md's rule: hard only when the address itself is bad."""
    if ses_type != "Permanent":
        return BOUNCE_TYPES.get(ses_type, BounceType.UNDETERMINED)
    if reason not in HARD_REASONS:
        return BounceType.SOFT
    if verdict is not None and verdict.bounce_type != BounceType.HARD:
        return BounceType.SOFT
    return BounceType.HARD


def _no_cause(verdict: Verdict) -> bool:
    """The classifier found no cause: nothing to read, or only its fallback."""
    return verdict.decided_by is None or verdict.decided_by.startswith(("fallback", "kind"))


# -- reading hostile JSON: wrong types are treated as absent ----------------------------------------
def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _obj(doc: dict, key: str) -> dict:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _objects(doc: dict, key: str) -> list[dict]:
    value = doc.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _bare(value: str | None) -> str | None:
    return value.strip().strip("<>").strip() or None if value else None


def _address(value: Any) -> str | None:
    """A recipient as SES gives it, possibly `Name <a@b>`: the address, lower-cased, or None."""
    text = _text(value)
    if text is None:
        return None
    if "<" in text and text.endswith(">"):
        text = text[text.rindex("<") + 1:-1]
    text = text.strip().lower()
    return text if "@" in text and len(text) <= 320 else None


def _addresses(values) -> list[str]:
    return [a for a in (_address(v) for v in values) if a is not None]


def _ids(part: dict) -> list[str]:
    feedback = _text(part.get("feedbackId"))
    return [feedback] if feedback else []


def _mta(value: Any) -> str | None:
    """`dsn; a8-1.smtp-out.amazonses.com` -> the host."""
    text = _text(value)
    if text and ";" in text:
        text = text.split(";", 1)[1].strip() or None
    return text


def _when(text: str | None, default: float) -> float:
    if text:
        try:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is not None:
                return moment.timestamp()
        except ValueError:
            pass
    return default
