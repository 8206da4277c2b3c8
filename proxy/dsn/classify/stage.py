"""Where in the SMTP dialogue a failure happened, and what that says about a reason.

A refusal before RCPT cannot be about the recipient; a "user unknown" after DATA, for an address RCPT
accepted, is a filter, not a missing mailbox (DESIGN.md; Sisimai decides the same).
"""
from __future__ import annotations

import re
from typing import Final

from proxy.dsn.classify.reasons import Row

# How the usual MTAs name the stage: (regex, stage, source). One table: the leftmost match wins.
STAGE_ROWS: Final[tuple[Row, ...]] = (
    (r"in reply to rcpt to command|after (?:pipelined )?rcpt to:|did not like our rcpt to|does not like recipient|rcpt to generated|sent: rcpt to:"
     r"|>>> rcpt to|\[rcpt_to\]",
     "RCPT", "Postfix '(in reply to RCPT TO command)', Exim 'after RCPT TO:', qmail, Sendmail '>>> RCPT To'"),
    (r"in reply to (?:end of )?data command|after (?:pipelined )?(?:end of )?data\b|did not like our (?:final )?data"
     r"|after (?:the )?end of (?:data|message)|after sending (?:the )?message|after data was sent"
     r"|failed after i sent the message|>>> data\b|\[(?:end_of_)?data\]",
     "DATA", "Postfix '(in reply to end of DATA command)', Exim 'after end of data', qmail 'Remote host said'"),
    (r"in reply to mail from command|after (?:pipelined )?mail from:|sender was rejected|>>> mail from|\[mail_from\]",
     "MAIL", "Postfix '(in reply to MAIL FROM command)', Exim 'after MAIL FROM:', qmail 'sender was rejected'"),
    (r"in reply to (?:ehlo|helo) command|after (?:ehlo|helo)\b|my name was rejected|\[(?:ehlo|helo)\]",
     "HELO", "Postfix '(in reply to EHLO command)', Exim 'after EHLO', qmail 'my name was rejected'"),
    (r"refused to talk to me|after initial connection|in reply to (?:the )?initial greeting",
     "CONN", "Postfix 'refused to talk to me', Exim 'after initial connection'"),
)

# An SMTP transcript (Sendmail, Courier, gateways): ">>> DATA" then "<<< 550 ...". The command is the
# last one sent before the first refusal, not the first one named (RCPT was accepted before DATA).
_SENT_RE: Final = re.compile(r">>> ?(rcpt to|mail from|data|ehlo|helo|bdat)\b")
_REFUSED_RE: Final = re.compile(r"<<< ?[45]\d\d\b")
_SENT_STAGE: Final = {"rcpt to": "RCPT", "mail from": "MAIL", "data": "DATA", "bdat": "DATA", "ehlo": "HELO", "helo": "HELO"}


def transcript_stage(text: str) -> tuple[str, str] | None:
    """(stage, what was read) from a transcript in normalised text: the command the first refusal
    answered. None without a transcript."""
    if ">>>" not in text:
        return None
    refused = _REFUSED_RE.search(text)
    end = refused.start() if refused else len(text)
    last = None
    for m in _SENT_RE.finditer(text, 0, end):
        last = m
    if last is None:
        return None
    return _SENT_STAGE[last.group(1)], last.group(0) + (" ... " + refused.group(0) if refused else "")


COMMAND_STAGE: Final = {"RCPT": "RCPT", "DATA": "DATA", "BDAT": "DATA", "MAIL": "MAIL", "HELO": "HELO",
                        "EHLO": "HELO", "CONN": "CONN", "CONNECT": "CONN"}

# Reasons about the recipient address, which a refusal at an earlier stage cannot be.
ADDRESS_REASONS: Final = frozenset({"userunknown", "filtered", "suspend", "hostunknown"})

# The userunknown phrases that filters reuse (KDDI, docomo, many gateways say "user unknown" after
# DATA for an address that RCPT accepted): only these yield to the stage and to a contradicting status.
GENERIC_USERUNKNOWN: Final = re.compile(r"user ?unknown|unknown user|mail ?box (?:is )?(?:unavailable|not available)|address rejected")


def subject(status: str | None) -> str | None:
    return status.split(".")[1] if status else None


def by_stage(reason: str, stage: str | None, status: str | None, why: list[str], generic: bool = True) -> str:
    """What the SMTP stage says about a reason that would concern the recipient address."""
    if reason not in ADDRESS_REASONS:
        return reason
    if stage == "MAIL":
        why.append(f"refused at MAIL FROM: about the sender, not the recipient: rejected, not {reason}")
        return "rejected"
    if stage in ("HELO", "CONN"):
        why.append(f"refused at {stage}, before any recipient was named: blocked, not {reason}")
        return "blocked"
    if reason == "userunknown" and generic and subject(status) != "1":
        if stage == "DATA":
            why.append("refused after DATA, the address having passed RCPT, with no X.1 status: filtered")
            return "filtered"
        if stage != "RCPT" and subject(status) in ("2", "3", "6", "7"):
            why.append(f"status {status} contradicts a missing mailbox: filtered")
            return "filtered"
    return reason
