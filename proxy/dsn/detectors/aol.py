"""AOL's old notices: bare screen names under "Your mail to the following recipients could not be
delivered"; a screen name is an address at aol.com."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import Kind, between, report

_SIGN_RE = re.compile(r"Your mail to the following recipients could not be delivered", re.I)
_END_RE = re.compile(r"^\s*$\n^\S", re.M)
_NAME_RE = re.compile(r"^[ \t]{1,16}([A-Za-z0-9][\w.+-]{0,63}(?:@[\w.-]{1,255})?)[ \t]*$", re.M)


def detect(mail):
    if "aol.com" not in mail.from_header.lower() or not _SIGN_RE.search(mail.text[:4096]):
        return None
    section = between(mail.text, _SIGN_RE, _END_RE, limit=4096) or ""
    pairs = []
    for name in _NAME_RE.findall(section):
        pairs.append((name if "@" in name else f"{name}@aol.com", section.split("\n", 1)[0].strip(" :")))
    return report("aol", pairs, Kind.BOUNCE)
