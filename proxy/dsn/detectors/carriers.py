"""Mobile and webmail providers whose notices name nobody but the returned message's To.

Verizon's MMS gateway ("Message could not be delivered to mobile") and the like.
"""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import TextFormat

detect_verizon = TextFormat(
    "verizon",
    sign=("message could not be delivered to mobile", "mmsc ndr"),
    end=re.compile(r"^Original Message:", re.I | re.M),
    strategies=(lambda section: [],),
    original_to=True,
)
