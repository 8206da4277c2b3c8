"""Sendmail in plain text: the "following addresses had ... errors" list and the transcript.

A sendmail transcript writes each failure as "550 <a@b>... reason" (and older versions
write nothing else), so those lines are read when the list is missing.
"""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR, Kind, address_paragraphs, between, own_addresses, report, says_delay

_SIGN_RE = re.compile(r"-{3,}\s*(?:Transcript of session follows|The following addresses had)|"
                      r"^-{2,}\s*The following addresses had delivery errors", re.I | re.M)
_LIST_RE = re.compile(r"-{2,}\s*The following addresses? ha(?:d|s|ve)\s+[\w ]{0,40}errors?\s*-{2,}|"
                      r"-{3,}\s*The following addresses had delivery problems\s*-{3,}", re.I)
_LIST_END_RE = re.compile(r"^\s*-{3,}|^\s*$", re.M)
_TRANSCRIPT_LINE_RE = re.compile(r"^[ \t]{0,8}([45]\d\d)[ -](?:[45]\.\d{1,3}\.\d{1,3}[ \t]{1,4})?<?(" + ADDR + r")>?\.\.\.[ \t]{0,4}(.{0,500})$",
                                 re.M)
_REPLY_RE = re.compile(r"^[ \t]{0,8}<<<[ \t]{0,4}([45]\d\d[ -].{0,500})$", re.M)
ADDR_ONLY_RE = re.compile(r"<?" + ADDR + r">?")
_TRANSCRIPT_RE = re.compile(r"-{3,}\s*Transcript of session follows\s*-{3,}", re.I)
_CODE_LINE_RE = re.compile(r"^[ \t]{0,8}([45]\d\d[ -].{0,500})$", re.M)
_REASON_RE = re.compile(r"^\s*\(reason:\s*(.{0,500}?)\)?\s*$", re.M | re.I)


def detect(mail):
    lower = mail.head_lower
    if "transcript of session follows" not in lower and "the following addresses had" not in lower:
        return None
    text = mail.text[:65536]
    if not _SIGN_RE.search(text[:16384]):
        return None
    own = own_addresses(mail)
    transcript = {}
    for code, address, reason in _TRANSCRIPT_LINE_RE.findall(text):
        if address.lower() not in own:
            transcript.setdefault(address.lower(), f"{code} {reason}".strip())
    listed = []
    section = between(text, _LIST_RE, None, limit=8192)
    if section:
        section = section.lstrip("\n")
        m = _LIST_END_RE.search(section)
        listed = address_paragraphs(section[: m.start()] if m else section)
    if listed:
        pairs = [(a, _reason(d) or transcript.get(a.lower()) or _last_reply(text)) for a, d in listed
                 if a.lower() not in own]
    else:
        pairs = [(a, d) for a, d in transcript.items()]
    kind = Kind.DELAY if says_delay(mail.lead_lower) else Kind.BOUNCE
    return report("sendmail", pairs, kind)


def _reason(diagnostic: str) -> str:
    m = _REASON_RE.match(diagnostic or "")
    if m:
        return m.group(1)
    diagnostic = (diagnostic or "").strip(" []()")
    return "" if ADDR_ONLY_RE.fullmatch(diagnostic) else diagnostic


def _last_reply(text: str) -> str:
    """The remote server's last complaint in the transcript ("<<< 550 ..." or a bare "550 ...")."""
    replies = _REPLY_RE.findall(text)
    if replies:
        return replies[-1]
    transcript = between(text, _TRANSCRIPT_RE, None, limit=4096) or ""
    m = _CODE_LINE_RE.search(transcript)
    return m.group(1) if m else ""
