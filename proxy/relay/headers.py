"""Read a message's header block and prepend lines to it, never re-serialising the message.

DKIM signatures cover the body and chosen headers byte for byte: the relay only ever adds lines
in front (Message-ID when missing, Return-Path for SES) and streams the rest through unchanged.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

_PARSER = BytesHeaderParser(policy=compat32)
MAX_HEADER_SCAN = 256 * 1024


@dataclass(slots=True)
class HeaderFacts:
    message_id: str | None
    header_from: str | None
    subject: str | None


def header_block(content: bytes) -> bytes:
    """The bytes up to the blank line that ends the headers (bounded)."""
    head = content[:MAX_HEADER_SCAN]
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = head.find(sep)
        if end >= 0:
            return head[: end + len(sep)]
    return head


def _decoded(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(make_header(decode_header(value))).strip()
    except Exception:  # noqa: BLE001 - a badly encoded header is kept as it came
        return value.strip()


def read_headers(content: bytes) -> HeaderFacts:
    msg = _PARSER.parsebytes(header_block(content), headersonly=True)
    msgid = msg.get("Message-ID")
    return HeaderFacts(
        message_id=msgid.strip().strip("<>").strip() if msgid else None,
        header_from=_decoded(msg.get("From")),
        subject=_decoded(msg.get("Subject")),
    )


def new_message_id(domain: str) -> str:
    """A globally unique Message-ID local@domain (without angle brackets)."""
    return f"{int(time.time() * 1000):x}.{secrets.token_hex(8)}@{domain}"


def prepend_headers(content: bytes, lines: list[tuple[str, str]]) -> bytes:
    """Prepend `Name: value` lines; the original bytes follow unchanged."""
    if not lines:
        return content
    return b"".join(f"{name}: {value}\r\n".encode("utf-8") for name, value in lines) + content
