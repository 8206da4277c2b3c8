"""Exim (and the MTAs that copy its wording: Mail.ru, 1&1): "The following address(es) failed:"."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import ADDR_RE, TextFormat, address_paragraphs

_GENERATED_RE = re.compile(r"\(generated from (" + ADDR_RE.pattern + r")\)", re.I)


def _paragraphs(section: str) -> list[tuple[str, str]]:
    """Exim's address lines; an alias it could not name shows as "(generated from a@b)"."""
    pairs = address_paragraphs(section)
    if pairs:
        return pairs
    return [(m.group(1), section[m.end() :].strip()) for m in _GENERATED_RE.finditer(section)][:50]


detect = TextFormat(
    "exim",
    sign=("created automatically by mail delivery software", "created automatically by the smtp relay",
          "address(es) failed", "has not yet been delivered to", "mail delivery failed"),
    start=re.compile(r"following\s+address(?:\(es\))?\s+failed:?|address(?:es)?\s+to\s+which\s+the\s+message\s+has\s+not\s+"
                     r"yet\s+been\s+delivered\s+(?:is|are):?", re.I),
    end=re.compile(r"^-{3,}\s*(?:This is a copy of|The header of the original|The body of the message)|"
                   r"^No action is required|^Delivery attempts will continue|^Reporting-MTA:", re.I | re.M),
    strategies=(_paragraphs,),
)
