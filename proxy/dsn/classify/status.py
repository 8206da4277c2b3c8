"""Enhanced status codes and SMTP reply codes: what they mean, and how they are read from a text.

RFC 3463 (with RFC 3886, 4468, 4954, 5248, 6531, 6710, 7293, 7372, 7505 and the IANA registry of
enhanced status codes) for the enhanced codes; RFC 5321, 7504 and 4954 for the reply codes.
"""
from __future__ import annotations

import re
from typing import Final

# Keys: "subject.detail" for either class, "class.subject.detail" where the class changes it.
STATUS_REASON: Final[dict[str, tuple[str, str]]] = {
    "1.0": ("userunknown", "other address status"),
    "1.1": ("userunknown", "bad destination mailbox address"),
    "1.2": ("hostunknown", "bad destination system address"),
    "1.3": ("userunknown", "bad destination mailbox address syntax"),
    "1.4": ("filtered", "destination mailbox address ambiguous"),
    "1.6": ("hasmoved", "destination mailbox has moved, no forwarding address"),
    "1.7": ("rejected", "bad sender's mailbox address syntax"),
    "1.8": ("rejected", "bad sender's system address"),
    "1.9": ("systemerror", "message relayed to non-compliant mailer"),
    "1.10": ("notaccept", "recipient address has null MX"),
    "2.0": ("filtered", "other or undefined mailbox status"),
    "2.1": ("suspend", "mailbox disabled, not accepting messages"),
    "2.2": ("mailboxfull", "mailbox full"),
    "2.3": ("emailtoolarge", "message length exceeds administrative limit"),
    "2.4": ("systemerror", "mailing list expansion problem"),
    "3.0": ("systemerror", "other or undefined mail system status"),
    "3.1": ("systemfull", "mail system full"),
    "3.2": ("notaccept", "system not accepting network messages"),
    "3.3": ("systemerror", "system not capable of selected features"),
    "3.4": ("emailtoolarge", "message too big for system"),
    "3.5": ("systemerror", "system incorrectly configured"),
    "4.0": ("networkerror", "other or undefined network or routing status"),
    "4.4.1": ("expired", "no answer from host (retried until given up)"),
    "5.4.1": ("networkerror", "no answer from host"),
    "4.2": ("networkerror", "bad connection"),
    "4.3": ("networkerror", "directory server failure"),
    "4.4.4": ("networkerror", "unable to route (for now)"),
    "5.4.4": ("hostunknown", "unable to route"),
    "4.5": ("systemfull", "mail system congestion"),
    "4.6": ("networkerror", "routing loop detected"),
    "4.7": ("expired", "delivery time expired"),
    "4.8": ("networkerror", "retry on IPv4"),
    "5.1": ("syntaxerror", "invalid command"),
    "5.2": ("syntaxerror", "syntax error"),
    "5.3": ("toomanyconn", "too many recipients"),
    "5.4": ("syntaxerror", "invalid command arguments"),
    "5.5": ("systemerror", "wrong protocol version"),
    "5.6": ("syntaxerror", "authentication exchange line is too long"),
    "6.0": ("contenterror", "other or undefined media error"),
    "6.1": ("contenterror", "media not supported"),
    "6.2": ("contenterror", "conversion required and prohibited"),
    "6.3": ("contenterror", "conversion required but not supported"),
    "6.4": ("contenterror", "conversion with loss performed"),
    "6.5": ("contenterror", "conversion failed"),
    "6.6": ("contenterror", "message content not available"),
    "6.7": ("contenterror", "non-ASCII addresses not permitted"),
    "6.8": ("contenterror", "UTF-8 string reply required"),
    "6.9": ("contenterror", "UTF-8 header message cannot be transferred"),
    "6.10": ("contenterror", "UTF-8 string reply required (deprecated)"),
    "5.7.0": ("securityerror", "other or undefined security status"),
    "4.7.1": ("blocked", "delivery not authorized, message refused"),
    "5.7.1": ("securityerror", "delivery not authorized, message refused"),
    "7.2": ("securityerror", "mailing list expansion prohibited"),
    "7.3": ("securityerror", "security conversion required but not possible"),
    "7.4": ("securityerror", "security features not supported"),
    "7.5": ("securityerror", "cryptographic failure"),
    "7.6": ("securityerror", "cryptographic algorithm not supported"),
    "7.7": ("securityerror", "message integrity failure"),
    "7.8": ("securityerror", "authentication credentials invalid"),
    "7.9": ("securityerror", "authentication mechanism is too weak"),
    "7.10": ("securityerror", "encryption needed"),
    "7.11": ("securityerror", "encryption required for requested authentication mechanism"),
    "7.12": ("securityerror", "a password transition is needed"),
    "7.13": ("suspend", "user account disabled"),
    "7.14": ("securityerror", "trust relationship required"),
    "7.15": ("securityerror", "priority level is too low"),
    "7.16": ("emailtoolarge", "message is too big for the specified priority"),
    "7.17": ("hasmoved", "mailbox owner has changed"),
    "7.18": ("hasmoved", "domain owner has changed"),
    "7.19": ("securityerror", "RRVS test cannot be completed"),
    "7.20": ("authfailure", "no passing DKIM signature found"),
    "7.21": ("authfailure", "no acceptable DKIM signature found"),
    "7.22": ("authfailure", "no valid author-matched DKIM signature found"),
    "7.23": ("authfailure", "SPF validation failed"),
    "7.24": ("authfailure", "SPF validation error"),
    "7.25": ("requireptr", "reverse DNS validation failed"),
    "7.26": ("authfailure", "multiple authentication checks failed"),
    # RFC 7505 X.7.27 "sender address has null MX": about the sender, so never a hard bounce
    "7.27": ("rejected", "sender address has null MX"),
}
# A detail code this table does not know still has a subject (RFC 3463 section 2).
STATUS_SUBJECT: Final[dict[str, tuple[str, str]]] = {
    "3": ("systemerror", "mail system status"),
    "4": ("networkerror", "network and routing status"),
    "6": ("contenterror", "message content or media status"),
    "7": ("securityerror", "security or policy status"),
}

# The few reply codes that carry one meaning of their own (RFC 5321, RFC 7504, RFC 4954).
REPLY_CODES: Final[dict[int, tuple[str, str]]] = {
    500: ("syntaxerror", "syntax error, command unrecognized"),
    501: ("syntaxerror", "syntax error in parameters or arguments"),
    502: ("syntaxerror", "command not implemented"),
    503: ("syntaxerror", "bad sequence of commands"),
    504: ("syntaxerror", "command parameter not implemented"),
    521: ("notaccept", "host does not accept mail (RFC 7504)"),
    556: ("notaccept", "domain does not accept mail (RFC 7504)"),
    530: ("securityerror", "authentication required"),
    534: ("securityerror", "authentication mechanism is too weak"),
    535: ("securityerror", "authentication credentials invalid"),
    538: ("securityerror", "encryption required for requested authentication mechanism"),
}

# (the look-behind follows the first digit so that the engine can skip ahead to a 2, 4 or 5)
STATUS_RE: Final = re.compile(r"([245])(?<![\w.][245])\.([0-7])\.(\d{1,3})(?![\d.])")
REPLY_RE: Final = re.compile(r"([245])(?<![\w.:-][245])([0-5]\d)(?=[ \-:]|$)")
LEADING_REPLY_RE: Final = re.compile(r"^\s*(?:[a-z][\w.-]{0,20};\s*)?[#(\[]?([245][0-5]\d)(?:[ \-:)\]]|$)", re.I)
MULTILINE_RE: Final = re.compile(r"([245])(?<![\w.][245])([0-5]\d)-#?[245]\.\d{1,3}\.\d{1,3} ")


def parse_status(value: str | None) -> str | None:
    """A valid enhanced status code in `value` (e.g. '5.0.0 (undefined status)' -> '5.0.0'), else None."""
    if not value:
        return None
    m = STATUS_RE.search(value.strip())
    return m.group(0) if m else None


def find_status(text: str) -> str | None:
    """The most specific enhanced status code in a diagnostic text: the first that is not X.0.0. Never
    a success code (2.x.x): in a failure's text that is an earlier command accepted (a transcript)."""
    generic = None
    for m in STATUS_RE.finditer(text):
        if m.group(1) == "2":
            continue
        if m.group(2) != "0" or m.group(3) != "0":
            return m.group(0)
        generic = generic or m.group(0)
    return generic


def find_reply_code(text: str) -> int | None:
    """The SMTP reply code at the start of a reply ('550 ...', 'smtp; 550-5.1.1 ...'), else the first one inside."""
    if not text:
        return None
    m = LEADING_REPLY_RE.match(text)
    if m:
        return int(m.group(1))
    for m in REPLY_RE.finditer(text):
        if m.group(1) != "2":  # a success code is an earlier command accepted (a transcript)
            return int(m.group(1) + m.group(2))
    return None


def status_reason(status: str) -> tuple[str, str] | None:
    """(reason, meaning) of an enhanced code: its own row, else its subject's (RFC 3463 section 2)."""
    klass, subject, detail = status.split(".")
    hit = STATUS_REASON.get(f"{klass}.{subject}.{detail}") or STATUS_REASON.get(f"{subject}.{detail}")
    if hit:
        return hit
    if detail != "0" or subject in ("3", "4", "6"):
        sub = STATUS_SUBJECT.get(subject)
        if sub and not (subject == "7" and klass == "4"):
            return sub[0], f"{sub[1]}, detail {detail} unlisted"
    return None


def meaning(status: str, sep: str = ": ") -> str:
    """' : RFC 3463 X.1.1 bad destination mailbox address' for the evidence, or '' when unlisted."""
    if status.endswith(".0.0"):
        return f"{sep}class {status[0]} only" if sep == ": " and status[0] in "45" else ""
    found = status_reason(status)
    return f"{sep}RFC 3463 X.{status[2:]} {found[1]}" if found else ""


def is_vague(status: str) -> bool:
    """X.0.0 (other) and X.1.0 (other address status): a gateway's wrapper around the real reply."""
    return status[1:] in (".0.0", ".1.0")


