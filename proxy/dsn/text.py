"""Small text helpers shared by every format: addresses, codes, header decoding.

Every pattern here is bounded (no nested quantifiers over overlapping classes), because
the parser reads hostile input and must stay linear in it.
"""
from __future__ import annotations

import re

# A mailbox as bounces print it. Bounded parts so that a scan is linear in the text.
ADDR = r"[\w!#$%&'*+/=?^`{|}~.-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,10}"
ADDR_RE = re.compile(ADDR)
# "5.1.1", never "192.5.1.1" nor "5.1.1.2"; a full stop after it ends a sentence.
STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# A reply code at the head of a diagnostic ("550 5.1.1 ...", "550-5.1.1 ...", "550:").
LEADING_CODE_RE = re.compile(r"\s{0,8}(?:\w{1,8}\s{0,2};\s{0,8})?([245][0-5]\d)(?![\d.])")
# A reply code anywhere, followed by a separator as SMTP writes it.
ANY_CODE_RE = re.compile(r"(?<![\w.#/-])([245][0-5]\d)(?:[ -](?=\S)|$)", re.M)
_TYPE_PREFIX_RE = re.compile(r"^\s{0,8}[A-Za-z][\w.-]{0,20}\s{0,4};\s{0,8}")

_BRACKETED_RE = re.compile(r"<([^<>\s]{1,250})>")


class _Found:
    __slots__ = ("_start",)

    def __init__(self, start: int):
        self._start = start

    def start(self) -> int:
        return self._start


class LineMarkers:
    """Phrases that mark a line when they open it (after blanks, ">", "|", "=" or dashes),
    found in lower-cased text: many times cheaper than a case-insensitive regex alternation
    over a whole body. Quacks like a compiled pattern (`.search(text).start()`).
    """

    def __init__(self, *phrases: str):
        self.phrases = tuple(p.lower() for p in phrases)
        self._line_re: re.Pattern | None = None  # compiled on first use

    def search(self, text: str, lower: str | None = None) -> _Found | None:
        """The start of the first marked line; `lower` is text.lower() when the caller has it."""
        if lower is None:
            lower = text.lower()
        if self._line_re is None:
            self._line_re = re.compile(r"^[ \t>\-|*=]{0,80}(" + "|".join(map(re.escape, self.phrases)) + ")", re.M)
        # One pass finds the first line a phrase opens. The scan in _search (the definition) also
        # gives up on a phrase after 50 occurrences in the middle of lines: so this line is the
        # answer if its phrase occurs fewer times before it, and the scan decides otherwise.
        m = self._line_re.search(lower)
        if m is None:
            return None
        phrase, pos = m.group(1), m.start(1)
        earlier = 0
        found = lower.find(phrase)
        while found != pos:
            earlier += 1
            if earlier >= 50:
                return self._search(lower)
            found = lower.find(phrase, found + 1)
        return _Found(m.start())

    def _search(self, lower: str) -> _Found | None:
        """The definition, phrase by phrase: its first occurrence that opens a line, among its
        first 50, and the earliest such line of all the phrases."""
        best = -1
        for phrase in self.phrases:
            # Only an occurrence that starts before the best line so far can improve on it:
            # the search stops there instead of reading the rest of the text.
            end = len(lower) if best < 0 else best - 1 + len(phrase)
            pos = lower.find(phrase, 0, end)
            tries = 0
            while pos >= 0 and tries < 50:
                line_start = lower.rfind("\n", 0, pos) + 1
                if pos - line_start <= 80 and not lower[line_start:pos].strip(" \t>-|*="):
                    best = line_start
                    break
                pos = lower.find(phrase, pos + 1, end)
                tries += 1
        return _Found(best) if best >= 0 else None

TEXT_LIMIT = 64 * 1024  # how much of a text body a detector scans


def squash(value: str | None) -> str:
    """One line, single spaces: diagnostics arrive folded, indented and padded."""
    return " ".join(value.split()) if value else ""


def strip_type(value: str | None) -> str:
    """`rfc822; a@b` -> `a@b`, `dns; mx.example` -> `mx.example`, `smtp; 550 ...` -> `550 ...`."""
    if not value:
        return ""
    value = squash(value)
    return _TYPE_PREFIX_RE.sub("", value, count=1) if ";" in value else value  # (a type ends in ";")


def normalise_address(value: str | None) -> str | None:
    """The first mailbox in `value`, domain lower-cased; None if there is none."""
    if not value:
        return None
    m = ADDR_RE.search(value)
    if not m:
        return None
    address = m.group(0).strip(".'`")
    local, _, domain = address.rpartition("@")
    if not local or "." not in domain or ".." in local or local.startswith(".") or ".." in domain:
        return None  # "david...@gmail.com": an address someone shortened is no address
    return f"{local}@{domain.lower().rstrip('.')}"


def find_status(text: str | None) -> str | None:
    if not text:
        return None
    m = STATUS_RE.search(text)
    return m.group(0) if m else None


def leading_code(text: str | None) -> int | None:
    """The SMTP reply code a diagnostic starts with, if it starts with one."""
    if not text:
        return None
    m = LEADING_CODE_RE.match(text)
    return int(m.group(1)) if m else None


def any_code(text: str | None) -> int | None:
    """The first thing in `text` that reads like an SMTP reply code."""
    if not text:
        return None
    m = ANY_CODE_RE.search(text)
    return int(m.group(1)) if m else None


def decode_bytes(data: bytes | str | None, charset: str | None = None) -> str:
    """Bytes of a body part -> text; unknown or lying charsets never raise."""
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeError, ValueError, TypeError):
            continue  # unknown label, lying label, or a bytes-to-bytes codec ("base64")
    if charset:
        try:
            return data.decode(charset, errors="replace")
        except (LookupError, UnicodeError, ValueError, TypeError):
            pass
    return data.decode("latin-1")  # every byte is a character: never fails


def decode_header(value) -> str:
    """RFC 2047 words decoded; a header object or garbage becomes the best text available."""
    if value is None:
        return ""
    if not isinstance(value, str):
        try:
            value = str(value)  # a compat32 Header for 8-bit garbage
        except Exception:
            return ""
    if "=?" not in value:
        if value.isascii():
            return squash(value)
        return squash(value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    from email.header import decode_header as _decode

    try:
        chunks = _decode(value)
    except Exception:  # malformed encoded words: the raw text is better than nothing
        return squash(value)
    out = []
    for chunk, charset in chunks:
        out.append(decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk)
    return squash("".join(out))


def strip_angle(value: str | None) -> str | None:
    """A Message-ID without brackets, spaces or comments; None if empty."""
    if not value:
        return None
    value = squash(value)
    m = _BRACKETED_RE.search(value)
    if m:
        return m.group(1)
    value = value.strip("<> ")
    return value.split()[0] if value else None
