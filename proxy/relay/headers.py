"""Read a message's header block and prepend lines to it, never re-serialising the message.

DKIM signatures cover the body and chosen headers byte for byte: the relay only ever adds lines
in front (Message-ID when missing, Return-Path for SES) and streams the rest through unchanged.
"""
from __future__ import annotations

import re
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


# The leading lines the stdlib parser takes as headers (its headerRE: a field name and a colon, a
# continuation, or an mbox "From " line); the first other line ends them, as it ends them there.
_HEADER_LINES = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\n]*\n)*")
_BARE_CR = re.compile(rb"\r(?!\n)")
# The fields read_headers wants, each with its continuation lines, within those lines.
_WANTED = re.compile(rb"^(?:message-id|from|subject):[^\n]*\n(?:[\t ][^\n]*\n)*", re.IGNORECASE | re.MULTILINE)


def read_headers(content: bytes) -> HeaderFacts:
    """Message-ID, From and Subject as the stdlib parser (compat32) reads them from the header block.

    Only those fields' lines are looked at. Plain ASCII without encoded words (nearly every message)
    is read as compat32 reads it, a field's value being the text after its colon, leading blanks
    dropped, its folded lines kept, the first field of a name winning; anything else goes to the
    parser. tests/test_headers.py holds both readings to the same answers."""
    block = header_block(content)
    if _BARE_CR.search(block):  # the parser splits lines at a bare CR too: let it read everything
        return _facts(_PARSER.parsebytes(block, headersonly=True))
    if not block.endswith(b"\n"):
        block += b"\n"
    wanted = _WANTED.findall(_HEADER_LINES.match(block).group())
    selected = b"".join(wanted)
    if not selected.isascii() or b"=?" in selected:
        return _facts(_PARSER.parsebytes(selected, headersonly=True))
    values: dict[str, str] = {}
    for field in wanted:
        name, _, value = field.decode("ascii").partition(":")
        values.setdefault(name.lower(), value.lstrip(" \t").rstrip("\r\n"))
    msgid, header_from, subject = values.get("message-id"), values.get("from"), values.get("subject")
    return HeaderFacts(msgid.strip().strip("<>").strip() if msgid else None,
                       header_from.strip() if header_from is not None else None,
                       subject.strip() if subject is not None else None)


def _facts(msg) -> HeaderFacts:
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
