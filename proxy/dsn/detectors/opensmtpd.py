"""OpenSMTPD: "This is the MAILER-DAEMON, please DO NOT REPLY ... following list of recipients:"."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import TextFormat

detect = TextFormat(
    "opensmtpd",
    sign=("this is the mailer-daemon, please do not reply",),
    start=re.compile(r"the following list of recipients:?", re.I),
    end=re.compile(r"^\s*Below is a copy of the original message", re.I | re.M),
)
