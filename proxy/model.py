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
    """Where an event was learnt: the SMTP conversation, a report mailed to the bounce MX, or SES's
    own notification (SNS), which is kept beside the DSN-derived event for the same recipient."""

    SYNC = "sync"
    ASYNC = "async"
    SES = "ses"


class StatusSource(StrEnum):
    """Where an event's enhanced status came from; never a made-up detail code."""

    DSN = "dsn"
    TEXT = "text"
    REPLY_CODE = "reply_code"
    ACTION = "action"


class Correlation(StrEnum):
    """Which evidence tied a late report to a message (DESIGN.md, Correlation), strongest first.

    FOREIGN_RECIPIENT: the report's evidence identified a message, but this address was not one of
    that message's recipients (or not the one its VERP token names). Evidence vouches only for the
    message's own recipients, so such an event is kept, linked to the message it abused, counted
    and shown, and can never act (suppress, count in rates), whatever the configuration says.
    """

    VERP = "verp"
    UPSTREAM_ID = "upstream_id"
    MESSAGE_ID = "message_id"
    RECIPIENT_WINDOW = "recipient_window"
    FOREIGN_RECIPIENT = "foreign_recipient"
    NONE = "none"


# Correlations no configuration may act on (`[suppression] act_on_correlations`).
NEVER_ACTS = frozenset({Correlation.FOREIGN_RECIPIENT})


class MessageStatus(StrEnum):
    """What became of a relayed message: one meaning each, decided by `settle_status` (README, Message status).

    PENDING        in flight: committed just before the end of data goes upstream, so that a crash
                   between the upstream's 250 and the final commit cannot leave a delivery out of the log.
    SENT           the upstream answered 250 to the end of data and accepted every recipient.
    PARTIAL        the upstream answered 250 to the end of data for some recipients; others were refused
                   (5xx), deferred (4xx) or suppressed. One accepted and one answered 454 is partial.
    REJECTED       nothing was sent and retrying the same will not help: the upstream refused the message
                   itself permanently (5xx to the end of data), or every recipient was refused permanently
                   (5xx at RCPT, a DNS preflight refusal, a hard suppression: a 5xx reply).
    FAILED         nothing was sent for a temporary reason a retry may overcome: a 4xx reply (a deferred
                   or softly suppressed recipient among the refused ones, a 4xx to the end of data), a send
                   failure (throttling, sender not verified, the relay's credentials refused), the upstream
                   unreachable (the client got 451 4.4.1), or the client gave up before DATA.
    POSSIBLY_SENT  the upstream may have the message but bounceproxy never learned its answer: the
                   process died after the in-flight commit (found at the next start), or the upstream
                   connection was lost after the body went out. The client was not told 250, so it may
                   send the message again: see `duplicates` in stats.
    """

    PENDING = "pending"
    SENT = "sent"
    PARTIAL = "partial"
    REJECTED = "rejected"
    FAILED = "failed"
    POSSIBLY_SENT = "possibly_sent"
    # spool mode (issue 16): the client was told 250 and the message waits in the spool for a recipient still
    # pending; it becomes one of the statuses above when none is (proxy.spool)
    QUEUED = "queued"


# Statuses of a message that recipients may have received: a second one with the same Message-ID
# and a shared recipient is a duplicate.
MAY_HAVE_GONE_OUT = (MessageStatus.SENT, MessageStatus.PARTIAL, MessageStatus.POSSIBLY_SENT)


class RecipientStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DEFERRED = "deferred"
    SUPPRESSED = "suppressed"
    QUEUED = "queued"  # spool mode: accepted into the spool, not yet delivered (proxy.spool)


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
    # What decided it (issue 11): the classifier step ("provider", "text", "status", ...) and its rule,
    # the SMTP stage the verdict took into account (RCPT, DATA, MAIL, HELO, CONN), and the steps taken.
    decided_by: str | None = None  # e.g. 'text: userunknown row 3 "user unknown" (Postfix ...)'
    stage: str | None = None
    steps: tuple[str, ...] = ()


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
    command: str | None = None  # the SMTP command the failure answered, where the report states it
    decided_by: str | None = None  # the classifier step and rule that gave the reason


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
    truncated: list[str] = field(default_factory=list)  # each parse limit the mail reached, "what: N of M"


@dataclass(slots=True)
class RecipientRecord:
    """One recipient of a relayed message and the upstream's reply to its RCPT."""

    address: str
    status: RecipientStatus
    reply: str = ""


def settle_status(recipients: list[RecipientRecord], data_code: int | None, send_failure: str | None) -> MessageStatus:
    """A message's final status (see MessageStatus) from its recipients' replies, the upstream's code to
    the end of data (None when the transaction never got there) and its send failure, if any."""
    if data_code is not None and 200 <= data_code < 300:
        if all(r.status == RecipientStatus.ACCEPTED for r in recipients):
            return MessageStatus.SENT
        return MessageStatus.PARTIAL
    if send_failure:
        return MessageStatus.FAILED
    if data_code is not None:
        return MessageStatus.REJECTED if data_code >= 500 else MessageStatus.FAILED
    if recipients and all(_permanent(r) for r in recipients):
        return MessageStatus.REJECTED
    return MessageStatus.FAILED


def _permanent(r: RecipientRecord) -> bool:
    """A recipient refused for good: a 5xx reply (a suppression says 4xx when it is soft)."""
    if r.status == RecipientStatus.ACCEPTED:
        return False
    code = r.reply[:1]
    if code in ("4", "5"):
        return code == "5"
    return r.status == RecipientStatus.REJECTED


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
    content_sha256: str | None = None  # of the client's bytes: ties an MTA's retries of one message
    recipients: list[RecipientRecord] = field(default_factory=list)
    # Listings only (Store.list_messages): it may have reached a recipient who had it already.
    duplicate: bool = False


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
    relay_id: str | None = None  # the relay's id of the message (MessageRecord.id), when correlated
    inbound_id: int | None = None
    evidence: str = ""
    feedback_type: str | None = None
    parser_version: str | None = None
    id: int | None = None
    # What the verdict was made from, so that `reparse --classify-only` can make it again (issue 11):
    smtp_command: str | None = None  # the SMTP stage the verdict took into account (RCPT, DATA, MAIL...)
    action: str | None = None  # the DSN's Action (failed, delayed)
    decided_by: str | None = None  # the classifier step and rule that gave the reason


# -- records the store returns (proxy.store.Store) ---------------------------------------------------
# One name per id: `id` is a record's own key; `relay_id` is always the relay's id of a message
# (MessageRecord.id); `message_id` is always the client's Message-ID header.


@dataclass(slots=True)
class EventEntry:
    """A logged event with what the log knows of its message (Store.list_events)."""

    event: BounceEvent
    sender: str | None = None  # the message's envelope sender
    message_id: str | None = None  # the message's Message-ID header
    upstream_id: str | None = None
    subject: str | None = None


@dataclass(slots=True)
class InboundRecord:
    """A mail the bounce MX received, as stored before its 250."""

    id: int
    received_at: float
    peer: str
    mail_from: str
    rcpt_tos: list[str]
    size: int
    sha256: str
    state: ParseState
    raw: bytes | None = None  # None in listings (Store.list_inbound)
    parser_version: str | None = None
    kind: str | None = None
    format: str | None = None
    error: str | None = None
    foreign_recipients: int = 0
    flag: str | None = None
    truncated: str | None = None


@dataclass(slots=True)
class InboundResult:
    """What parsing one inbound mail came to (Store.record_inbound_result)."""

    state: ParseState
    parser_version: str | None
    kind: str | None = None
    format: str | None = None
    error: str | None = None
    events: list[BounceEvent] = field(default_factory=list)
    foreign_recipients: int = 0
    flag: str | None = None
    truncated: str | None = None
    sha256: str | None = None  # set: the same bytes recorded by another inbound row make this one a duplicate


@dataclass(slots=True)
class Suppression:
    """One address on the suppression list, in a scope ('' or a sender domain)."""

    scope: str
    address: str
    reason: str
    kind: str  # hard, soft, complaint, manual, import
    created_at: float
    expires_at: float | None = None
    source_event: int | None = None
    seq: int = 0  # order of writes, so that other instances pick up what changed


@dataclass(slots=True)
class SoftBounce:
    """A soft bounce that may count against an address, with what ties retries of one message."""

    at: float
    relay_id: str | None
    message_id: str | None
    content_sha256: str | None
    verp_token: str | None


@dataclass(slots=True)
class IdentityStats:
    """A sending identity (sender domain): recipients, hard bounces and complaints of its messages."""

    identity: str
    recipients: int
    hard_bounces: int
    complaints: int


@dataclass(slots=True)
class LogStats:
    """Counts behind `stats` over a window (proxy.queries.summarize turns them into rates)."""

    messages: dict[str, int]  # by status
    recipients: int
    events: list[dict]  # rows: source kind bounce_type reason n (foreign recipients left out)
    correlations: dict[str, int]  # late reports' events per correlation
    duplicates: int


@dataclass(slots=True)
class MetricCounts:
    """Row counts of the bounce log by the labels /metrics exposes."""

    messages: dict[str, int]
    recipients: dict[str, int]
    events: list[tuple[str, str, str, int]]  # source, kind, bounce_type, n
    inbound: dict[str, int]
    correlations: dict[str, int]
    inbound_flags: dict[str, int]
    suppressions: dict[str, int]
    last_event_at: float | None
    last_message_at: float | None


# -- telling applications (webhooks) ------------------------------------------------------------------
class NotificationType(StrEnum):
    """What a webhook tells an application; `[webhooks]` filters by these names."""

    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    DELAY = "delay"
    SEND_FAILURE = "send_failure"
    SUPPRESSION_ADDED = "suppression_added"
    SUPPRESSION_REMOVED = "suppression_removed"


# Event kinds an application hears of; auto-replies, deliveries and unknown mail are no news for it.
NOTIFIED_KINDS = {Kind.BOUNCE: NotificationType.BOUNCE, Kind.COMPLAINT: NotificationType.COMPLAINT,
                  Kind.DELAY: NotificationType.DELAY}


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """One `[webhooks]` URL and the notification types it wants (None: all of them)."""

    url: str
    types: frozenset[str] | None = None

    def wants(self, kind: str) -> bool:
        return self.types is None or kind in self.types


@dataclass(slots=True)
class OutboxEntry:
    """One notification for one URL in the durable outbox, written in the transaction of what it tells.

    `key` is the stable event id receivers de-duplicate on; entries for one (url, address) are
    delivered in order, each only after the one before it was delivered or given up (`dead`)."""

    id: int
    key: str
    url: str
    type: NotificationType
    address: str
    created_at: float
    state: str  # pending, delivered, dead
    attempts: int = 0
    next_at: float = 0.0
    relay_id: str | None = None
    event_id: int | None = None
    snapshot: dict | None = None  # what a suppression change or a send failure said, as it was
    last_error: str | None = None
    delivered_at: float | None = None


# -- the spool (spool mode, issue 16) ------------------------------------------------------------------
class SpoolState(StrEnum):
    """A spooled message: waiting for its turn (`queued`) or kept back until an operator releases it (`held`)."""

    QUEUED = "queued"
    HELD = "held"


class SpoolRecipientState(StrEnum):
    """Where one recipient of a spooled message stands: only `pending` ones are sent again."""

    PENDING = "pending"
    SENT = "sent"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    DELETED = "deleted"
    SUPPRESSED = "suppressed"  # suppressed while it waited (a hard bounce or a complaint from another message)


@dataclass(slots=True)
class SpoolRecipient:
    address: str
    position: int
    state: SpoolRecipientState = SpoolRecipientState.PENDING
    attempts: int = 0
    last_reply: str | None = None


@dataclass(slots=True)
class SpoolEntry:
    """A message in the spool: what goes upstream (envelope sender, MAIL parameters, the body with the prepended
    header lines) and when. `lease_owner`/`lease_until`: the delivery worker that claimed it, until when."""

    relay_id: str
    created_at: float
    sender: str  # the envelope sender sent upstream (the VERP address, or the client's)
    mail_options: list[str]
    state: SpoolState
    next_at: float
    expires_at: float
    size: int = 0
    attempts: int = 0
    last_error: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    held_reason: str | None = None
    recipients: list[SpoolRecipient] = field(default_factory=list)
    body: bytes | None = None  # None in listings
    message: MessageRecord | None = None  # the bounce log's row, with its recipients (claims only)

    @property
    def pending(self) -> list[SpoolRecipient]:
        return [r for r in self.recipients if r.state == SpoolRecipientState.PENDING]


@dataclass(slots=True)
class SpoolCounts:
    """The spool at a glance (`stats`, /metrics): messages and pending recipients by state, due now, leased to a
    worker, and the oldest message's age."""

    queued: int = 0
    held: int = 0
    recipients: int = 0
    due: int = 0
    in_flight: int = 0
    oldest_at: float | None = None


def spool_status(recipients: list[RecipientRecord]) -> MessageStatus:
    """A spooled message's status from its recipients: `queued` while one is, then as `settle_status` reads a
    finished message (every recipient accepted: sent; some: partial; every one refused with a 5xx: rejected;
    otherwise failed: expired, deleted from the spool or deferred)."""
    if any(r.status == RecipientStatus.QUEUED for r in recipients):
        return MessageStatus.QUEUED
    if recipients and all(r.status == RecipientStatus.ACCEPTED for r in recipients):
        return MessageStatus.SENT
    if any(r.status == RecipientStatus.ACCEPTED for r in recipients):
        return MessageStatus.PARTIAL
    if recipients and all(_permanent(r) for r in recipients):
        return MessageStatus.REJECTED
    return MessageStatus.FAILED
