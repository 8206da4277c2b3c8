"""Status code + SMTP code + diagnostic text -> (reason, bounce_type), with the evidence.

Pure. One classifier for synchronous replies and asynchronous DSNs alike.
(First version: a later pass deepens the phrase tables.)
"""
from __future__ import annotations

import re

from proxy.model import BounceType, Kind, StatusSource, Verdict

HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

_STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_TEXT_TABLE: list[tuple[str, re.Pattern[str]]] = [
    ("suppressed", re.compile(r"suppression list", re.I)),
    ("userunknown", re.compile(r"user unknown|no such user|does not exist|unknown user|mailbox unavailable", re.I)),
    ("mailboxfull", re.compile(r"mailbox (is )?full|over ?quota", re.I)),
    ("speeding", re.compile(r"throttling|sending rate", re.I)),
]
_STATUS_TABLE = {
    "1.1": "userunknown", "1.2": "hostunknown", "1.6": "hasmoved", "1.10": "notaccept",
    "2.2": "mailboxfull", "3.4": "emailtoolarge", "2.3": "emailtoolarge", "7.1": "rejected",
    "4.7": "expired", "6.0": "contenterror",
}


def classify(
    status: str | None = None,
    smtp_code: int | None = None,
    diagnostic: str | None = None,
    kind: Kind = Kind.BOUNCE,
    action: str | None = None,
) -> Verdict:
    status_source = StatusSource.DSN if status else None
    if not status and diagnostic:
        m = _STATUS_RE.search(diagnostic)
        if m:
            status, status_source = m.group(0), StatusSource.TEXT
    if not status and smtp_code:
        status, status_source = f"{str(smtp_code)[0]}.0.0", StatusSource.REPLY_CODE
    reason, evidence = "undefined", "nothing to go on"
    for name, pattern in _TEXT_TABLE:
        if diagnostic and pattern.search(diagnostic):
            reason, evidence = name, f"text: {pattern.pattern!r}"
            break
    else:
        if status:
            detail = status.split(".", 1)[1] if "." in status else ""
            if detail in _STATUS_TABLE:
                reason, evidence = _STATUS_TABLE[detail], f"status {status}"
    permanent = bool(status and status.startswith("5")) or bool(smtp_code and smtp_code >= 500)
    if reason in HARD_REASONS and permanent:
        bounce_type = BounceType.HARD
    elif reason == "undefined":
        bounce_type = BounceType.UNDETERMINED
    else:
        bounce_type = BounceType.SOFT
    return Verdict(reason, bounce_type, status, status_source, evidence)
