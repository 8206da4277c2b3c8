"""RFC 3464 delivery status notifications, as tolerant as real MTAs need.

The stdlib parses a `message/delivery-status` part into one header block per paragraph;
this module reads those blocks. When a DSN is malformed (a broken boundary, a
`text/plain` part holding the fields, fields pasted into a plain bounce) the same fields
are read from the text instead, so the standard still wins over format guessing.
"""
from __future__ import annotations

import re

from proxy.dsn.text import find_status, leading_code, normalise_address, squash, strip_type
from proxy.model import Kind, RecipientReport, Report

STATUS_PARTS = ("message/delivery-status", "message/global-delivery-status", "text/delivery-status")
_RECIPIENT_FIELDS = ("original-recipient", "final-recipient", "x-actual-recipient")
# Action values as written, and the misspellings MTAs use, onto RFC 3464's five.
ACTIONS = {
    "failed": "failed", "failure": "failed", "fail": "failed", "error": "failed", "bounced": "failed",
    "delayed": "delayed", "delay": "delayed", "deferred": "delayed", "expanded": "expanded",
    "delivered": "delivered", "relayed": "relayed", "deliverable": "delivered",
}
_ACTION_BY_CLASS = {"5": "failed", "4": "delayed", "2": "delivered"}
_FIELD_RE = re.compile(r"([A-Za-z][\w-]{0,60})[ \t]{0,8}:[ \t]{0,8}(.{0,4000})")
# Where fields pasted into a text body start.
_TEXT_DSN_RE = re.compile(r"^[ \t]{0,8}(?:Reporting-MTA|Final-Recipient|Original-Recipient)[ \t]{0,4}:", re.M | re.I)


def detect(mail) -> Report | None:
    """A Report from the mail's delivery-status fields, or None when it has none usable."""
    blocks = None
    for part in mail.parts:
        if part.get_content_type() in STATUS_PARTS:
            blocks = blocks_of_part(part)
            if any(_is_recipient_block(b) for b in blocks):
                break
    fmt = "rfc3464"
    if not blocks or not any(_is_recipient_block(b) for b in blocks):
        blocks = blocks_in_text(mail.text)
        fmt = "rfc3464-text"
        if not any(_is_recipient_block(b) for b in blocks):
            return None
    return from_blocks(blocks, fmt)


def blocks_of_part(part) -> list[dict[str, str]]:
    """The field blocks of a delivery-status part, however the stdlib stored it."""
    from proxy.dsn.mail import part_text

    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = []
        for block in payload:
            fields = {}
            for name, value in block.items():
                fields.setdefault(name.lower(), _unfold(value))
            if fields:
                blocks.append(fields)
            body = block.get_payload()
            if isinstance(body, str) and body.strip():  # a line that was no field cut the block
                blocks.extend(blocks_in_text(body, start_anywhere=True))
        return blocks
    return blocks_in_text(part_text(part), start_anywhere=True)


def blocks_in_text(text: str, start_anywhere: bool = False) -> list[dict[str, str]]:
    """Field blocks written as text; lines that are no field end nothing, they are skipped.

    A hand-rolled reader, not the stdlib's: pasted fields come indented and interleaved with
    prose, which a header parser would take for the start of a body.
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
    fields: dict[str, str] = {}
    last = None
    for line in text.split("\n")[:2000]:
        if not line.strip():
            if fields:
                blocks.append(fields)
            fields, last = {}, None
            continue
        if line[:1] in " \t" and last:
            fields[last] += " " + line.strip()
            continue
        m = _FIELD_RE.fullmatch(line.strip())
        if m:
            name = m.group(1).lower()
            if name in fields and name in _RECIPIENT_FIELDS[1:2]:
                blocks.append(fields)  # a second recipient without a blank line between
                fields = {}
            if name not in fields:
                fields[name] = m.group(2).strip()
                last = name
            else:
                last = None
        else:
            last = None
    if fields:
        blocks.append(fields)
    return blocks


def _unfold(value) -> str:
    return squash(str(value)) if value is not None else ""


def _is_recipient_block(fields: dict[str, str]) -> bool:
    return any(fields.get(name) for name in _RECIPIENT_FIELDS)


def recipient_of(fields: dict[str, str]) -> RecipientReport | None:
    """One per-recipient block -> RecipientReport (classification comes later)."""
    final = normalise_address(strip_type(fields.get("final-recipient")))
    original = normalise_address(strip_type(fields.get("original-recipient")))
    address = original or final or normalise_address(strip_type(fields.get("x-actual-recipient")))
    if not address:
        return None
    status = find_status(fields.get("status"))
    action = ACTIONS.get((fields.get("action") or "").strip().split(" ", 1)[0].strip("();,.").lower())
    if not action and status:
        action = _ACTION_BY_CLASS.get(status[0])
    diagnostic = strip_type(fields.get("diagnostic-code")) or None
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
        if not _is_recipient_block(fields):
            for name, value in fields.items():
                per_message.setdefault(name, value)
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
    quoted_id = per_message.get("x-original-message-id")
    if quoted_id:
        from proxy.dsn.text import strip_angle

        report.original.message_id = strip_angle(quoted_id)
    return report


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
