"""qmail and its descendants ("Hi. This is the qmail-send program at ...", "<a@b>:" paragraphs).

Yahoo's and a few others' failure notices are qmail's text with another greeting.
"""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR, TextFormat, address_paragraphs

_END = re.compile(r"^-{2,}\s*(?:Below this line is a copy|Enclosed is a copy|Enclosed are the original headers|"
                  r"Original message follows|Below this line is the original)", re.I | re.M)
_TO_LINE_RE = re.compile(r"^To:[ \t]{0,8}<?(" + ADDR + r")>?[ \t]*$", re.M | re.I)

detect = TextFormat(
    "qmail",
    sign=("this is the qmail-send program", "qmail-send program at", "able to deliver your message to the following address",
          "unable to deliver message to the following address", "--- below this line is a copy of the message"),
    start=re.compile(r"to the following address(?:es|\(es\))?", re.I),
    end=_END,
)


def _to_lines(section: str) -> list[tuple[str, str]]:
    return [(a, "") for a in _TO_LINE_RE.findall(section)][:20]


# "I'm afraid I wasn't able to deliver the following message." names the recipient only
# in the returned message's To line quoted above the copy.
detect_summary = TextFormat(
    "qmail",
    sign=("i'm afraid i wasn't able to deliver the following message",),
    start=re.compile(r"I'm afraid I wasn't able to deliver the following message", re.I),
    end=_END,
    strategies=(address_paragraphs, _to_lines),
    exclude_own=False,
)
