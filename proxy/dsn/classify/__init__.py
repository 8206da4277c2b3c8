"""Status code + SMTP code + diagnostic text (+ the SMTP stage) -> (reason, bounce_type), with the why.

Pure: no I/O, stdlib `re` and `proxy.model` only. One classifier for the relay's synchronous replies
and the bounce MX's asynchronous DSNs alike. One job per module:

- `reasons`: the reason tables for texts, grouped by reason, each row naming where it comes from;
- `providers`: provider rules (Google, Microsoft, Yahoo, Apple, SES, carriers), kept apart;
- `status`: enhanced status codes (RFC 3463 / IANA registry) and reply codes, and reading them;
- `stage`: the SMTP stage a text states, and what it changes;
- `prefilter`: the one-pass index that tells which rows can match a text at all;
- `decide`: the decision as a short pipeline of named steps (see its docstring).
"""
from __future__ import annotations

from typing import Final

from proxy.dsn.classify.decide import (
    FIXED_REASON,
    HARD_REASONS,
    MAX_TEXT,
    STEPS,
    classify,
    classify_reply,
    explain,
    explain_steps,
    match_phrase,
    normalise,
    stage_near,
)
from proxy.dsn.classify.providers import PROVIDER_PHRASES
from proxy.dsn.classify.reasons import PHRASE_TABLES, WEAK_TABLES
from proxy.dsn.classify.status import (
    REPLY_CODES,
    STATUS_REASON,
    STATUS_SUBJECT,
    find_reply_code,
    find_status,
    parse_status,
)

PARSER_CLASSIFIER_VERSION: Final = "3"  # bump whenever a table or a rule changes

# (regex, example) views of the tables, for callers that only need the phrases and their examples.
PHRASES: Final = tuple((reason, tuple(row[:2] for row in rows)) for reason, rows in PHRASE_TABLES)
WEAK_PHRASES: Final = tuple((reason, tuple(row[:2] for row in rows)) for reason, rows in WEAK_TABLES)
PROVIDERS: Final = tuple((reason, tuple(row[:2] for row in rows)) for reason, rows in PROVIDER_PHRASES)

__all__ = [
    "FIXED_REASON", "HARD_REASONS", "MAX_TEXT", "PARSER_CLASSIFIER_VERSION", "PHRASES", "PHRASE_TABLES",
    "PROVIDERS", "PROVIDER_PHRASES", "REPLY_CODES", "STATUS_REASON", "STATUS_SUBJECT", "STEPS",
    "WEAK_PHRASES", "WEAK_TABLES", "classify", "classify_reply", "explain", "explain_steps",
    "find_reply_code", "find_status", "match_phrase", "normalise", "parse_status", "stage_near",
]
