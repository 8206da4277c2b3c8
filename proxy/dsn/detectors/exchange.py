"""Microsoft Exchange 5.5-2003 and its look-alikes: "did not reach the following recipient(s):".

An X.400 address can hide the mailbox in "...;dda:SMTP=a@b;", and each recipient line
ends in "on <date>".
"""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR, TextFormat

_SMTP_RE = re.compile(r"(?:^|[ \t;=])(?:SMTP=)?(" + ADDR + r")(?:;|[ \t]+on[ \t]|[ \t]*$)", re.M | re.I)
_END = re.compile(r"^\s*-{3,}|^Original message|^Reporting-MTA:", re.I | re.M)


def _recipient_lines(section: str) -> list[tuple[str, str]]:
    """Each recipient line and the indented lines under it."""
    pairs = []
    lines = section.split("\n")[:400]
    for i, line in enumerate(lines):
        if line[:1] in " \t" or not line.strip():
            continue
        m = _SMTP_RE.search(line)
        if not m:
            continue
        reason = []
        for follow in lines[i + 1 : i + 12]:
            if follow[:1] not in " \t" and follow.strip() and not follow.strip()[0].isdigit():
                break
            reason.append(follow.strip())
        pairs.append((m.group(1), " ".join(reason)))
    return pairs


detect = TextFormat(
    "exchange",
    sign=("did not reach the following recipient",),
    start=re.compile(r"did not reach the following recipient\(?s?\)?", re.I),
    end=_END,
    strategies=(_recipient_lines,),
)
