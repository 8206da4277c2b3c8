"""The headers of the message a report answers: what correlation needs (Message-ID first).

Looked for where reports put them, best first: an attached `message/rfc822`, a
`text/rfc822-headers` part, then a copy quoted in the text body, found by the header block
around its `Message-ID:` line or by the marker line that introduces it.
"""
from __future__ import annotations

import re

from proxy.dsn.text import LineMarkers, decode_header, strip_angle
from proxy.model import OriginalMessage

_ATTACHED = ("message/rfc822", "message/global", "message/partial")
_HEADER_PARTS = ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header", "text/global-headers",
                 "message/global-headers")
_FIELD_LINE_RE = re.compile(r"[ \t>]{0,12}([A-Za-z][\w-]{0,60})[ \t]{0,4}:(.{0,2000})")
# Lines that announce a quoted copy of the returned message in free-form bounces.
_MARKERS = LineMarkers(
    "original message", "returned message", "this is a copy of the message", "below this line is a copy of the message",
    "header of the original message", "headers of the original message", "header of original message",
    "headers of the returned message", "the original message was received", "message headers follow",
    "unsent message below", "unsent message follows", "included is a copy of the message header", "your message reads",
    "original mail header", "the text you sent follows", "undelivered message headers", "header of the source mail",
)
_IDS_RE = re.compile(r"<[^<>\s]{1,250}>")
_SES_DOMAIN = "amazonses.com"


def extract(mail) -> OriginalMessage:
    """Never raises: a report without the original's headers gets an empty OriginalMessage."""
    partial = None
    for found in _candidates(mail):
        if found.message_id:
            return found
        if partial is None and (found.to or found.subject):
            partial = found  # no Message-ID anywhere: the best partial copy
    return partial or OriginalMessage()


def _candidates(mail):
    """Every place a copy of the original's headers may be, best first, parsed lazily."""
    types = mail.types
    for ctype, part in mail.typed if not (types.isdisjoint(_ATTACHED) and types.isdisjoint(_HEADER_PARTS)) else ():
        if ctype in _ATTACHED and part is not mail.msg:
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                yield from_headers(mail, inner[0])
                body = inner[0].get_payload()
                if not inner[0].keys() and isinstance(body, str):  # no headers parsed: they came out as body
                    yield from_free_text(mail, body[:65536])
            elif isinstance(inner, str):
                yield from_text_block(mail, _payload_text(part))
        elif ctype in _HEADER_PARTS:
            yield from_text_block(mail, _payload_text(part))
    for ctype, part in mail.typed[1:]:  # a part whose own MIME headers are the original's (boundary then headers)
        if ctype not in _ATTACHED and part.get("Message-ID"):
            yield from_headers(mail, part)
    yield from_free_text(mail, mail.text, mail.text_lower)
    for ctype, part in mail.typed[1:]:  # headers sent as a text attachment ("mailheaders.txt")
        if ctype == "text/plain" and not part.is_multipart():
            disposition = str(part.get("Content-Disposition", "")).lower()
            if disposition.startswith("attachment"):
                yield from_free_text(mail, _payload_text(part))
    if any(part.defects for part in mail.parts):
        yield from_free_text(mail, _raw_body(mail))


def _raw_body(mail) -> str:
    """The undecoded body: where headers hide when the MIME structure is broken (a boundary
    that does not match its declaration hides every part after it)."""
    raw = mail.raw  # line endings already "\n"
    end = raw.find(b"\n\n")
    return raw[end + 2 : end + 2 + 65536].decode("utf-8", "replace") if end >= 0 else ""


def _payload_text(part) -> str:
    from proxy.dsn.mail import part_text

    return "" if isinstance(part.get_payload(), list) else part_text(part)


def from_headers(mail, msg) -> OriginalMessage:
    """The fields correlation needs, from a parsed message's header block."""
    return from_fields(msg.raw_items())


_WANTED = frozenset(("message-id", "to", "from", "subject", "date", "return-path", "in-reply-to", "references"))


def from_fields(pairs) -> OriginalMessage:
    """(name, value) pairs -> OriginalMessage; the first of each field counts."""
    fields: dict[str, str] = {}
    for name, value in pairs:
        if len(name) > 12:  # no wanted field is longer: skip the X-headers without lower-casing them
            continue
        name = name.strip().lower()
        if name in _WANTED and name not in fields:
            fields[name] = value if isinstance(value, str) else str(value)
    if not fields:
        return OriginalMessage()
    get = {name: decode_header(value) for name, value in fields.items()}.get  # decoded, None when absent
    message_id = strip_angle(get("message-id"))
    references = get("references")
    original = OriginalMessage(
        message_id=message_id,
        to=get("to") or None,
        sender=get("from") or None,
        subject=get("subject") or None,
        date=get("date") or None,
        return_path=strip_angle(get("return-path")) or None,
        in_reply_to=strip_angle(get("in-reply-to")),
        references=[i[1:-1] for i in _IDS_RE.findall(references)][:50] if references else [],
    )
    if message_id and message_id.lower().endswith(_SES_DOMAIN):
        original.ses_message_id = message_id.partition("@")[0]
    return original


def from_text_block(mail, text: str) -> OriginalMessage:
    """Headers quoted as text (a text/rfc822-headers part)."""
    return from_fields(_header_block(text, 0))


def from_free_text(mail, text: str, lower: str | None = None) -> OriginalMessage:
    """A copy quoted somewhere in the body: find its Message-ID line, else its marker line."""
    if not text:
        return OriginalMessage()
    if lower is None or len(lower) != len(text):
        lower = text.lower()
    pos = _msgid_line(text, lower)
    if pos >= 0:
        found = from_fields(_header_block(text, _block_start(text, pos)))
        if found.message_id:
            return found
    m = _MARKERS.search(text, lower)
    if m:
        end = text.find("\n", m.start())
        if end >= 0:
            found = from_fields(_header_block(text, end + 1))
            if found.message_id or found.to or found.subject:
                return found
    return OriginalMessage()


def _msgid_line(text: str, lower: str) -> int:
    """Where the first line that is a Message-ID field starts (quoted or indented), or -1."""
    pos = lower.find("message-id")
    while pos >= 0:
        line_start = lower.rfind("\n", 0, pos) + 1
        if not lower[line_start:pos].strip(" \t>|") and lower[pos + 10 : pos + 16].lstrip(" \t").startswith(":"):
            return line_start
        pos = lower.find("message-id", pos + 10)
    return -1


def _block_start(text: str, pos: int) -> int:
    """Walk back from a header line to the first line of its block."""
    start = pos
    for _ in range(100):
        if start == 0:
            break
        prev = text.rfind("\n", 0, start - 1) + 1
        line = text[prev : start - 1]
        if not line.strip() or not (line[:1] in " \t" or (":" in line and _FIELD_LINE_RE.fullmatch(line))):
            break
        start = prev
    return start


def _header_block(text: str, pos: int) -> list[list[str]]:
    """The fields from `pos` on: leading blanks skipped, quoting and indentation removed,
    continuation lines joined, up to a blank line or a line that is no field."""
    fields: list[list[str]] = []
    while True:  # leading blank lines
        nl = text.find("\n", pos, pos + 1024)
        if nl < 0 or text[pos:nl].strip():
            break
        pos = nl + 1
    end = text.find("\n\n", pos, pos + 32768)
    for line in text[pos : end if end >= 0 else pos + 32768].splitlines()[:300]:
        if not line.strip():
            if fields:
                break
            continue
        m = _FIELD_LINE_RE.fullmatch(line) if ":" in line else None  # (a field has its colon)
        if m:
            fields.append([m.group(1), m.group(2)])
        elif fields and line[:1] in " \t>":
            fields[-1][1] += " " + line.lstrip(" \t>")
        elif fields:
            break
    return fields
