"""Which upstream refusals are about our account or sender, not about a recipient.

Such a refusal is a *send failure*: logged on the message, never counted against a recipient,
never suppressing anyone (DESIGN.md, Outbound).
"""
from __future__ import annotations

import re

from proxy.relay.upstream import Reply

# Reply codes that are always about the session or the account.
SEND_FAILURE_CODES = {421: "service closing", 530: "authentication required", 534: "authentication mechanism",
                      535: "authentication failed", 538: "encryption required"}

# (pattern over the reply text, what it means). Examples are SES's SMTP interface replies.
SEND_FAILURE_TEXTS: list[tuple[re.Pattern[str], str]] = [
    # 454 Throttling failure: Maximum sending rate exceeded.
    (re.compile(r"throttling failure|maximum sending rate", re.I), "throttled"),
    # 454 Throttling failure: Daily message quota exceeded.
    (re.compile(r"daily message quota|sending quota exceeded", re.I), "quota exceeded"),
    # 554 Message rejected: Email address is not verified. The following identities failed the check ...
    (re.compile(r"(?:email address|identit(?:y|ies)|domain) (?:is |are )?not verified|identities failed the check", re.I),
     "sender not verified"),
    # 554 Account is paused / Sending paused for this account
    (re.compile(r"account (?:is )?(?:paused|suspended|disabled)|sending (?:is )?(?:paused|suspended)", re.I),
     "account paused"),
    # 530 Must issue a STARTTLS command first / 454 Temporary authentication failure
    (re.compile(r"must issue a starttls|temporary authentication failure", re.I), "authentication"),
    # 553 5.6.7 Non-ASCII addresses not permitted / 451 4.5.4 … SMTPUTF8 (RFC 6531 6.x codes): a protocol
    # mismatch between servers, never the recipient address's fault.
    (re.compile(r"^[45]\.6\.(?:7|8|9|10)\b|\bSMTPUTF8\b", re.I), "SMTPUTF8 not available"),
]


def send_failure(reply: Reply) -> str | None:
    """What account-level problem a refusal signals, or None when it concerns the recipient."""
    if reply.ok:
        return None
    if reply.code in SEND_FAILURE_CODES:
        return SEND_FAILURE_CODES[reply.code]
    text = reply.text[:2000]
    for pattern, meaning in SEND_FAILURE_TEXTS:
        if pattern.search(text):
            return meaning
    return None
