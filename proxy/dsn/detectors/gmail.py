"""Gmail's own text notices: "Delivery to the following recipient failed permanently:"."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import TextFormat

detect = TextFormat(
    "gmail",
    sign=("delivery to the following recipient", "your message wasn't delivered to", "message not delivered",
          "** address not found **"),
    start=re.compile(r"Delivery to the following recipients? (?:failed permanently|has been delayed|failed)|"
                     r"^\s*\*\* (?:Address not found|Message not delivered|Message blocked|Delivery incomplete) \*\*",
                     re.I | re.M),
    end=re.compile(r"^-{3,}\s*Original message|^-{3,}\s*Forwarded message", re.I | re.M),
)

# Google Groups refuses a post: the group is the recipient, named in the returned To.
detect_groups = TextFormat(
    "googlegroups",
    sign=("the group you tried to contact",),
    start=re.compile(r"the group you tried to contact", re.I),
    end=re.compile(r"^-{3,}\s*Original message", re.I | re.M),
    strategies=(lambda section: [],),
    original_to=True,
)
