"""The parsed mail and what every format looks at, computed once and only when asked.

Detectors receive a `Mail` instead of raw bytes so that twenty of them looking at the
subject or the text body cost one decoding, not twenty.
"""
from __future__ import annotations

import re
from functools import cached_property

from proxy.dsn.text import ADDR_RE, TEXT_LIMIT, decode_bytes, decode_header, normalise_address

RAW_LIMIT = 512 * 1024  # a bounce says what it has to say early; the rest is the returned mail

_BLOCK_TAG_RE = re.compile(r"<(?:br|p|div|tr|li|h\d)\b[^>]{0,500}>", re.I)
_TAG_RE = re.compile(r"<[^>]{0,500}>")
_ENTITY = {"&nbsp;": " ", "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&#39;": "'"}
_ENTITY_RE = re.compile("|".join(_ENTITY))


def html_to_text(html: str) -> str:
    """Enough of an HTML body to read a bounce in it: tags become line breaks or nothing."""
    text = _TAG_RE.sub("", _BLOCK_TAG_RE.sub("\n", html))
    return _ENTITY_RE.sub(lambda m: _ENTITY[m.group(0)], text)


def part_text(part, limit: int = TEXT_LIMIT) -> str:
    """The decoded text of one leaf part, at most `limit` characters."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # broken transfer encoding: read what is there
        payload = part.get_payload()
    if payload is None:
        return ""
    if isinstance(payload, list):
        return ""
    charset = None
    try:
        charset = part.get_content_charset()
    except Exception:
        pass
    if isinstance(payload, bytes):
        payload = payload[: limit * 2]
    return decode_bytes(payload, charset)[:limit]


class Mail:
    """One inbound message, parsed by the stdlib, with lazily derived views."""

    def __init__(self, raw: bytes):
        import email
        from email import policy

        self.raw = raw[:RAW_LIMIT]
        self.msg = email.message_from_bytes(self.raw, policy=policy.compat32)

    def header(self, name: str, msg=None) -> str:
        """A header of the mail (or of `msg`), decoded; empty when absent."""
        value = (self.msg if msg is None else msg).get(name)
        return decode_header(value) if value is not None else ""

    @cached_property
    def subject(self) -> str:
        return self.header("Subject")

    @cached_property
    def from_header(self) -> str:
        return self.header("From")

    @cached_property
    def from_address(self) -> str:
        return (normalise_address(self.from_header) or "").lower()

    @cached_property
    def content_type(self) -> str:
        return self.msg.get_content_type()

    @cached_property
    def parts(self) -> list:
        """Every part (the root included), without descending into attached messages."""
        out = []
        stack = [self.msg]
        while stack and len(out) < 200:
            part = stack.pop(0)
            out.append(part)
            if part.get_content_maintype() == "multipart" or (
                part.is_multipart() and part.get_content_type() not in _MESSAGE_TYPES
            ):
                payload = part.get_payload()
                if isinstance(payload, list):
                    stack[0:0] = payload
        return out

    def parts_of_type(self, *types: str) -> list:
        return [p for p in self.parts if p.get_content_type() in types]

    @cached_property
    def text(self) -> str:
        """The human-readable body: text/plain parts outside attached messages, else HTML."""
        plain = [p for p in self.parts if p.get_content_type() == "text/plain" and not p.is_multipart()]
        if not plain and not self.msg.is_multipart() and self.msg.get_content_maintype() != "text":
            plain = [self.msg]  # an unlabelled body is still text
        chunks = []
        size = 0
        for part in plain:
            if part.get("Content-Disposition", "").lower().startswith("attachment") and chunks:
                continue
            chunk = part_text(part, TEXT_LIMIT - size)
            chunks.append(chunk)
            size += len(chunk)
            if size >= TEXT_LIMIT:
                break
        if not chunks or not any(c.strip() for c in chunks):
            for part in self.parts:
                if part.get_content_type() == "text/html" and not part.is_multipart():
                    chunks.append(html_to_text(part_text(part, TEXT_LIMIT * 2))[:TEXT_LIMIT])
                    break
        text = "\n".join(chunks)
        return text.replace("\r\n", "\n").replace("\r", "\n")

    @cached_property
    def text_lower(self) -> str:
        return self.text.lower()

    @cached_property
    def addresses_in_text(self) -> list[str]:
        return [m.group(0) for m in ADDR_RE.finditer(self.text)]

    @cached_property
    def original(self):
        from proxy.dsn.original import extract

        return extract(self)


_MESSAGE_TYPES = ("message/rfc822", "message/global", "message/delivery-status", "message/feedback-report")
