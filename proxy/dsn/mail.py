"""The parsed mail and what every format looks at, computed once and only when asked.

Detectors receive a `Mail` instead of raw bytes so that twenty of them looking at the
subject or the text body cost one decoding, not twenty.
"""
from __future__ import annotations

import re

from proxy.dsn.limits import DEFAULT_LIMITS, Limits
from proxy.dsn.text import TEXT_LIMIT, decode_bytes, decode_header, normalise_address

# How much is read is set by `Limits` (proxy/dsn/limits.py); every cut is recorded in `Mail.truncated`.
NESTING_LIMIT = 16  # multipart containers (boundary parameters); real bounces have two or three

_BLOCK_TAG_RE = re.compile(r"<(?:br|p|div|tr|li|h\d)\b[^>]{0,500}>", re.I)
_TAG_RE = re.compile(r"<[^>]{0,500}>")
_ENTITY = {"&nbsp;": " ", "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&#39;": "'"}
_ENTITY_RE = re.compile("|".join(_ENTITY))
_CTYPE_RE = re.compile(r"[\w.+-]{1,64}/[\w.+-]{1,128}")


def content_type(part) -> str:
    """The part's MIME type, clean even when a header lacks its ";" ("text/plain charset=...")."""
    cached = part.__dict__.get("_bounceproxy_ctype")
    if cached is None:
        m = _CTYPE_RE.match(_declared_type(part))
        cached = part.__dict__["_bounceproxy_ctype"] = m.group(0) if m else "text/plain"
    return cached


def _declared_type(part) -> str:
    """part.get_content_type() (compat32), read straight from the header list when the value is
    plain ASCII text: what the stdlib returns then, without its per-header policy calls."""
    for name, value in part._headers:
        if name.lower() == "content-type":
            if type(value) is not str or not value.isascii():  # a Header object, or 8-bit: the stdlib's way
                return part.get_content_type()
            ctype = value.partition(";")[0].strip().lower()
            return ctype if ctype.count("/") == 1 else "text/plain"
    return part.get_default_type()


def _charset(part) -> str | None:
    """part.get_content_charset() (compat32), read straight from a Content-Type value with no
    backslash, no RFC 2231 parameter and no quoted ";": for such a value the stdlib's parameter
    parsing comes down to this. Anything else goes to the stdlib."""
    for name, value in part._headers:
        if name.lower() == "content-type":
            if type(value) is not str or not value.isascii() or "\\" in value or "*" in value:
                break
            segments = value.split(";")
            if any(segment.count('"') % 2 for segment in segments):
                break  # a quoted ";"
            for segment in segments:
                key, _, found = segment.partition("=")
                if key.strip().lower() == "charset":
                    found = found.strip()
                    if len(found) > 1 and (found[0] + found[-1] == '""' or found[0] + found[-1] == "<>"):
                        found = found[1:-1]  # email.utils.unquote
                    return found.lower()
            return None
    return part.get_content_charset()


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
        charset = _charset(part)
    except Exception:
        pass
    if isinstance(payload, bytes):
        payload = payload[: limit * 2]
    return decode_bytes(payload, charset)[:limit]


class cached_property:  # noqa: N801 - named after functools' one, which takes a lock per first access
    """A value computed on first access and kept on the instance (no lock: a Mail is one thread's)."""

    def __init__(self, function):
        self.function = function
        self.name = function.__name__
        self.__doc__ = function.__doc__

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.function(instance)
        return value


class Mail:
    """One inbound message, parsed by the stdlib, with lazily derived views."""

    def __init__(self, raw: bytes, limits: Limits = DEFAULT_LIMITS):
        import email
        from email._policybase import compat32  # = email.policy.compat32, without the modern policies' imports

        self.limits = limits
        self.truncated: list[str] = []  # each limit reached, "what: N of M" (Report.truncated)
        if len(raw) > limits.max_bytes:
            self.truncated.append(f"bytes: {limits.max_bytes} of {len(raw)} read")
            raw = raw[: limits.max_bytes]
        if b"\r" in raw:
            # One line ending for everything below: payloads keep the ones they came with, and
            # quoted-printable soft breaks or header blocks in a body would otherwise read
            # differently in CRLF (dos) and CR (old mac) mail.
            raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        max_lines = limits.max_lines
        if len(raw) > max_lines and (lines := raw.count(b"\n")) > max_lines:
            self.truncated.append(f"lines: {max_lines} of {lines} read")
            raw = b"\n".join(raw.split(b"\n", max_lines)[:max_lines])
        self.raw = raw
        # Absurd nesting: keep the headers and read the body as one text.
        self.flat = raw.count(b"oundary=") > NESTING_LIMIT or raw.count(b"OUNDARY=") > NESTING_LIMIT
        if self.flat:
            self.truncated.append(f"nesting: more than {NESTING_LIMIT} multipart boundaries, body read as one text")
        if not self.flat:
            try:
                self.msg = email.message_from_bytes(raw, policy=compat32)
            except RecursionError:
                self.flat = True
        if self.flat:
            from email.parser import BytesParser

            self.msg = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
        # The root's type from the header table built once (Message.get scans every header).
        m = _CTYPE_RE.match(self.headers.get("content-type", "text/plain").strip().lower())
        self.msg.__dict__["_bounceproxy_ctype"] = m.group(0) if m else "text/plain"

    def header(self, name: str, msg=None) -> str:
        """A header of the mail (or of `msg`), decoded; empty when absent."""
        if msg is None:
            value = self.headers.get(name.lower())
        else:
            value = msg.get(name)
        return decode_header(value) if value is not None else ""

    @cached_property
    def headers(self) -> dict[str, str]:
        """The mail's own header fields by lower-case name, the first of each: one pass, not one per lookup."""
        out: dict[str, str] = {}
        for name, value in self.msg.raw_items():
            out.setdefault(name.lower(), value)
        return out

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
        return content_type(self.msg)

    @cached_property
    def typed(self) -> list[tuple[str, object]]:
        """(content type, part) for every part, the root included, depth first, without
        descending into attached messages; the types are computed once, here."""
        out = []
        stack = [self.msg]
        max_parts = self.limits.max_parts
        while stack and len(out) < max_parts:
            part = stack.pop()
            ctype = content_type(part)
            out.append((ctype, part))
            if ctype.startswith("message/"):
                continue  # an attached message or a report part: read as a whole, never as our parts
            payload = part._payload
            if isinstance(payload, list):
                stack.extend(reversed(payload))
            elif ctype.startswith("multipart/") and not self.flat:
                repaired = _repair_multipart(part)
                if repaired is not None:
                    stack.extend(reversed(repaired))
        if stack:
            self.truncated.append(f"parts: {max_parts} of {max_parts + _count_parts(stack)} read")
        return out

    @cached_property
    def parts(self) -> list:
        return [part for _, part in self.typed]

    @cached_property
    def types(self) -> frozenset[str]:
        """The content types present: a format checks for its part here before walking the parts."""
        return frozenset(ctype for ctype, _ in self.typed)

    @cached_property
    def text(self) -> str:
        """The human-readable body: text/plain parts outside attached messages, else HTML."""
        plain = [p for ctype, p in self.typed if ctype == "text/plain" and not p.is_multipart()]
        if not plain and not self.msg.is_multipart() and not self.content_type.startswith("text/"):
            plain = [self.msg]  # an unlabelled body is still text
        limit = self.limits.max_text_chars
        chunks = []
        size = 0
        for part in plain:
            if chunks and str(part.get("Content-Disposition", "")).lower().startswith("attachment"):
                continue
            chunk = part_text(part, limit - size)
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                self.truncated.append(f"text: {limit} characters read of a body of {_body_bytes(plain)} bytes")
                break
        if not chunks or not any(c.strip() for c in chunks):
            for ctype, part in self.typed:
                if ctype == "text/html" and not part.is_multipart():
                    chunks.append(html_to_text(part_text(part, limit * 2))[:limit])
                    break
        text = "\n".join(chunks)
        return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text

    @cached_property
    def head(self) -> str:
        """Where formats look for their signature: From, Subject and the start of the text
        (every format announces itself in its first lines; scanning less keeps twenty formats cheap)."""
        return f"{self.from_header}\n{self.subject}\n{self.text[:3072]}"

    @cached_property
    def head_lower(self) -> str:
        return self.head.lower()

    @cached_property
    def lead_lower(self) -> str:
        """Subject and the first lines, lower case: where a notice says it is only a warning."""
        return f"{self.subject}\n{self.text[:1500]}".lower()

    @cached_property
    def text_lower(self) -> str:
        return self.text.lower()

    @cached_property
    def original(self):
        from proxy.dsn.original import extract

        return extract(self)


def _body_bytes(parts: list) -> int:
    return sum(len(p._payload) for p in parts if isinstance(p._payload, (str, bytes)))


def _count_parts(stack: list) -> int:
    """The parts left unread under these, counted as `Mail.typed` would have walked them."""
    n = 0
    while stack:
        part = stack.pop()
        n += 1
        payload = part._payload
        if isinstance(payload, list) and not content_type(part).startswith("message/"):
            stack.extend(payload)
    return n


_BOUNDARY_LINE_RE = re.compile(r"^--([^\s]{1,200})[ \t]*$", re.M)


def _repair_multipart(part) -> list | None:
    """The subparts of a multipart whose boundary parameter was lost (a header line not folded).

    The stdlib then keeps the whole body as one string; the first "--boundary" line in it
    says what the boundary was.
    """
    payload = part.get_payload()
    if not isinstance(payload, str):
        return None
    m = _BOUNDARY_LINE_RE.search(payload[:65536])
    if not m:
        return None
    import email
    from email._policybase import compat32

    boundary = m.group(1)
    try:
        repaired = email.message_from_string(
            f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n' + payload, policy=compat32
        )
    except RecursionError:
        return None
    inner = repaired.get_payload()
    return inner if isinstance(inner, list) else None

