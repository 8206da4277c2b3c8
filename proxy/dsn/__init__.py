"""PURE bounce parsing: bytes in, `proxy.model.Report` out. No I/O, no asyncio, no store.

`parse` never raises anything but `ParseError`, and that only for input that is no mail
at all (empty). Anything else, however broken, yields a Report (kind `unknown` at worst).
The heavy modules (the stdlib `email` package, the formats) load on the first parse, so
that importing this package costs nothing to the commands that never parse.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.model import Report

PARSER_VERSION = "1"

__all__ = ["PARSER_VERSION", "ParseError", "parse", "report_rows"]


class ParseError(ValueError):
    """The input is not a mail at all (empty, or not bytes)."""


def parse(raw: bytes, limits=None) -> Report:
    """Everything the mail says about delivery: kind, recipients, status, original headers.
    `limits` (proxy.dsn.limits.Limits) bounds the work; each limit reached is in `Report.truncated`."""
    global parse
    from proxy.dsn.limits import DEFAULT_LIMITS
    from proxy.dsn.parser import parse as _parse

    def parse(raw: bytes, limits=None) -> Report:  # loaded once: later calls go straight to the parser
        return _parse(raw, limits or DEFAULT_LIMITS)

    return parse(raw, limits)


def report_rows(file: str, report: Report) -> list[dict]:
    """The `bounceproxy parse --json` rows of one report (see proxy.dsn.rows)."""
    from proxy.dsn.rows import report_rows as _rows

    return _rows(file, report)
