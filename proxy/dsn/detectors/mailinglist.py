"""Mailing-list managers that refuse a post: the list address is the recipient that failed.

fml ("You are not a member of this mailing list <list@host>").
"""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR, Kind, report

_FML_RE = re.compile(r"You are not a member of this mailing list[ \t]{0,4}<(" + ADDR + r")>", re.I)


def detect_fml(mail):
    m = _FML_RE.search(mail.text[:4096])
    if not m:
        return None
    return report("fml", [(m.group(1), squash_line(mail.text, m))], Kind.BOUNCE)


def squash_line(text: str, m) -> str:
    end = text.find("\n", m.end())
    return text[m.start() : end if end >= 0 else None].strip()
