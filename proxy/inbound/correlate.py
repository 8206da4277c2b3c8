"""How a late bounce finds its message: evidence strongest first (DESIGN.md, Correlation).

1. verp: the bounce came to a VERP address the relay issued (signature checked at RCPT).
2. upstream_id: the upstream's id, from the SES Message-ID local part or the MTA's queue id.
3. message_id: the client's Message-ID as quoted in the report (or In-Reply-To / References).
4. recipient_window: the latest message sent to the bounced recipient within the window.
5. none: kept and shown, acted on only by explicit policy.
"""
from __future__ import annotations

from dataclasses import dataclass

from proxy.model import Correlation, Report
from proxy.relay.verp import VerpSigner, VerpToken

SES_MESSAGE_ID_DOMAINS = ("amazonses.com",)


@dataclass(slots=True)
class Match:
    correlation: Correlation
    message: dict | None = None  # the messages row
    recipient: str | None = None  # the recipient the evidence names, when it names one


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
    whatever the number of recipients."""
    for token in tokens:
        message = await store.get_message(token.message_id)
        if message is not None:
            named = None
            if token.recipient_index is not None:
                rcpts = await store.message_recipients(message["id"])
                if 0 <= token.recipient_index < len(rcpts):
                    named = rcpts[token.recipient_index]["address"]
            return Match(Correlation.VERP, message, named)
    for upstream_id in upstream_id_candidates(report):
        message = await store.find_message_by_upstream_id(upstream_id)
        if message is not None:
            return Match(Correlation.UPSTREAM_ID, message)
    for message_id in message_id_candidates(report):
        message = await store.find_message_by_message_id(message_id)
        if message is not None:
            return Match(Correlation.MESSAGE_ID, message)
    return Match(Correlation.NONE)


async def correlate_recipient(store, report_match: Match, recipient: str | None, window_start: float) -> Match:
    """The report's own evidence when it has some, else the recipient's latest message in the window."""
    if report_match.correlation != Correlation.NONE or not recipient:
        return report_match
    message = await store.find_latest_message_to(recipient, window_start)
    if message is not None:
        return Match(Correlation.RECIPIENT_WINDOW, message)
    return report_match
