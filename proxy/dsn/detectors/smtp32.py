"""SMTP32 / IMail Server (Ipswitch): "reason: a@b" lines, then "Original message follows."."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import TextFormat, reason_first_lines

detect = TextFormat(
    "smtp32",
    sign=("original message follows.", "smtpd32", "ipswitch", "imail server"),
    end=re.compile(r"^Original message follows", re.I | re.M),
    strategies=(reason_first_lines,),
)
