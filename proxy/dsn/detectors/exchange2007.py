"""Exchange 2007 and later, Office 365 and Outlook.com in plain text, when no report part came:
"Delivery has failed to these recipients or groups:", the address, then its explanation;
"Diagnostic information for administrators:" carries the remote server's reply."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR, Kind, report, says_delay

_RECIPIENTS_RE = re.compile(
    r"(?:Delivery has failed to these recipients or (?:groups|distribution lists)|"
    r"Your message (?:to [^\n]{1,200} )?couldn't be delivered|"
    r"配信が以下の受信者またはグループに失敗しました|Die Zustellung an folgende Empf.nger oder Gruppen ist fehlgeschlagen|"
    r"La remise .{1,40} destinataires ou groupes suivants a .chou.)\s{0,4}:?",
    re.I,
)
_ADDRESS_RE = re.compile(r"^[ \t]{0,8}[\"']?(" + ADDR + r")(?:[\"'>\] ]|<mailto:|$)", re.M)
_REMOTE_REPLY_RE = re.compile(r"Remote Server returned '([^'\n]{1,1000})'|^[ \t]{0,8}([45]\d\d[ -][45]\.\d{1,3}\.\d{1,3}[^\n]{0,800})$",
                              re.I | re.M)
_END_RE = re.compile(r"^\s*Original message headers:|^\s*Diagnostic information for administrators:", re.I | re.M)


def detect(mail):
    lower = mail.head_lower
    if "delivery has failed to these recipients" not in lower and "couldn't be delivered" not in lower \
            and "diagnostic information for administrators" not in lower and "配信が以下の受信者" not in lower:
        return None
    text = mail.text[:32768]
    m = _RECIPIENTS_RE.search(text)
    if not m:
        return None
    end = _END_RE.search(text, m.end())
    section = text[m.end() : end.start() if end else m.end() + 4000]
    addresses = _ADDRESS_RE.findall(section)
    if not addresses:
        return None
    reply = _REMOTE_REPLY_RE.search(text, m.end())
    explanation = " ".join(line.strip() for line in section.splitlines() if line.strip() and "@" not in line)
    diagnostic = (reply.group(1) or reply.group(2)) if reply else explanation
    kind = Kind.DELAY if says_delay(mail.lead_lower) else Kind.BOUNCE
    if len(set(a.lower() for a in addresses)) == 1:
        return report("exchange2007", [(a, diagnostic) for a in addresses], kind)
    # Several recipients: each has its own explanation under it and its own reply in the part for
    # administrators (a full mailbox beside a missing one must not share the missing one's reply).
    admin = _END_RE.search(text, m.end())
    return report("exchange2007", [(a, _own_reply(text, admin.start() if admin else len(text), a, addresses)
                                   or _own_explanation(section, a, addresses) or diagnostic) for a in addresses], kind)


def _following(text: str, start: int, address: str, others) -> tuple[int, int] | None:
    """Where `address` is named from `start` on, up to the next other recipient (or 1500 characters)."""
    lower = text.lower()
    at = lower.find(address.lower(), start)
    if at < 0:
        return None
    end = min(len(text), at + 1500)
    for other in others:
        if other.lower() != address.lower():
            j = lower.find(other.lower(), at + len(address), end)
            if j >= 0:
                end = j
    return at + len(address), end


def _own_reply(text: str, admin: int, address: str, others) -> str | None:
    span = _following(text, admin, address, others)
    if span is None:
        return None
    found = _REMOTE_REPLY_RE.search(text, span[0], span[1])
    return (found.group(1) or found.group(2)) if found else None


def _own_explanation(section: str, address: str, others) -> str | None:
    span = _following(section, 0, address, others)
    if span is None:
        return None
    lines = [line.strip() for line in section[span[0] : span[1]].splitlines() if line.strip() and "@" not in line]
    return " ".join(lines) or None
