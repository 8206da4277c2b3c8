"""Mimecast's failure alert: "-- a@b" under "could not be delivered:", then "The problem
appears to be :" and "Additional information follows :" each with a "-- " line."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR, Kind, report, says_delay

_RECIPIENT_RE = re.compile(r"(?:could not be delivered|addressed to email address)\s{0,4}:?\s{0,8}\n-- <?(" + ADDR + r")>?", re.I)
_DETAIL_RE = re.compile(r"^(?:The problem appears to be|Additional information follows)\s{0,4}:\s{0,8}\n-- (.{1,1000})$",
                        re.I | re.M)


def detect(mail):
    lower = mail.head_lower
    if "the problem appears to be" not in lower or "-- " not in lower:
        return None
    text = mail.text[:16384]
    details = _DETAIL_RE.findall(text)
    diagnostic = " ".join(reversed(details))  # the server's reply (last) reads first
    kind = Kind.DELAY if says_delay(mail.lead_lower) else Kind.BOUNCE
    return report("mimecast", [(a, diagnostic) for a in _RECIPIENT_RE.findall(text)], kind)
