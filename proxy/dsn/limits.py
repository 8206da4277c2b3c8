"""How much of one mail a parse reads: the bounds on the work a hostile mail can ask for.

A bounce says what it has to say early; the rest is the returned mail. These limits keep one
parse within milliseconds on real mail and within a second on a bomb. None of them is silent:
each one a mail reaches is written on its Report as "what: N of M" (`Report.truncated`), and the
bounce MX records it on the inbound row. `[inbound] parse_*` in config.toml sets them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 4 * 1024 * 1024  # of the raw mail (a returned attachment beyond is not read)
    max_lines: int = 50_000  # the stdlib parser's cost grows with lines times nesting depth
    max_parts: int = 1_000  # MIME parts walked
    max_recipients: int = 10_000  # recipients kept from one report
    max_text_chars: int = 131_072  # of a plain-text bounce's notice, where formats look for addresses


DEFAULT_LIMITS = Limits()
