"""Lotus Notes / Domino: "------- Failure Reasons --------", the reason above the address."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import TextFormat

detect = TextFormat(
    "domino",
    sign=("failure reasons", "lotus domino", "was not delivered to:"),
    start=re.compile(r"-{3,}\s*Failure Reasons\s*-{3,}|was not delivered to:", re.I),
    end=re.compile(r"^\s*-{3,}\s*Returned Message|^\s*-{3,}", re.I | re.M),
)
