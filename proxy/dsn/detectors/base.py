"""What the plain-text bounce formats share: a section of the body, paragraphs per address.

Most non-standard bounces say the same thing in the same shape: a sentence that opens
the list, then per failed address a line naming it and a few lines of reason, then a
marker before the returned message. A detector names its markers; these helpers do the
reading, so each format stays a few lines long.
"""
from __future__ import annotations

import re

from proxy.dsn.text import ADDR, ADDR_RE, any_code, find_status, normalise_address, squash
from proxy.model import Kind, RecipientReport, Report

# A line that names a recipient: the address first (maybe in <> or quotes), then nothing,
# a colon, an ellipsis or a reason.
_ADDRESS_LINE_RE = re.compile(
    r"([ \t]{0,16})(?:RCPT TO:|Recipient:|Address:|To:|\d{1,3}[.)][ \t]{1,4})?[ \t]{0,4}[<\"']{0,2}(" + ADDR + r")[>\"']{0,2}"
    r"[ \t]{0,8}(?:$|[:;,.(\[]|[ \t]{1,8}\S|\.\.\.)",
    re.I,
)
_REMOTE_HOST_RE = re.compile(r"\bhost[ \t]{1,4}([\w.-]{1,255}\.[A-Za-z]{2,63})[ \t]{0,4}\[", re.I)
# Where the returned message starts in a text bounce: nothing after it is about delivery.
ORIGINAL_MARKER_RE = re.compile(
    r"^[ \t>-]{0,12}(?:-{2,}[ \t]{0,4})?(?:"
    r"this is a copy of the message|original message|returned message|"
    r"below this line is a copy of the message|headers? of (?:the )?(?:original|returned) message|"
    r"undelivered message|message headers follow|unsent message below|the original message headers|"
    r"content-type: message/rfc822|content-type: text/rfc822-headers|your message reads"
    r")",
    re.M | re.I,
)
MAILER_DAEMON_RE = re.compile(r"mailer-daemon|postmaster|mail delivery|mail-daemon|mail administrator|mailmaster|"
                              r"mdaemon|bounce|mail system|system administrator|mailadmin|nobody@", re.I)


def between(text: str, start: re.Pattern, end: re.Pattern | None = ORIGINAL_MARKER_RE,
            limit: int = 16384) -> str | None:
    """The text after the line `start` matches, up to `end` (or `limit` characters)."""
    m = start.search(text)
    if not m:
        return None
    nl = text.find("\n", m.end())
    body_start = m.end() if nl < 0 else nl + 1
    chunk = text[body_start : body_start + limit]
    if end is not None:
        e = end.search(chunk)
        if e:
            chunk = chunk[: e.start()]
    return chunk


def before_original(text: str, limit: int = 16384) -> str:
    """The part of a text bounce that talks about delivery, not the returned mail."""
    chunk = text[:limit]
    m = ORIGINAL_MARKER_RE.search(chunk)
    return chunk[: m.start()] if m else chunk


def address_paragraphs(section: str, max_items: int = 200) -> list[tuple[str, str]]:
    """(address, reason) for every paragraph opened by a line that starts with an address.

    The reason is the rest of that line and the lines under it, up to a blank line or the
    next address line at the same depth. An address deeper in a reason (a quoted RCPT TO)
    opens nothing.
    """
    out: list[tuple[str, list[str]]] = []
    depth = None
    current: list[str] | None = None
    for line in section.split("\n")[:2000]:
        if not line.strip():
            current = None
            continue
        m = _ADDRESS_LINE_RE.match(line)
        if m and (depth is None or len(m.group(1).expandtabs(8)) <= depth):
            if depth is None:
                depth = len(m.group(1).expandtabs(8))
            rest = line[m.end(2) :].lstrip(">\"' \t:;,.")
            current = [rest] if rest.strip() else []
            out.append((m.group(2), current))
            if len(out) >= max_items:
                break
            continue
        if current is not None:
            current.append(line.strip())
    return [(a, squash(" ".join(lines))) for a, lines in out]


def recipient(address: str, diagnostic: str | None = None, action: str = "failed",
              status: str | None = None) -> RecipientReport | None:
    """A RecipientReport from what a text bounce says about one address.

    `status` is only for a status the format gives as a field; one inside the text is the
    classifier's to find, so that its source reads "text".
    """
    normal = normalise_address(address)
    if not normal:
        return None
    diagnostic = squash(diagnostic)[:2000] or None
    host = _REMOTE_HOST_RE.search(diagnostic) if diagnostic else None
    return RecipientReport(
        recipient=normal,
        action=action,
        status=status,
        smtp_code=any_code(diagnostic),
        diagnostic=diagnostic,
        remote_mta=host.group(1).lower() if host else None,
    )


def report(fmt: str, pairs, kind: Kind = Kind.BOUNCE, action: str | None = None) -> Report | None:
    """A Report from (address, diagnostic) pairs, each address once; None if none is valid."""
    action = action or ("delayed" if kind is Kind.DELAY else "failed")
    seen = set()
    recipients = []
    for address, diagnostic in pairs:
        rr = recipient(address, diagnostic, action)
        if rr and rr.recipient.lower() not in seen:
            seen.add(rr.recipient.lower())
            recipients.append(rr)
    if not recipients:
        return None
    return Report(kind=kind, format=fmt, recipients=recipients)


def failed_recipients_header(mail) -> list[str]:
    """Exim's and others' X-Failed-Recipients: the addresses, when the text hides them."""
    value = mail.header("X-Failed-Recipients")
    return [m.group(0) for m in ADDR_RE.finditer(value)] if value else []


def is_from_daemon(mail) -> bool:
    return bool(MAILER_DAEMON_RE.search(mail.from_header))


__all__ = [
    "ADDR", "ADDR_RE", "Kind", "ORIGINAL_MARKER_RE", "address_paragraphs", "before_original", "between",
    "failed_recipients_header", "find_status", "is_from_daemon", "recipient", "report", "squash",
]
