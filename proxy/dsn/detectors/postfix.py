"""Postfix in plain text ("This is the mail system at host ...": "<a@b>: host ... said: ...").

Postfix normally sends RFC 3464; this reads its human part when the report part is
missing, and its SMTP server's "errors from" transcripts sent to the postmaster.
"""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR, Kind, TextFormat, report, squash

detect = TextFormat(
    "postfix",
    sign=("this is the mail system at host", "this is the postfix program at host",
          "i'm sorry to have to inform you that the message returned"),
    start=re.compile(r"This is the [^\n]{1,80} at host|I'm sorry to have to inform you that the message returned", re.I),
    end=re.compile(r"^Reporting-MTA:|^-{2,}|^Content-Description:|^(?:Undelivered|Delayed) message", re.I | re.M),
)

_TRANSCRIPT_SIGN_RE = re.compile(r"Postfix SMTP server: errors from", re.I)
_RCPT_RE = re.compile(r"^\s*In:\s+RCPT TO:\s*<(" + ADDR + r")>", re.I | re.M)
_ERROR_RE = re.compile(r"^\s*Out:\s+([45]\d\d[ -].{0,500})$", re.M)


def detect_transcript(mail):
    """"Postfix SMTP server: errors from ...": the recipients of the session that failed."""
    if not _TRANSCRIPT_SIGN_RE.search(mail.subject):
        return None
    text = mail.text[:32768]
    errors = _ERROR_RE.findall(text)
    if not errors:
        return None
    diagnostic = squash(errors[-1])
    kind = Kind.DELAY if diagnostic.startswith("4") else Kind.BOUNCE
    return report("postfix-transcript", [(a, diagnostic) for a in _RCPT_RE.findall(text)], kind)
