"""Japanese carriers and filters: au/EZweb/KDDI, m-FILTER.

Their notices name the address on a line of its own ("<a@b>") under a sentence in
English or Japanese; the reason, when there is one, is the rest of the notice.
"""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import TextFormat, address_paragraphs, lead_sentences

_END = re.compile(r"^-{3,}|^\s*-{2,}\s*original|^Original message", re.I | re.M)

_AU_DOMAINS = ("ezweb.ne.jp", "dion.ne.jp", "au.com", "kddi.com", "auone-net.jp")


class _Au(TextFormat):
    """Only notices the carrier itself sends: its postmaster or no-reply address."""

    def __call__(self, mail):
        sender = mail.from_address
        if not sender.endswith(_AU_DOMAINS) or not sender.startswith(("postmaster@", "mailer-daemon@", "no-reply@")):
            return None
        return super().__call__(mail)


detect_au = _Au("au", sign=("",), end=_END, strategies=(lead_sentences, address_paragraphs))
detect_mfilter = TextFormat(
    "mfilter",
    sign=("m-filter",),
    start=re.compile(r"以下のメールアドレスへの送信に失敗しました。?|failed to send to the following address", re.I),
    end=re.compile(r"^-{3,}\s*original|^-{3,}\s*SMTP command", re.I | re.M),
)
