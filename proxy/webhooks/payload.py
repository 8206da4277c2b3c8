"""The JSON a webhook POSTs for one outbox entry. Pure: records in, bytes out.

Shaped as SES's own notification (the object `bounces --format ses` prints, with SES's `eventType`)
so that a consumer written for SES reads it unchanged, plus a `bounceproxy` object with what SES
does not say (the stable event id, the relay's id, the correlation, the source).

The body is what is signed and what receivers de-duplicate: the same entry always gives the same
bytes (sorted keys, no time of the attempt in it; the signature's `t` is per attempt).
"""
from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from proxy.dsn.ses import ses_notification
from proxy.model import BounceEvent, MessageRecord, NotificationType, OutboxEntry

# SES's eventType names for what SES also publishes; bounceproxy's own for the rest.
EVENT_TYPES = {
    NotificationType.BOUNCE: "Bounce",
    NotificationType.COMPLAINT: "Complaint",
    NotificationType.DELAY: "DeliveryDelay",
    NotificationType.SEND_FAILURE: "SendFailure",
    NotificationType.SUPPRESSION_ADDED: "SuppressionAdded",
    NotificationType.SUPPRESSION_REMOVED: "SuppressionRemoved",
}
EVENT_KINDS = (NotificationType.BOUNCE, NotificationType.COMPLAINT, NotificationType.DELAY)

# reason -> SES's deliveryDelay.delayType (anything else: General)
_DELAY_TYPES = {"mailboxfull": "MailboxFull", "spamdetected": "SpamDetected", "systemerror": "RecipientServerError",
                "systemfull": "RecipientServerError", "networkerror": "TransientCommunicationFailure",
                "expired": "TransientCommunicationFailure", "blocked": "IPFailure"}


class PayloadError(ValueError):
    """The entry cannot be told: what it names is no longer in the log. Retrying will not help."""


def body(entry: OutboxEntry, event: BounceEvent | None, message: MessageRecord | None) -> bytes:
    """The bytes POSTed and signed: stable JSON of `notification`."""
    return json.dumps(notification(entry, event, message), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def notification(entry: OutboxEntry, event: BounceEvent | None, message: MessageRecord | None) -> dict[str, Any]:
    """The object for one entry: `event` is the logged event (for suppression_added: the one that
    caused it, when known), `message` the relayed message it concerns, when known."""
    kind = NotificationType(entry.type)
    if kind in EVENT_KINDS:
        if event is None:
            raise PayloadError(f"event {entry.event_id} of {entry.key} is no longer in the log")
        out = _ses_event(kind, event, message)
    elif kind == NotificationType.SEND_FAILURE:
        out = {"mail": _mail(message, entry), "sendFailure": _send_failure(entry)}
    else:
        out = {"suppression": _suppression(entry)}
    out["eventType"] = EVENT_TYPES[kind]
    out["bounceproxy"] = _own_fields(entry, event, message)
    return out


# -- what SES publishes -------------------------------------------------------------------------------
def _ses_event(kind: NotificationType, event: BounceEvent, message: MessageRecord | None) -> dict[str, Any]:
    out = ses_notification(dataclasses.asdict(event), _message_fields(message))
    if kind != NotificationType.DELAY:
        return out
    # SES tells a delay as a DeliveryDelay event, never as a bounce: a consumer must not suppress on it
    bounce = out.pop("bounce")
    out.pop("notificationType", None)
    out["deliveryDelay"] = _compact({
        "timestamp": bounce.get("timestamp"),
        "delayType": _DELAY_TYPES.get(event.reason, "General"),
        "delayedRecipients": [{k: v for k, v in r.items() if k != "action"} for r in bounce["bouncedRecipients"]],
        "reportingMTA": bounce.get("reportingMTA"),
    })
    return out


def _message_fields(message: MessageRecord | None) -> dict[str, Any] | None:
    """A message as proxy.dsn.ses reads it."""
    if message is None:
        return None
    return {"id": message.id, "upstream_id": message.upstream_id, "sender": message.sender,
            "header_from": message.header_from, "message_id": message.message_id,
            "recipients": [r.address for r in message.recipients], "subject": message.subject,
            "created_at": message.created_at}


def _mail(message: MessageRecord | None, entry: OutboxEntry) -> dict[str, Any]:
    """SES's `mail` object for what is not an event (a send failure)."""
    fields = _message_fields(message)
    if fields is None:
        return {"timestamp": _iso(entry.created_at), "messageId": None, "destination": []}
    probe = {"kind": "bounce", "at": entry.created_at, "recipient": None}
    return ses_notification(probe, fields)["mail"]


# -- what bounceproxy adds ----------------------------------------------------------------------------
def _send_failure(entry: OutboxEntry) -> dict[str, Any]:
    snap = entry.snapshot or {}
    return {"timestamp": _iso(entry.created_at), "reason": snap.get("send_failure"),
            "upstreamReply": snap.get("upstream_reply"), "recipients": list(snap.get("recipients") or [])}


def _suppression(entry: OutboxEntry) -> dict[str, Any]:
    snap = entry.snapshot or {}
    return {"timestamp": _iso(entry.created_at), "emailAddress": snap.get("address", entry.address),
            "scope": snap.get("scope", ""), "reason": snap.get("reason"), "kind": snap.get("kind"),
            "createdAt": _iso(snap.get("created_at")), "expiresAt": _iso(snap.get("expires_at")),
            "sourceEventId": snap.get("source_event")}


def _own_fields(entry: OutboxEntry, event: BounceEvent | None, message: MessageRecord | None) -> dict[str, Any]:
    """The same keys for every type (null where they do not apply): one parser on the receiving side."""
    snap = entry.snapshot or {}
    e = event
    return {
        "eventId": entry.key,
        "type": NotificationType(entry.type).value,
        "address": entry.address,
        "queuedAt": _iso(entry.created_at),
        "relayId": entry.relay_id or (e.relay_id if e else None) or (message.id if message else None),
        "messageId": message.message_id if message else None,
        "upstreamId": message.upstream_id if message else None,
        "logEventId": e.id if e else None,
        "source": _plain(e.source) if e else None,
        "correlation": _plain(e.correlation) if e else None,
        "reason": snap.get("reason") if entry.type in _SUPPRESSIONS else (e.reason if e else None),
        "bounceType": _plain(e.bounce_type) if e and e.kind == "bounce" else None,
        "status": e.status if e else None,
        "smtpCode": e.smtp_code if e else None,
        "diagnostic": e.diagnostic if e else snap.get("send_failure"),
    }


_SUPPRESSIONS = (NotificationType.SUPPRESSION_ADDED, NotificationType.SUPPRESSION_REMOVED)


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _iso(ts: float | None) -> str | None:
    """As SES writes times: ISO 8601 UTC with milliseconds."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _compact(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None}
