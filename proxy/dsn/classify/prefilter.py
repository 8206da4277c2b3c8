"""The prefilter: which table rows can match a text at all, found in one pass over it.

Every row is split into its top-level alternatives and, for each, the strings one of which every
match must contain are read from the pattern text (by a small tokenizer, not the stdlib's regex
parser: this runs at import, on every start-up of a one-shot command). A text is looked at once: its
4-character substrings, against an index of those strings, name the few alternatives that can match
anywhere in it; only those whose strings are all there are searched, a plain string with str.find, a
pattern compiled on first use. The shortcut never changes an answer (tests compare it with a naive
search of the tables).
"""
from __future__ import annotations

import re
from typing import Final

from proxy.dsn.classify.providers import PROVIDER_PHRASES
from proxy.dsn.classify.reasons import PHRASE_TABLES, WEAK_TABLES, Row
from proxy.dsn.classify.stage import STAGE_ROWS
from proxy.model import REASONS

_TOKEN_RE: Final = re.compile(
    r"\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|\(\?<?[=!]|\(\?:|[()|]|[?*+]\??|\{\d*(?:,\d*)?\}\??|[^\\\[\]()|?*+{.^$]+|.", re.S
)
_SPECIAL: Final = frozenset("\\[(|)?*+{.^$")  # the characters that open a token other than plain text
_KEY_LEN: Final = 4  # the index holds 4-character substrings of the necessary strings
_KEY_STEP: Final = 2  # a text is read at every other position (see _build_index)


def _atoms(tokens: list[str], i: int = 0) -> tuple[list[list[tuple]], int]:
    """The branches of a (sub)pattern, from tokens[i] to the ")" that closes it, as atoms:
    ("str", text), ("set", chars), ("any",), ("zero",), ("group", branches), ("rep", atom, least)."""
    branches: list[list[tuple]] = []
    seq: list[tuple] = []
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        first = tok[0]
        if tok == ")":
            break
        if tok == "|":
            branches.append(seq)
            seq = []
        elif first in "?*+" or (first == "{" and len(tok) > 1):
            least = 1 if first == "+" else int(tok[1:].split(",")[0].rstrip("}?") or 0) if first == "{" else 0
            atom = seq.pop()
            if atom[0] == "str" and len(atom[1]) > 1:  # a quantifier binds the last character only
                seq.append(("str", atom[1][:-1]))
                atom = ("str", atom[1][-1])
            seq.append(("rep", atom, least))
        elif tok in ("(?:", "("):
            sub, i = _atoms(tokens, i)
            seq.append(("group", sub))
        elif tok.startswith("(?"):  # a look-around: zero width, what it looks at is no part of the match
            _sub, i = _atoms(tokens, i)
            seq.append(("zero",))
        elif first == "\\":
            escaped = tok[1]
            if escaped in "bBAZ":
                seq.append(("zero",))
            elif escaped.isalnum():  # \d \s \w ..., or an escape this reader does not know: not a literal
                seq.append(("any",))
            else:
                seq.append(("str", escaped))
        elif first == "[":
            chars = _class_chars(tok)
            seq.append(("set", chars) if chars else ("any",))
        elif tok in ("^", "$"):
            seq.append(("zero",))
        elif tok == ".":
            seq.append(("any",))
        else:
            seq.append(("str", tok))
    branches.append(seq)
    return branches, i


def _class_chars(tok: str) -> frozenset[str] | None:
    """The characters of a class that only lists characters ("[- ]", "[#(\\[]"); else None."""
    body, chars, i = tok[1:-1], set(), 0
    if body.startswith("^"):
        return None
    while i < len(body):
        c = body[i]
        if c == "\\":
            if body[i + 1].isalnum():
                return None
            chars.add(body[i + 1])
            i += 2
            continue
        if c == "-" and 0 < i < len(body) - 1:
            return None  # a range
        chars.add(c)
        i += 1
    return frozenset(chars)


def _needed(branches: list[list[tuple]]) -> frozenset[str] | None:
    """Strings one of which every match of these branches contains (None: no such set found).

    Used only to skip what cannot match: what it cannot analyse gets None and is always
    searched, so the shortcut never changes an answer."""
    found = [_best(_required(seq)) for seq in branches]
    return None if any(f is None for f in found) else frozenset().union(*found)


def _best(sets: list[frozenset[str]]) -> frozenset[str] | None:
    """The most telling of several such sets: the longest strings, then the fewest."""
    return max(sets, key=lambda s: (min(map(len, s)), -len(s))) if sets else None


def _required(seq: list[tuple]) -> list[frozenset[str]]:
    """Sets of strings that every match of this sequence contains one of, each set on its own."""
    found: list[frozenset[str]] = []
    run = {""}  # the literal text that must appear here, in each of its possible spellings
    for atom in seq:
        kind = atom[0]
        if kind == "zero":
            continue  # zero width: the text on either side is contiguous
        if kind == "str":
            run = {r + atom[1] for r in run}
            continue
        if kind == "set" and len(run) * len(atom[1]) <= 16:
            run = {r + c for r in run for c in atom[1]}
            continue
        if min(map(len, run)) > 0:  # anything else ends the run of literal text
            found.append(frozenset(run))
        run = {""}
        if kind == "rep":
            if atom[2] < 1:
                continue  # optional: requires nothing
            atom = atom[1]
            kind = atom[0]
        sub = (_needed(atom[1]) if kind == "group" else frozenset((atom[1],)) if kind == "str"
               else atom[1] if kind == "set" else None)
        if sub:
            found.append(sub)
    if min(map(len, run)) > 0:
        found.append(frozenset(run))
    return found


def _split_top(tokens: list[str]) -> list[list[str]]:
    """The top-level alternatives of a tokenized pattern."""
    parts: list[list[str]] = [[]]
    depth = 0
    for tok in tokens:
        if tok == "|" and depth == 0:
            parts.append([])
            continue
        if tok[0] == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        parts[-1].append(tok)
    return parts


class _Alt:
    """One top-level alternative of a row. `triggers`: strings one of which each of its matches
    contains (None: not known, always searched), the ones the index knows it by; `requires`: more
    such sets, each also needed; `needs`: all of them, checked before it is searched. A plain
    string (half of them) is looked for with str.find; a pattern is compiled on first use."""

    __slots__ = ("pattern", "table", "reason", "row", "triggers", "requires", "needs", "literal", "_compiled")

    def __init__(self, tokens: list[str], table: int, reason: str, row: int):
        self.pattern, self.table, self.reason, self.row = "".join(tokens), table, reason, row
        self._compiled: re.Pattern[str] | None = None
        if all(tok[0] not in _SPECIAL or (tok[0] == "\\" and not tok[1].isalnum()) for tok in tokens):
            # A plain string: its only need is itself, which finding it checks.
            self.literal = "".join(tok if tok[0] != "\\" else tok[1] for tok in tokens)
            self.triggers, self.requires, self.needs = (self.literal,), (), ()
            return
        self.literal = None
        branches = _atoms(tokens)[0]
        sets = _required(branches[0]) if len(branches) == 1 else [s for s in (_needed(branches),) if s]
        best = _best(sets)
        self.triggers = tuple(sorted(best)) if best else None
        # (short strings are in nearly every text: checking them would cost more than it saves)
        self.requires = tuple(tuple(sorted(s)) for s in sets if s is not best and min(map(len, s)) >= 3)
        self.needs = ((self.triggers,) if self.triggers else ()) + self.requires

    def find(self, text: str) -> tuple[int, str] | None:
        """(start, matched text) of its leftmost match in `text`, or None."""
        if self.literal is not None:
            at = text.find(self.literal)
            return (at, self.literal) if at >= 0 else None
        if self._compiled is None:
            self._compiled = re.compile(self.pattern)
        m = self._compiled.search(text)
        return (m.start(), m.group(0)) if m is not None else None


_ALTS: list[_Alt] = []  # every alternative of every table, in table then row order: an id is an index here


def _tables(tables: tuple[tuple[str, tuple[Row, ...]], ...]):
    """(reason, alternatives, rows, triggers) per table, and the range of its tables' ids in _ALTS.
    `triggers`: strings one of which every match in the table contains (None: not known)."""
    out = []
    first = len(_ALTS)
    for reason, rows in tables:
        table = _ALTS[-1].table + 1 if _ALTS else 0
        alts = tuple(
            _Alt(tokens, table, reason, row)
            for row, (rx, *_rest) in enumerate(rows) for tokens in _split_top(_TOKEN_RE.findall(rx))
        )
        _ALTS.extend(alts)
        known = all(a.triggers is not None for a in alts)
        triggers = tuple(sorted({t for a in alts for t in a.triggers})) if known else None
        out.append((reason, alts, rows, triggers))
    return tuple(out), range(first, len(_ALTS))


for _reason, _rows in PROVIDER_PHRASES + PHRASE_TABLES + WEAK_TABLES:
    if _reason not in REASONS:
        raise ValueError(f"{_reason!r} is not in proxy.model.REASONS")
_PROVIDER, _PROVIDER_IDS = _tables(PROVIDER_PHRASES)
_PHRASES, _PHRASE_IDS = _tables(PHRASE_TABLES)
_WEAK, _WEAK_IDS = _tables(WEAK_TABLES)
_STAGE, _STAGE_IDS = _tables((("stage", STAGE_ROWS),))


def _build_index() -> tuple[dict[str, int], int, tuple[str, ...]]:
    """key -> the alternatives with a necessary string holding that key (one bit per alternative,
    bit i for _ALTS[i]); the alternatives without any; and the keys to look for whole.

    A text is read in 4-character substrings at every other position only (half the work), so
    a string is indexed by two consecutive substrings of its own, one of which that reading
    meets wherever the string sits: the pair that the fewest strings share (a rare key names
    few alternatives for nothing). A string too short for two is its own key, looked for whole.
    """
    strings = {t for alt in _ALTS for t in alt.triggers or ()}
    grams = {t: [t[i : i + _KEY_LEN] for i in range(len(t) - _KEY_LEN + 1)] for t in strings}
    shared: dict[str, int] = {}
    get = shared.get
    for keys in grams.values():
        for gram in set(keys):
            shared[gram] = get(gram, 0) + 1
    keys_of: dict[str, tuple[str, ...]] = {}
    whole = []
    for t, keys in grams.items():
        if len(keys) < _KEY_STEP:
            keys_of[t] = (t,)
            whole.append(t)
            continue
        costs = list(map(shared.__getitem__, keys))
        pairs = list(map(int.__add__, costs, costs[1:]))
        at = pairs.index(min(pairs))
        keys_of[t] = (keys[at], keys[at + 1])
    by_key: dict[str, int] = {}
    always = 0
    for i, alt in enumerate(_ALTS):
        if alt.triggers is None:
            always |= 1 << i
        for key in {key for t in alt.triggers or () for key in keys_of[t]}:
            by_key[key] = by_key.get(key, 0) | 1 << i
    return by_key, always, tuple(sorted(whole))


_BY_KEY, _ALWAYS, _WHOLE_KEYS = _build_index()
KEYS: Final = frozenset(key for key in _BY_KEY if len(key) == _KEY_LEN)
_PHRASE_BITS: Final = (1 << _PHRASE_IDS.stop) - (1 << _PHRASE_IDS.start)
_WEAK_BITS: Final = (1 << _WEAK_IDS.stop) - (1 << _WEAK_IDS.start)
_STAGE_BITS: Final = (1 << _STAGE_IDS.stop) - (1 << _STAGE_IDS.start)
_PROVIDER_BITS: Final = (1 << _PROVIDER_IDS.stop) - (1 << _PROVIDER_IDS.start)
# The groups of tables a step may search: bits of their alternatives.
GROUPS: Final = {"provider": _PROVIDER_BITS, "text": _PHRASE_BITS, "weak": _WEAK_BITS, "stage": _STAGE_BITS}


def candidates(text: str) -> int:
    """The alternatives that may match somewhere in `text` (bit i for _ALTS[i]): those with a
    necessary string whose key occurs in it. One pass over the text serves every table."""
    found = _ALWAYS
    for key in KEYS.intersection([text[i : i + _KEY_LEN] for i in range(0, len(text) - _KEY_LEN + 1, _KEY_STEP)]):
        found |= _BY_KEY[key]
    for key in filter(text.__contains__, _WHOLE_KEYS):
        found |= _BY_KEY[key]
    return found


def first_match(text: str, candidates: int, tables: int) -> tuple[str, int, str] | None:
    """(reason, row, matched text) of the first table among `tables` (bits of their alternatives)
    that matches `text`: at its leftmost match, the first row (alternative) in order, as one
    alternation of the table would."""
    contains = text.__contains__
    best = None
    table = -1
    bits = candidates & tables
    while bits:
        low = bits & -bits  # the lowest bit: alternatives are tried in order
        bits ^= low
        alt = _ALTS[low.bit_length() - 1]
        if alt.table != table:
            if best is not None:
                break  # an earlier table matched
            table = alt.table
        for strings in alt.needs:
            if not any(map(contains, strings)):
                break  # a string it needs is missing: it cannot match
        else:
            found = alt.find(text)
            if found is not None and (best is None or found[0] < best[0][0]):
                best = (found, alt)
    if best is None:
        return None
    (_start, matched), alt = best
    return alt.reason, alt.row, matched

