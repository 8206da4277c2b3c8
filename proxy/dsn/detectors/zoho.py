"""Zoho Mail: "a@b Invalid Address, ERROR_CODE :550, ..." and delay lines
"[Status: Error, Address: <a@b>, ResponseCode 421, , Host not reachable.]"."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR, TextFormat, address_paragraphs

_STATUS_LINE_RE = re.compile(r"\[Status:[^,\]]{0,40},\s*Address:\s*<?(" + ADDR + r")>?,\s*(ResponseCode[^\]]{0,500})\]", re.I)


def _status_lines(section: str) -> list[tuple[str, str]]:
    return [(a, d.replace(",", " ")) for a, d in _STATUS_LINE_RE.findall(section)][:50]


detect = TextFormat(
    "zoho",
    sign=("zoho", "error_code :", "[status:"),
    start=re.compile(r"This is a permanent error\.|The following addresses had fatal errors\s*-*", re.I),
    end=re.compile(r"^\s*-{3,}\s*Transcript|^\s*Message will be retried|^Received:|^\s*with SMTP id", re.I | re.M),
    strategies=(_status_lines, address_paragraphs),
)
