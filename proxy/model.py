"""Domain records and vocabulary shared by every part of bounceproxy.

Everything here is plain data: no I/O, so the pure parser (`proxy.dsn`) may import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    """What an inbound message (or a synchronous reply) is, before it means anything for an address."""

    BOUNCE = "bounce"
    DELAY = "delay"
    COMPLAINT = "complaint"
    AUTOREPLY = "autoreply"
    DELIVERED = "delivered"
    UNKNOWN = "unknown"


class BounceType(StrEnum):
    """What a bounce means for the recipient address (Sisimai's `hardbounce`, SES's bounceType)."""

    HARD = "hard"
    SOFT = "soft"
    UNDETERMINED = "undetermined"


class Source(StrEnum):
    SYNC = "sync"
    ASYNC = "async"


class StatusSource(StrEnum):
    """Where an event's enhanced status came from; never a made-up detail code."""

    DSN = "dsn"
    TEXT = "text"
    REPLY_CODE = "reply_code"
    ACTION = "action"


class Correlation(StrEnum):
    VERP = "verp"
    UPSTREAM_ID = "upstream_id"
    MESSAGE_ID = "message_id"
    RECIPIENT_WINDOW = "recipient_window"
    NONE = "none"


class MessageStatus(StrEnum):
    PENDING = "pending"  # in flight: recorded before the upstream's final reply
    SENT = "sent"
    PARTIAL = "partial"
    REJECTED = "rejected"
    FAILED = "failed"


class RecipientStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DEFERRED = "deferred"
    SUPPRESSED = "suppressed"


class ParseState(StrEnum):
    PENDING = "pending"
    PARSED = "parsed"
    FAILED = "failed"


# Sisimai's reason vocabulary (DESIGN.md, Classification).
REASONS = frozenset(
    """userunknown hostunknown mailboxfull emailtoolarge filtered rejected blocked spamdetected
    policyviolation securityerror contenterror expired networkerror systemerror systemfull mailererror
    toomanyconn speeding suspend hasmoved notaccept norelaying syntaxerror virusdetected authfailure
    badreputation requireptr notcompliantrfc suppressed onhold vacation feedback delivered undefined""".split()
)

# Reasons that say something about the sender, never about the recipient address.
SENDER_SIDE_REASONS = frozenset(
    """blocked spamdetected policyviolation badreputation authfailure requireptr contenterror
    securityerror toomanyconn speeding virusdetected notcompliantrfc rejected norelaying""".split()
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The classifier's answer, with the evidence an operator can read back."""

    reason: str
    bounce_type: BounceType
    status: str | None  # enhanced status, honest: only what the evidence supports
    status_source: StatusSource | None
    evidence: str  # e.g. "text: 'user unknown' (userunknown table)"


@dataclass(slots=True)
class OriginalMessage:
    """Headers of the message a report answers, as quoted in it."""

    message_id: str | None = None
    to: str | None = None
    sender: str | None = None  # From
    subject: str | None = None
    date: str | None = None
    return_path: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    ses_message_id: str | None = None  # from X-SES-Outgoing / the amazonses.com Message-ID local part


@dataclass(slots=True)
class RecipientReport:
    """One recipient's fate as a report tells it."""

    recipient: str  # Original-Recipient preferred over Final-Recipient, lower-cased domain
    action: str | None = None  # failed, delayed, delivered, relayed, expanded
    status: str | None = None
    status_source: StatusSource | None = None
    smtp_code: int | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None
    final_recipient: str | None = None
    last_attempt: str | None = None
    reason: str = "undefined"
    bounce_type: BounceType = BounceType.UNDETERMINED
    evidence: str = ""


@dataclass(slots=True)
class Report:
    """Everything `proxy.dsn.parse` learns from one inbound message."""

    kind: Kind
    format: str  # "rfc3464", "arf", "autoreply", or a detector's name ("postfix", "exim", ...)
    recipients: list[RecipientReport] = field(default_factory=list)
    reporting_mta: str | None = None
    arrival_date: str | None = None
    original: OriginalMessage = field(default_factory=OriginalMessage)
    feedback_type: str | None = None  # ARF
    user_agent: str | None = None  # ARF
    subject: str | None = None  # of the report itself
    envelope_sender: str | None = None  # X-Postfix-Sender / Original-Envelope-Id context
    original_envelope_id: str | None = None
    queue_id: str | None = None  # the reporting MTA's id of the original (X-Postfix-Queue-ID)
    sender_address: str | None = None  # From of the report itself (who is on vacation, for auto-replies)


@dataclass(slots=True)
class RecipientRecord:
    """One recipient of a relayed message and the upstream's reply to its RCPT."""

    address: str
    status: RecipientStatus
    reply: str = ""


@dataclass(slots=True)
class MessageRecord:
    """A message as the relay saw it; `id` is issued by the relay and names it in VERP tokens."""

    id: str
    created_at: float
    client_peer: str = ""
    client_user: str | None = None
    sender: str = ""
    header_from: str | None = None
    message_id: str | None = None
    subject: str | None = None
    upstream_id: str | None = None
    verp_token: str | None = None
    size: int = 0
    status: MessageStatus = MessageStatus.PENDING
    upstream_reply: str = ""
    send_failure: str | None = None  # an account-level refusal (throttling, not verified, auth)
    recipients: list[RecipientRecord] = field(default_factory=list)


@dataclass(slots=True)
class BounceEvent:
    """A bounce, delay, complaint or auto-reply concerning one recipient (or none: kept anyway)."""

    at: float
    source: Source
    kind: Kind
    recipient: str | None
    bounce_type: BounceType = BounceType.UNDETERMINED
    reason: str = "undefined"
    status: str | None = None
    status_source: StatusSource | None = None
    smtp_code: int | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None
    reporting_mta: str | None = None
    correlation: Correlation = Correlation.NONE
    message_id: str | None = None  # our messages.id, when correlated
    inbound_id: int | None = None
    evidence: str = ""
    feedback_type: str | None = None
    parser_version: str | None = None
    id: int | None = None
