"""How a late bounce finds its message: evidence strongest first (DESIGN.md, Correlation).

1. verp: the bounce came to a VERP address the relay issued (signature checked at RCPT).
2. upstream_id: the upstream's id, from the SES Message-ID local part or the MTA's queue id.
3. message_id: the client's Message-ID as quoted in the report (or In-Reply-To / References).
4. recipient_window: the latest message sent to the bounced recipient within the window.
5. none: kept and shown, acted on only by explicit policy.

Evidence identifies a message; it vouches only for that message's own recipients. Anyone who
received the message holds its return path and can read its upstream id, so an address a report
names that the identified message was never accepted for (or not the one its VERP token names)
is `foreign_recipient`: recorded, linked to the abused message, and never acted on.
"""
from __future__ import annotations

from dataclasses import dataclass

from proxy.model import Correlation, MessageRecord, RecipientRecord, RecipientStatus, Report
from proxy.relay.verp import VerpSigner, VerpToken
from proxy.suppression import normalize_address

SES_MESSAGE_ID_DOMAINS = ("amazonses.com",)


@dataclass(slots=True)
class Match:
    correlation: Correlation
    message: MessageRecord | None = None  # the message the evidence identified
    recipient: str | None = None  # the recipient the evidence names, when it names one
    own: frozenset[str] = frozenset()  # normalised addresses the evidence vouches for

    @classmethod
    def identified(cls, correlation: Correlation, message: MessageRecord) -> "Match":
        """Evidence that identified `message` (an upstream id, a Message-ID): it vouches for the message's
        own recipients, those the upstream accepted it for, and no one else. SES's notifications too."""
        return cls(correlation, message, None, _accepted(message.recipients))

    def vouches_for(self, address: str | None) -> bool:
        return address is not None and normalize_address(address) in self.own


def verp_tokens(rcpt_tos: list[str], signer: VerpSigner | None, domains: tuple[str, ...]) -> list[VerpToken]:
    if signer is None:
        return []
    return [t for t in (signer.verify(r, domains) for r in rcpt_tos) if t is not None]


def _bare(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().strip("<>").strip()
    return value or None


def upstream_id_candidates(report: Report) -> list[str]:
    """Ids the upstream may have given the original: SES's id, then the reporting MTA's queue id."""
    ids = []
    original = report.original
    if original.ses_message_id:
        ids.append(original.ses_message_id)
    msgid = _bare(original.message_id)
    if msgid and "@" in msgid:
        local, _, domain = msgid.rpartition("@")
        if domain.lower().endswith(SES_MESSAGE_ID_DOMAINS):
            ids.append(local)
    if report.queue_id:
        ids.append(report.queue_id)
    return list(dict.fromkeys(ids))


def message_id_candidates(report: Report) -> list[str]:
    original = report.original
    ids = [_bare(original.message_id), _bare(original.in_reply_to), *(_bare(r) for r in original.references)]
    return list(dict.fromkeys(i for i in ids if i))


async def correlate_report(store, report: Report, tokens: list[VerpToken]) -> Match:
    """The evidence the whole report carries (VERP, upstream id, Message-ID): looked up once,
    whatever the number of recipients, with the addresses that evidence vouches for."""
    for token in tokens:
        message = await store.get_message(token.relay_id)
        if message is not None:
            rcpts = message.recipients
            own = _accepted(rcpts)
            if token.recipient_index is None:
                return Match(Correlation.VERP, message, None, own)
            # A token that names a recipient vouches for that one alone.
            named = None
            if 0 <= token.recipient_index < len(rcpts):
                named = rcpts[token.recipient_index].address
            return Match(Correlation.VERP, message, named, own & {normalize_address(named)} if named else frozenset())
    for upstream_id in upstream_id_candidates(report):
        message = await store.find_message_by_upstream_id(upstream_id)
        if message is not None:
            return Match.identified(Correlation.UPSTREAM_ID, message)
    for message_id in message_id_candidates(report):
        message = await store.find_message_by_message_id(message_id)
        if message is not None:
            return Match.identified(Correlation.MESSAGE_ID, message)
    return Match(Correlation.NONE)


def _accepted(recipients: list[RecipientRecord]) -> frozenset[str]:
    """The identified message's own recipients: those the upstream accepted it for."""
    return frozenset(normalize_address(r.address) for r in recipients if r.status == RecipientStatus.ACCEPTED)


async def correlate_recipient(store, report_match: Match, addresses: list[str | None], window_start: float
                              ) -> tuple[Match, str | None]:
    """The match for one recipient of a report, and which of its addresses it was made on.

    `addresses` are the forms the report gives of one recipient (Original-Recipient, then
    Final-Recipient). With evidence that identified a message, the recipient must be one of that
    message's own; otherwise it is foreign. Without such evidence, the recipient's latest message
    in the window.
    """
    named = [a for a in addresses if a]
    if report_match.message is not None:
        for address in named:
            if report_match.vouches_for(address):
                return report_match, address
        return Match(Correlation.FOREIGN_RECIPIENT, report_match.message), (named[0] if named else None)
    if not named:
        return report_match, None
    message = await store.find_latest_message_to(named[0], window_start)
    if message is not None:
        return Match(Correlation.RECIPIENT_WINDOW, message), named[0]
    return report_match, named[0]
