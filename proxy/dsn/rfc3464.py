"""RFC 3464 delivery status notifications, as tolerant as real MTAs need.

The stdlib parses a `message/delivery-status` part into one header block per paragraph;
this module reads those blocks. When a DSN is malformed (a broken boundary, a
`text/plain` part holding the fields, fields pasted into a plain bounce) the same fields
are read from the text instead, so the standard still wins over format guessing.
"""
from __future__ import annotations

import re

from proxy.dsn.mail import content_type
from proxy.dsn.text import any_code, find_status, leading_code, normalise_address, strip_type
from proxy.model import Kind, RecipientReport, Report

STATUS_PARTS = ("message/delivery-status", "message/global-delivery-status", "text/delivery-status")
_RECIPIENT_FIELDS = ("original-recipient", "final-recipient", "x-actual-recipient")
# Action values as written, and the misspellings MTAs use, onto RFC 3464's five.
ACTIONS = {
    "failed": "failed", "failure": "failed", "fail": "failed", "error": "failed", "bounced": "failed",
    "delayed": "delayed", "delay": "delayed", "deferred": "delayed", "expanded": "expanded",
    "delivered": "delivered", "relayed": "relayed", "deliverable": "delivered", "expired": "failed",
}
_PER_MESSAGE_FIELDS = ("reporting-mta", "arrival-date", "x-postfix-sender", "x-original-sender",
                       "original-envelope-id", "x-original-message-id", "x-postfix-queue-id")
_ACTION_BY_CLASS = {"5": "failed", "4": "delayed", "2": "delivered"}
_FIELD_RE = re.compile(r"([A-Za-z][\w-]{0,60})[ \t]{0,8}:[ \t]{0,8}(.{0,4000})")
# Where fields pasted into a text body start.
_TEXT_DSN_RE = re.compile(r"^[> \t]{0,8}(?:Reporting-MTA|Final-Recipient|Original-Recipient)[ \t]{0,4}:", re.M | re.I)


def detect(mail) -> Report | None:
    """A Report from the mail's delivery-status fields, or None when it has none usable.

    Fields pasted into the text count only above the returned message here: a text bounce
    may return a bounce. `detect_quoted`, late in the registry, reads the rest.
    """
    blocks = None
    if not mail.types.isdisjoint(STATUS_PARTS):
        blocks = _status_blocks(mail.parts)
    if not blocks and "message/rfc822" in mail.types:
        blocks = _status_blocks(_forwarded_report_parts(mail))
    if blocks:
        return _report(mail, blocks, "rfc3464")
    from proxy.dsn.detectors.base import text_before_original

    return _from_text(mail, text_before_original(mail, limit=65536))


def detect_quoted(mail) -> Report | None:
    """A whole report quoted in a text body (a relay forwarding the bounce it received),
    once no format of its own has claimed the mail."""
    return _from_text(mail, mail.text)


def _from_text(mail, text: str) -> Report | None:
    lower = mail.text_lower
    if "recipient" not in lower and "reporting-mta" not in lower:
        return None
    blocks = blocks_in_text(text)
    return _report(mail, blocks, "rfc3464-text") if any(map(_is_recipient_block, blocks)) else None


def _report(mail, blocks, fmt: str) -> Report | None:
    report = from_blocks(blocks, fmt)
    if report is not None:
        enrich_from_text(report, mail=mail, comments=_status_comments(report, blocks))
    return report


def _status_blocks(parts) -> list[dict[str, str]]:
    """The blocks of every status part (a few MTAs batch several reports into one mail)."""
    out: list[dict[str, str]] = []
    for part in parts:
        if content_type(part) in STATUS_PARTS:
            blocks = blocks_of_part(part)
            if any(map(_is_recipient_block, blocks)):
                out.extend(blocks)
    return out


def _forwarded_report_parts(mail) -> list:
    """The parts of a report that a gateway wrapped in message/rfc822 (adding a disclaimer)."""
    out = []
    for ctype, part in mail.typed:
        if ctype == "message/rfc822" and part is not mail.msg:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and content_type(inner[0]) == "multipart/report":
                out.extend(list(inner[0].walk())[:50])
    return out


def blocks_of_part(part) -> list[dict[str, str]]:
    """The field blocks of a delivery-status part, however the stdlib stored it."""
    from proxy.dsn.mail import part_text

    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = []
        for block in payload:
            # each value unfolded: one line, single spaces (squash, inlined: this runs for every field)
            blocks.extend(split_groups([(name, " ".join(str(value).split()) if value is not None else "")
                                        for name, value in block.raw_items()]))
            body = block.get_payload()
            if isinstance(body, str) and body.strip():  # a line that was no field cut the block
                blocks.extend(blocks_in_text(body, start_anywhere=True))
        return blocks
    return blocks_in_text(part_text(part), start_anywhere=True)


def split_groups(items: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Fields in order -> one dict per recipient; a recipient field seen twice starts the next.

    Some MTAs (AOL's among them) write the whole report without the blank lines between
    recipients.
    """
    groups: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for name, value in items:
        name = name.lower()
        if name in fields and name in _RECIPIENT_FIELDS:
            groups.append(fields)
            fields = {}
        fields.setdefault(name, value)
    if fields:
        groups.append(fields)
    return groups


def blocks_in_text(text: str, start_anywhere: bool = False) -> list[dict[str, str]]:
    """Field blocks written as text; lines that are no field end nothing, they are skipped.

    A hand-rolled reader, not the stdlib's: pasted fields come indented, quoted with `>`
    and interleaved with prose, which a header parser would take for the start of a body.
    """
    if not text:
        return []
    if not start_anywhere:
        m = _TEXT_DSN_RE.search(text)
        if not m:
            return []
        text = text[m.start() :]
    text = text[:65536].replace("\r\n", "\n").replace("\r", "\n")
    blocks: list[dict[str, str]] = []
    items: list[list[str]] = []
    for line in text.split("\n")[:2000]:
        if line[:1] == ">":  # quoted: the ">" and one blank after it go
            line = line[2:] if line[1:2] in (" ", "\t") else line[1:]
        if not line.strip():
            blocks.extend(split_groups([(n, v) for n, v in items]))
            items = []
            continue
        if line[:1] in " \t" and items:
            items[-1][1] += " " + line.strip()
            continue
        m = _FIELD_RE.fullmatch(line.strip()) if ":" in line else None  # (a field has its colon)
        if m:
            items.append([m.group(1), m.group(2).strip()])
    blocks.extend(split_groups([(n, v) for n, v in items]))
    return blocks


def _is_recipient_block(fields: dict[str, str]) -> bool:
    get = fields.get  # one of _RECIPIENT_FIELDS, not empty
    return bool(get("original-recipient") or get("final-recipient") or get("x-actual-recipient"))


# sysexits.h: what a local mailer's exit code means, for "Diagnostic-Code: X-Unix; 71" (RFC 3464 section 2.3.6
# leaves the meaning to the type; Sendmail and Postfix write the exit code of the local delivery program).
SYSEXITS = {64: "EX_USAGE command line usage error", 65: "EX_DATAERR data format error",
            66: "EX_NOINPUT cannot open input", 67: "EX_NOUSER addressee unknown", 68: "EX_NOHOST host name unknown",
            69: "EX_UNAVAILABLE service unavailable", 70: "EX_SOFTWARE internal software error",
            71: "EX_OSERR operating system error", 72: "EX_OSFILE critical OS file missing",
            73: "EX_CANTCREAT can't create user output file", 74: "EX_IOERR input/output error",
            75: "EX_TEMPFAIL temporary failure", 76: "EX_PROTOCOL remote error in protocol",
            77: "EX_NOPERM permission denied", 78: "EX_CONFIG configuration error"}
# Status words that say only the class ("5.0.0 (permanent failure)"): no text of their own.
_CLASS_WORDS = re.compile(r"(?:permanent|temporary|transient|persistent)?\s*(?:failure|error|problem)?|undefined status|other", re.I)


def _diagnostic(fields: dict[str, str]) -> str | None:
    """The recipient's Diagnostic-Code; a local mailer's X-Unix exit code keeps its type and gets its
    sysexits meaning ("X-Unix; 71 (sysexits EX_OSERR operating system error)")."""
    raw = fields.get("diagnostic-code") or ""
    diagnostic = strip_type(raw) or None
    if diagnostic and raw.lstrip()[:7].lower() == "x-unix;":
        code = diagnostic.split(" ", 1)[0]
        meaning = SYSEXITS.get(int(code)) if code.isdigit() and len(code) <= 3 else None
        diagnostic = f"X-Unix; {diagnostic}" + (f" (sysexits {meaning})" if meaning else "")
    return diagnostic


def _status_comments(report: Report, blocks) -> dict[str, str]:
    """Recipient -> the comment of its Status field, for those without a Diagnostic-Code, when it says
    more than the class ("4.0.0 (host name lookup failure)")."""
    missing = {rr.recipient.lower() for rr in report.recipients if not rr.diagnostic}
    out: dict[str, str] = {}
    if not missing:
        return out
    for fields in blocks:
        status = fields.get("status") or ""
        if "(" not in status or not _is_recipient_block(fields):
            continue
        rr = recipient_of(fields)
        comment = status[status.find("(") + 1 :].rstrip(" )").strip()
        if rr and rr.recipient.lower() in missing and comment and not _CLASS_WORDS.fullmatch(comment):
            out.setdefault(rr.recipient.lower(), comment[:2000])
    return out


def recipient_of(fields: dict[str, str]) -> RecipientReport | None:
    """One per-recipient block -> RecipientReport (classification comes later)."""
    final = normalise_address(strip_type(fields.get("final-recipient")))
    original = normalise_address(strip_type(fields.get("original-recipient")))
    address = original or final or normalise_address(strip_type(fields.get("x-actual-recipient")))
    if not address:
        return None
    diagnostic = _diagnostic(fields)
    # The remote server's own enhanced code, when it gave one, says more than the
    # reporting MTA's translation of it into Status (often a bare 5.0.0).
    status = find_status(diagnostic) or find_status(fields.get("status"))
    action = ACTIONS.get((fields.get("action") or "").strip().split(" ", 1)[0].strip("();,.").lower())
    if not action and status:
        action = _ACTION_BY_CLASS.get(status[0])
    return RecipientReport(
        recipient=address,
        action=action,
        status=status,
        smtp_code=leading_code(diagnostic),
        diagnostic=diagnostic,
        remote_mta=strip_type(fields.get("remote-mta")) or None,
        final_recipient=final,
        last_attempt=fields.get("last-attempt-date") or None,
    )


def from_blocks(blocks: list[dict[str, str]], fmt: str = "rfc3464") -> Report | None:
    per_message: dict[str, str] = {}
    recipients: list[RecipientReport] = []
    seen = set()
    for fields in blocks:
        for name in _PER_MESSAGE_FIELDS:
            if name in fields:
                per_message.setdefault(name, fields[name])
        if not _is_recipient_block(fields):
            continue
        rr = recipient_of(fields)
        if rr and rr.recipient.lower() not in seen:
            seen.add(rr.recipient.lower())
            recipients.append(rr)
    if not recipients:
        return None
    report = Report(kind=kind_of(recipients), format=fmt, recipients=recipients)
    report.reporting_mta = strip_type(per_message.get("reporting-mta")) or None
    report.arrival_date = per_message.get("arrival-date") or None
    sender = per_message.get("x-postfix-sender") or per_message.get("x-original-sender")
    report.envelope_sender = normalise_address(strip_type(sender)) if sender else None
    report.original_envelope_id = per_message.get("original-envelope-id") or None
    # The reporting MTA's id of the failed message: Postfix's "queued as" when it is the upstream.
    report.queue_id = per_message.get("x-postfix-queue-id", "").split(" ", 1)[0] or None
    quoted_id = per_message.get("x-original-message-id")
    if quoted_id:
        from proxy.dsn.text import strip_angle

        report.original.message_id = strip_angle(quoted_id)
    return report


def enrich_from_text(report: Report, text: str | None = None, mail=None, comments: dict[str, str] | None = None) -> None:
    """A recipient without Diagnostic-Code: what the human-readable part says about it.

    Many MTAs (OpenSMTPD, Postfix on local errors) leave the field out and write the
    remote server's reply only in the text. Given the `mail` rather than its text, the text
    is decoded only when a recipient lacks a diagnostic (most DSNs have them all). `comments`: what
    the Status fields' comments say, read when the text names the recipient nowhere.
    """
    missing = [rr for rr in report.recipients if not rr.diagnostic]
    if not missing:
        return
    from proxy.dsn.detectors.base import (address_paragraphs, before_original, lead_sentences, reason_first_lines,
                                          section_reason, text_before_original)

    section = text_before_original(mail) if mail is not None else before_original(text or "")
    said: dict[str, str] = {}
    for strategy in (address_paragraphs, lead_sentences, reason_first_lines):
        for address, diagnostic in strategy(section):
            if diagnostic:
                said.setdefault(address.lower(), diagnostic)
    for rr in missing:
        diagnostic = said.get(rr.recipient.lower()) or said.get((rr.final_recipient or "").lower())
        if diagnostic:
            rr.diagnostic = diagnostic[:2000]
            rr.smtp_code = rr.smtp_code or any_code(diagnostic)
            rr.status = find_status(diagnostic) or rr.status
        elif comments and rr.recipient.lower() in comments:
            rr.diagnostic = comments[rr.recipient.lower()]
        elif len(report.recipients) == 1 and section.strip():
            # Said once for the only recipient ("554 ... Service unavailable" in the transcript):
            # a reason to read, not a status to trust over the report's own.
            rr.diagnostic = section_reason(section, {rr.recipient}) or None
            rr.smtp_code = rr.smtp_code or any_code(rr.diagnostic)


def kind_of(recipients: list[RecipientReport]) -> Kind:
    """A failure anywhere makes a bounce; else a delay; all delivered is a success report."""
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return Kind.BOUNCE
    if "delayed" in actions:
        return Kind.DELAY
    if actions and actions <= {"delivered", "relayed", "expanded"}:
        return Kind.DELIVERED
    return Kind.BOUNCE
