"""The headers of the message a report answers: what correlation needs (Message-ID first).

Looked for where reports put them, best first: an attached `message/rfc822`, a
`text/rfc822-headers` part, then a copy quoted in the text body, found by the header block
around its `Message-ID:` line or by the marker line that introduces it.
"""
from __future__ import annotations

import re

from proxy.dsn.text import strip_angle
from proxy.model import OriginalMessage

_ATTACHED = ("message/rfc822", "message/global", "message/partial")
_HEADER_PARTS = ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header", "text/global-headers",
                 "message/global-headers")
_FIELD_LINE_RE = re.compile(r"[ \t>]{0,12}([A-Za-z][\w-]{0,60})[ \t]{0,4}:(.{0,2000})")
_MSGID_LINE_RE = re.compile(r"^[ \t>|]{0,12}Message-I[dD][ \t]{0,4}:", re.M | re.I)
# Lines that announce a quoted copy of the returned message in free-form bounces.
_MARKER_RE = re.compile(
    r"^[ \t>-]{0,12}(?:"
    r"original message|returned message|this is a copy of the message|"
    r"below this line is a copy of the message|headers? of (?:the )?(?:original|returned) message|"
    r"original message headers?|the original message was received|message headers follow|"
    r"unsent message below|included is a copy of the message header|your message reads|"
    r"the header of the original message|original mail header|the text you sent follows|"
    r"content-type: message/rfc822|content-type: text/rfc822-headers|undelivered message headers"
    r")",
    re.M | re.I,
)
_IDS_RE = re.compile(r"<[^<>\s]{1,250}>")
_SES_DOMAIN = "amazonses.com"


def extract(mail) -> OriginalMessage:
    """Never raises: a report without the original's headers gets an empty OriginalMessage."""
    for part in mail.parts:
        ctype = part.get_content_type()
        if ctype in _ATTACHED and part is not mail.msg:
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                found = from_headers(mail, inner[0])
                if found.message_id or found.to or found.subject:
                    return found
            text = _payload_text(part)
            if text:
                found = from_text_block(mail, text)
                if found.message_id or found.to:
                    return found
        elif ctype in _HEADER_PARTS:
            found = from_text_block(mail, _payload_text(part))
            if found.message_id or found.to or found.subject:
                return found
    return from_free_text(mail, mail.text)


def _payload_text(part) -> str:
    from proxy.dsn.mail import part_text

    payload = part.get_payload()
    if isinstance(payload, list):
        if not payload:
            return ""
        return payload[0].as_string() if hasattr(payload[0], "as_string") else ""
    return part_text(part)


def from_headers(mail, msg) -> OriginalMessage:
    """The fields correlation needs, from a parsed header block."""
    get = lambda name: mail.header(name, msg)  # noqa: E731 - one-line accessor
    message_id = strip_angle(get("Message-ID") or get("Message-Id"))
    original = OriginalMessage(
        message_id=message_id,
        to=get("To") or None,
        sender=get("From") or None,
        subject=get("Subject") or None,
        date=get("Date") or None,
        return_path=strip_angle(get("Return-Path")) or None,
        in_reply_to=strip_angle(get("In-Reply-To")),
        references=[i[1:-1] for i in _IDS_RE.findall(get("References"))][:50],
    )
    if message_id and message_id.lower().endswith(_SES_DOMAIN):
        original.ses_message_id = message_id.partition("@")[0]
    return original


def from_text_block(mail, text: str) -> OriginalMessage:
    """Headers quoted as text: normalised to a clean block, then read by the stdlib parser."""
    block = _header_block(text, 0)
    return _parse_block(mail, block)


def from_free_text(mail, text: str) -> OriginalMessage:
    """A copy quoted somewhere in the body: find its Message-ID line, else its marker line."""
    if not text:
        return OriginalMessage()
    m = _MSGID_LINE_RE.search(text)
    if m:
        start = _block_start(text, m.start())
        found = _parse_block(mail, _header_block(text, start))
        if found.message_id:
            return found
    m = _MARKER_RE.search(text)
    if m:
        end = text.find("\n", m.end())
        if end >= 0:
            found = _parse_block(mail, _header_block(text, end + 1))
            if found.message_id or found.to or found.subject:
                return found
    return OriginalMessage()


def _block_start(text: str, pos: int) -> int:
    """Walk back from a header line to the first line of its block."""
    start = pos
    for _ in range(100):
        if start == 0:
            break
        prev = text.rfind("\n", 0, start - 1) + 1
        line = text[prev : start - 1]
        if not line.strip() or not (_FIELD_LINE_RE.fullmatch(line) or line[:1] in " \t"):
            break
        start = prev
    return start


def _header_block(text: str, pos: int) -> str:
    """The header lines from `pos` on: leading blanks skipped, quoting removed, to a blank line."""
    lines = []
    for line in text[pos : pos + 32768].splitlines()[:300]:
        if not line.strip():
            if lines:
                break
            continue
        m = _FIELD_LINE_RE.fullmatch(line)
        if m:
            lines.append(f"{m.group(1)}:{m.group(2)}")
        elif lines and line[:1] in " \t>":
            lines.append(" " + line.lstrip(" \t>"))
        elif lines:
            break
    return "\n".join(lines) + "\n\n"


def _parse_block(mail, block: str) -> OriginalMessage:
    if not block.strip():
        return OriginalMessage()
    from email import policy
    from email.parser import HeaderParser

    msg = HeaderParser(policy=policy.compat32).parsestr(block)
    return from_headers(mail, msg)


def first_recipient(original: OriginalMessage) -> str | None:
    """The original's To, for reports that only name their recipient there."""
    from proxy.dsn.text import normalise_address

    return normalise_address(original.to) if original.to else None

