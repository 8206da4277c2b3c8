"""What the plain-text bounce formats share: a section of the body, paragraphs per address.

Most non-standard bounces say the same thing in the same shape: a sentence that opens
the list, then per failed address a line naming it and a few lines of reason, then a
marker before the returned message. A detector names its markers; these helpers do the
reading, so each format stays a few lines long.
"""
from __future__ import annotations

import re

from proxy.dsn.text import ADDR, ADDR_RE, LineMarkers, any_code, normalise_address, squash
from proxy.model import Kind, RecipientReport, Report

# A line that names a recipient: the address first (maybe bulleted, bracketed or labelled),
# then nothing, a colon, an ellipsis or a reason.
_ADDRESS_LINE_RE = re.compile(
    r"([ \t]{0,16})(?:(?:[*\u2022]|-{1,2})[ \t]{0,4}|>{2,3}[ \t]{0,4}|\d{1,3}[.)][ \t]{1,4}|"
    r"(?:RCPT TO|Recipient|Failed Recipient|Address|Error-for|Undeliverable Address|Intended recipient)[ \t]{0,4}:[ \t]{0,4})?"
    r"[<\"'\[(]{0,2}(?:SMTP:)?(" + ADDR + r")[>\"'\])]{0,2}"
    r"[ \t]{0,8}(?:$|[:;,.(\[]|[ \t]\S|\.\.\.)",
    re.I,
)
# Sentences that end in the failed address ("Unable to deliver message to <a@b>").
LEAD_PHRASES = (
    "could not be delivered to", "couldn't be delivered to", "undeliverable to", "unable to deliver message to",
    "unable to deliver your message to", "unable to deliver mail to", "error delivering your mail to",
    "did not reach the following recipient", "did not reach the following recipients",
    "did not reach the following recipient(s)", "failed to deliver to", "returned permanent errors",
    "your message to", "originally addressed to", "delivery to", "addressed to", "not be delivered to",
    "could not deliver the message to", "could not deliver message to", "local mailbox", "mailbox unavailable for",
    "to which your message was addressed", "wasn't delivered to", "was not delivered to",
)
_LEAD_PATTERN = (
    "(?:" + "|".join(re.escape(p).replace(r"\ ", r"\s{1,4}") for p in LEAD_PHRASES) + ")"
    r"[ \t]{0,4}[:,]?[ \t\n]{0,8}(?:the following (?:recipient|user|address)(?:\(s\)|s)?[ \t]{0,4}:?[ \t\n]{0,8})?"
    r"['\"<\[(]{0,2}(?:smtp:)?(" + ADDR + r")"
)
_LEAD_LOWER_RE = re.compile(_LEAD_PATTERN)  # for lower-cased text; the re.I twin is compiled on first need
# A reason, a colon, the address: "User's mailbox is full: <a@b>".
_REASON_FIRST_RE = re.compile(
    r"^[ \t]{0,8}([^:\n@<>]{3,80}?)[ \t]{0,4}:[ \t]{0,8}[<\[(\"']{0,2}(" + ADDR + r")[>\])\"']{0,2}[ \t.]{0,4}$", re.M
)
_NOT_A_REASON = frozenset(("to", "from", "cc", "bcc", "reply-to", "sender", "return-path", "delivered-to", "x-original-to",
                           "envelope-to", "x-envelope-to", "message-id", "in-reply-to", "references", "subject", "date",
                           "system contact", "contact", "postmaster", "original-recipient", "final-recipient",
                           "x-failed-recipients", "x-postfix-sender", "sent by", "from address"))
# A line that is (or quotes) an SMTP reply: "550 5.1.1 ...", "550-5.7.1 ...", "said: 554 ...".
_REPLY_LINE_RE = re.compile(r"(?:.{0,120}?(?:said|returned|reply|error)\W{1,4})?[45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3})?", re.I)
_REMOTE_HOST_RE = re.compile(r"\bhost[ \t]{1,4}([\w.-]{1,255}\.[A-Za-z]{2,63})[ \t]{0,4}\[", re.I)
# Where the returned message starts in a text bounce: nothing after it is about delivery.
ORIGINAL_MARKERS = LineMarkers(
    "this is a copy of the message", "original message", "returned message", "below this line is a copy of the message",
    "header of the original message", "headers of the original message", "header of original message",
    "headers of the returned message", "undelivered message", "message headers follow", "unsent message below",
    "unsent message follows", "the original message headers", "content-type: message/rfc822",
    "content-type: text/rfc822-headers", "your message reads", "start of returned message",
    "enclosed is a copy of the message", "enclosed are the original headers", "message text follows", "original mail header", "header of the source mail",
    # a quoted header block starts: whatever it is, it is the returned mail
    "received: from", "return-path:",
)
MAILER_DAEMON_RE = re.compile(r"mailer-daemon|postmaster|mail delivery|mail-daemon|mail administrator|mailmaster|"
                              r"mdaemon|bounce|mail system|system administrator|mailadmin|nobody@", re.I)


def between(text: str, start: re.Pattern, end: re.Pattern | LineMarkers | None = ORIGINAL_MARKERS,
            limit: int = 16384) -> str | None:
    """The text after what `start` matches, up to `end` (or `limit` characters)."""
    m = start.search(text)
    if not m:
        return None
    chunk = text[m.end() : m.end() + limit]
    if end is not None:
        e = end.search(chunk)
        if e:
            chunk = chunk[: e.start()]
    return chunk


def before_original(text: str, limit: int = 16384) -> str:
    """The part of a text bounce that talks about delivery, not the returned mail."""
    chunk = text[:limit]
    m = ORIGINAL_MARKERS.search(chunk)
    return chunk[: m.start()] if m else chunk


def text_before_original(mail, limit: int = 16384) -> str:
    """before_original(mail.text, limit), once per mail and limit (several formats ask), read in
    the mail's lower-cased text instead of lower-casing it again."""
    text = mail.text
    limit = min(limit, len(text))  # a short text reads the same under any limit
    key = f"_before_original_{limit}"
    found = mail.__dict__.get(key)
    if found is None:
        lower = mail.text_lower
        chunk = text[:limit]
        # Offsets in the lower-cased text are the text's own unless lower-casing changed the length.
        m = ORIGINAL_MARKERS.search(chunk, lower[:limit] if len(lower) == len(text) else None)
        found = mail.__dict__[key] = chunk[: m.start()] if m else chunk
    return found


# A header field of a quoted message that lists addresses (its folded lines start with blanks).
_ADDRESS_HEADER_RE = re.compile(r"(?:to|cc|bcc|from|reply-to|sender|resent-(?:to|cc|from)|delivered-to|x-original-to)[ \t]{0,4}:", re.I)


def address_paragraphs(section: str, max_items: int | None = None) -> list[tuple[str, str]]:
    """(address, reason) for every paragraph opened by a line that starts with an address.

    The reason is the rest of that line and the lines under it, up to a blank line or the
    next address line at the same depth. An address deeper in a reason (a quoted RCPT TO)
    opens nothing.
    """
    out: list[tuple[str, list[str]]] = []
    depth = None
    current: list[str] | None = None
    in_header = False  # inside a quoted To/Cc/From... field: its folded lines list addresses, not failures
    for line in section.split("\n"):  # the section is bounded (Limits.max_text_chars)
        if not line.strip():
            current = None
            in_header = False
            continue
        if line[:1] in " \t" and in_header:
            continue
        in_header = ":" in line[:20] and _ADDRESS_HEADER_RE.match(line) is not None
        if in_header:
            continue
        m = _ADDRESS_LINE_RE.match(line) if "@" in line else None  # (an address has its @)
        if m and (depth is None or len(m.group(1).expandtabs(8)) <= depth):
            if depth is None:
                depth = len(m.group(1).expandtabs(8))
            rest = line[m.end(2) :].lstrip(">\"' \t:;,.")
            current = [rest] if rest.strip() else []
            out.append((m.group(2), current))
            if max_items is not None and len(out) >= max_items:
                break
            continue
        if current is not None:
            current.append(line.strip())
    return [(a, squash(" ".join(lines))) for a, lines in out]


def lead_sentences(section: str, max_items: int = 50) -> list[tuple[str, str]]:
    """(address, reason) for sentences that end in the address; the reason is what follows."""
    lower = section.lower()
    # Matched case-sensitively on the lower-cased text (much faster), offsets mapped back:
    # unless lower-casing changed the length (a few non-ASCII letters do).
    if len(lower) == len(section):
        matches = _LEAD_LOWER_RE.finditer(lower)
    else:
        matches = re.compile(_LEAD_PATTERN, re.I).finditer(section)  # rare; the re module caches it
    out = []
    for m in matches:
        tail = section[m.end() : m.end() + 600].lstrip(">\"')]. \t:,")
        blank = tail.find("\n\n")
        reason = squash(tail[: blank if blank >= 0 else None])
        if not reason:  # the sentence ended with the address: the reason is the next paragraph
            reason = squash(tail[:400])
        out.append((section[m.start(1) : m.end(1)], reason))
        if len(out) >= max_items:
            break
    return out


def reason_first_lines(section: str, max_items: int = 50) -> list[tuple[str, str]]:
    """(address, reason) for lines "reason: address", headers excluded."""
    found = []
    for m in _REASON_FIRST_RE.finditer(section):
        reason = m.group(1).strip()
        if reason.lower() in _NOT_A_REASON or reason.lower().endswith(("from", "to")):
            continue
        found.append(m)
        if len(found) >= max_items:
            break
    out = []
    for i, m in enumerate(found):  # the reason goes on up to the next such line
        stop = found[i + 1].start() if i + 1 < len(found) else m.end() + 500
        out.append((m.group(2), squash(m.group(1) + " " + section[m.end() : min(stop, m.end() + 500)])))
    return out


def section_reason(section: str, addresses) -> str:
    """The reason a notice gives once for all its addresses: from the remote server's reply
    when it quotes one (a line that starts with a reply code), else the notice's own words,
    minus the lines that only name addresses. Kept short: it is a reason, not the notice."""
    lines = [line.strip() for line in section.split("\n")[:200]]
    for i, line in enumerate(lines):
        if ("4" in line or "5" in line) and _REPLY_LINE_RE.match(line):  # (a reply code has its 4 or 5)
            reply = []
            for follow in lines[i : i + 6]:
                if not follow:
                    break
                reply.append(follow)
            return squash(" ".join(reply))[:600]
    keep = [line for line in lines if line.strip(" \t<>*-") and line.strip(" \t<>*-") not in addresses]
    return squash(" ".join(keep))[:600]


def recipient(address: str, diagnostic: str | None = None, action: str = "failed") -> RecipientReport | None:
    """A RecipientReport from what a text bounce says about one address.

    No status: one inside the text is the classifier's to find, so that its source reads
    "text" (a text bounce has no Status field to trust).
    """
    normal = normalise_address(address)
    if not normal:
        return None
    diagnostic = squash(diagnostic)[:2000] or None
    host = _REMOTE_HOST_RE.search(diagnostic) if diagnostic else None
    return RecipientReport(
        recipient=normal,
        action=action,
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


# Phrases of warnings, not failures, as they read in lower case (see Mail.lead_lower).
DELAY_PHRASES = (
    "(delay)", "delayed mail", "delivery delayed", "delivery has been delayed", "has been delayed",
    "still being retried", "warning message only", "delivery attempts will continue", "will continue to try",
    "has been postponed", "mail delivery warning", "advisory-only", "not yet been delivered", "will be retried",
    "could not send mail for past", "could not send message for past", "temporarily suspended",
    "message delayed", "delay notification",
)


def says_delay(lead_lower: str) -> bool:
    """Whether a notice calls itself a warning: a phrase above, or Exim's "Warning: message X delayed"."""
    if any(map(lead_lower.__contains__, DELAY_PHRASES)):
        return True
    return lead_lower.startswith("warning: message") and "delayed" in lead_lower[:120]


def own_addresses(mail) -> set[str]:
    """Who the bounce is for (the original sender), never one of the failed recipients.

    Unless the returned message was addressed to them too: a test mail to oneself.
    """
    cached = mail.__dict__.get("_own_addresses")
    if cached is not None:
        return cached
    own = set()
    for value in (mail.header("To"), mail.header("Cc")):
        own.update(a.lower() for a in ADDR_RE.findall(value or ""))
    if mail.from_address:
        own.add(mail.from_address)
    own.difference_update(a.lower() for a in ADDR_RE.findall(mail.original.to or ""))
    mail.__dict__["_own_addresses"] = own
    return own


def signed(mail, literals) -> bool:
    """Whether the mail's head holds one of these signature literals. Each literal is looked for
    once per mail, and only when a format asks: a mail an early format claims reads few."""
    seen = mail.__dict__.get("_signs")
    if seen is None:
        seen = mail.__dict__["_signs"] = {}
    for literal in literals:
        hit = seen.get(literal)
        if hit is None:
            hit = seen[literal] = literal in mail.head_lower
        if hit:
            return True
    return False


class TextFormat:
    """A plain-text bounce format, declared: how it signs, where its list is, how it reads.

    `sign` (lower-case literals, or a regex) is looked for in the From header, the Subject
    and the first 3 KB of text (Mail.head); the list is the text between `start` and `end`;
    `strategies` read it, the first that finds addresses wins; lacking any,
    X-Failed-Recipients or (if `original_to`) the returned message's To name the recipient.
    """

    def __init__(self, name: str, sign: tuple[str, ...] | re.Pattern, start: re.Pattern | None = None,
                 end: re.Pattern | LineMarkers | None = ORIGINAL_MARKERS, delay: bool = True,
                 strategies=None, original_to: bool = False, exclude_own: bool = True):
        self.name, self.start, self.end, self.delay = name, start, end, delay
        # Literal signatures are matched against the lower-cased head: far cheaper than a regex.
        self.literals = frozenset(s.lower() for s in sign) if isinstance(sign, (tuple, list)) else None
        self.sign = None if self.literals is not None else sign
        self.strategies = strategies or (address_paragraphs, lead_sentences, reason_first_lines)
        self.original_to, self.exclude_own = original_to, exclude_own

    def __call__(self, mail) -> Report | None:
        if self.literals is not None:
            if "" not in self.literals and not signed(mail, self.literals):
                return None
        elif not self.sign.search(mail.head):
            return None
        section = self.section(mail)
        if section is None:
            return None
        pairs = self.pairs(mail, section)
        if not pairs:
            return None
        reason = None
        filled = []
        for address, diagnostic in pairs:
            if not diagnostic:
                if reason is None:
                    reason = section_reason(section, {a for a, _ in pairs})
                diagnostic = reason
            filled.append((address, diagnostic))
        return report(self.name, filled, self.kind(mail, section))

    def section(self, mail) -> str | None:
        """The notice's text where this format lists addresses: the text is already bounded (and
        its cut recorded) by `Limits.max_text_chars`, so the section is never silently short."""
        if self.start is None:
            if self.end is ORIGINAL_MARKERS:
                return text_before_original(mail, len(mail.text))
            text = mail.text
            m = self.end.search(text) if self.end is not None else None
            return text[: m.start()] if m else text
        return between(mail.text, self.start, self.end, len(mail.text))

    def pairs(self, mail, section: str) -> list[tuple[str, str]]:
        own = own_addresses(mail) if self.exclude_own else set()
        for strategy in self.strategies:
            pairs = [(a, d) for a, d in strategy(section) if a.lower() not in own]
            if pairs:
                return pairs
        addresses = failed_recipients_header(mail)
        if not addresses and self.original_to and mail.original.to:
            addresses = ADDR_RE.findall(mail.original.to)[:1]
        return [(a, "") for a in addresses]

    def kind(self, mail, section: str) -> Kind:
        if self.delay and says_delay(mail.lead_lower):
            return Kind.DELAY
        return Kind.BOUNCE


def failed_recipients_header(mail) -> list[str]:
    """Exim's and others' X-Failed-Recipients: the addresses, when the text hides them."""
    value = mail.header("X-Failed-Recipients")
    return [m.group(0) for m in ADDR_RE.finditer(value)] if value else []


__all__ = [
    "ADDR", "ADDR_RE", "DELAY_PHRASES", "Kind", "LineMarkers", "MAILER_DAEMON_RE", "ORIGINAL_MARKERS", "TextFormat",
    "address_paragraphs", "before_original", "between", "failed_recipients_header", "lead_sentences", "own_addresses",
    "reason_first_lines", "recipient", "report", "says_delay", "section_reason",
]
