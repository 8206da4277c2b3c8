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
    # Each recipient: the reply its own RCPT got when that was a refusal, else the session's last error,
    # with the command each answered (the stage decides what a "user unknown" means).
    pairs, commands = [], {}
    last = _last_command(text, text.rfind(errors[-1]))
    for m in _RCPT_RE.finditer(text):
        reply = _NEXT_OUT_RE.search(text, m.end())
        own = reply.group(1) if reply and reply.group(1)[:1] in "45" else None
        pairs.append((m.group(1), squash(own) if own else diagnostic))
        commands[m.group(1).lower()] = "RCPT" if own else last
    found = report("postfix-transcript", pairs, kind)
    if found is not None:
        for rr in found.recipients:
            rr.command = commands.get(rr.recipient.lower())
    return found


_NEXT_OUT_RE = re.compile(r"^\s*Out:\s+(\d{3}[ -].{0,500})$", re.M)
_IN_RE = re.compile(r"^\s*In:\s+(RCPT|MAIL|DATA|EHLO|HELO|BDAT|\.)", re.I | re.M)


def _last_command(text: str, before: int) -> str | None:
    """The SMTP command the client sent last before `before` ("." ends DATA)."""
    last = None
    for m in _IN_RE.finditer(text, 0, max(before, 0)):
        last = m.group(1).upper()
    return "DATA" if last == "." else last
