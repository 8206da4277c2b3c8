"""The decision: a short pipeline of named steps, each of which may decide and says why.

1. ``stage``: the SMTP stage, from the caller's ``command`` or the text ("in reply to end of DATA
   command", "after RCPT TO:", ">>> DATA" ...). It decides nothing alone; the steps after it let it
   correct a reason about the address (a refusal at MAIL is about the sender; a generic "user unknown"
   after DATA, for an address RCPT accepted, is a filter).
2. ``provider``: a provider's own documented wording or code (`providers`).
3. ``text``: the reason tables (`reasons`), first table in order at its leftmost match. An explicit
   text outranks a status code: gateways wrap every refusal in 5.0.0, 5.1.0 or 5.7.1.
4. ``status``: the enhanced status (RFC 3463 / IANA registry); a vague DSN status (X.0.0, X.1.0) lets a
   specific code quoted in the text speak.
5. ``weak text``: symptoms rather than causes ("connection timed out", "recipient address rejected").
6. ``stage alone``: a refusal at MAIL (rejected) or at HELO / the greeting (blocked) with no cause said.
7. ``reply code``: the few SMTP reply codes that mean one thing (521/556, 530/535, 500-504).
8. ``fallback``: ``expired`` for a delay; ``onhold`` for a failure whose cause is not said (never a
   hard bounce); ``undefined`` when there is no more than an Action.

``bounce_type`` is ``hard`` only for a reason that says the address itself is bad (HARD_REASONS) in a
permanent failure; everything else is ``soft`` (``undefined``: ``undetermined``). A sender-side
refusal, a full mailbox, a delay or a failure nobody understood never suppresses the address.

The status reported is honest: the DSN's own Status (``dsn``), else an enhanced code found in the text
(``text``), else only the class of the reply code (``reply_code``) or of the Action (``action``).
"""
from __future__ import annotations

import re
from typing import Callable, Final

from proxy.dsn.classify import prefilter, status as st
from proxy.dsn.classify.providers import PROVIDER_PHRASES, RECIPIENT_DOMAINS
from proxy.dsn.classify.reasons import PHRASE_TABLES, WEAK_TABLES
from proxy.dsn.classify.stage import COMMAND_STAGE, GENERIC_USERUNKNOWN, STAGE_ROWS, by_stage, transcript_stage
from proxy.model import BounceType, Kind, StatusSource, Verdict

MAX_TEXT: Final = 8192  # characters of a diagnostic that are read (bounds the time of one call)
HARD_REASONS: Final = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})
FIXED_REASON: Final = {Kind.COMPLAINT: "feedback", Kind.AUTOREPLY: "vacation", Kind.DELIVERED: "delivered"}
_BROKEN_RE: Final = re.compile(r"reset|closed|lost|dropped")  # a connection made, then broken: not a retry story
_TABLES: Final = {"provider": dict(PROVIDER_PHRASES), "text": dict(PHRASE_TABLES), "weak": dict(WEAK_TABLES)}


def normalise(text: str | None) -> str:
    """The form every pattern is written against: lower case, white space collapsed, and the reply
    code that prefixes each line of a multi-line reply ("550-5.7.1 ... 550 5.7.1 ...") kept only once,
    so that a phrase broken over two lines reads whole again."""
    if not text:
        return ""
    text = " ".join(text.replace("\u2019", "'").split()).lower()  # = \s+ -> " ", stripped
    m = st.MULTILINE_RE.search(text)
    if m:
        again = re.compile(rf" {m.group(1)}{m.group(2)}[ -](?:#?[245]\.\d{{1,3}}\.\d{{1,3}} )?")
        text = text[: m.end()] + again.sub(" ", text[m.end():])
    return text


def match_phrase(text: str, weak: bool = False, candidates: int | None = None, group: str | None = None):
    """First table (in order) of a group with a row matching normalised `text`: (reason, row, matched
    text). The group: "text" (default), "weak" (`weak=True`) or "provider"."""
    if candidates is None:
        candidates = prefilter.candidates(text)
    return prefilter.first_match(text, candidates, prefilter.GROUPS[group or ("weak" if weak else "text")])


def _rule(group: str, hit: tuple[str, int, str]) -> str:
    """'text: userunknown row 3 "user unknown" (source)' for the evidence and the stored event."""
    reason, row, matched = hit
    source = _TABLES[group][reason][row][2]
    shown = matched if len(matched) <= 60 else matched[:57] + "..."
    return f'{group}: {reason} row {row + 1} "{shown}" ({source})'


class _Case:
    """What the steps read, and what they have found so far."""

    __slots__ = ("kind", "action", "text", "candidates", "dsn_status", "reason_status", "out_status", "source",
                 "reply", "text_reply", "stage", "delayed", "why", "steps", "reason", "decided_by", "recipient")

    def __init__(self):
        self.why: list[str] = []
        self.steps: list[str] = []
        self.reason: str | None = None
        self.decided_by: str | None = None


def _step_stage(c: _Case, command: str | None) -> None:
    stage = COMMAND_STAGE.get((command or "").strip().upper())
    if stage:
        c.stage = stage
        c.steps.append(f"stage: {stage} (the command the reply answered)")
        c.why.append(f"command {command.strip().upper()}")
        return
    c.stage = None
    if c.text:
        found = transcript_stage(c.text)
        if found is None:
            sm = prefilter.first_match(c.text, c.candidates, prefilter.GROUPS["stage"])
            found = (STAGE_ROWS[sm[1]][1], sm[2]) if sm else None
        if found:
            c.stage = found[0]
            c.steps.append(f'stage: {c.stage} (text "{found[1]}")')
            c.why.append(f'stage {c.stage} ("{found[1]}")')
            return
    c.steps.append("stage: not stated")


def _phrase_step(group: str, weak: bool = False) -> Callable[[_Case], bool]:
    def step(c: _Case) -> bool:
        if not c.text:
            return False
        hit = prefilter.first_match(c.text, c.candidates, prefilter.GROUPS[group])
        if not hit:
            return False
        reason, rule = hit[0], _rule(group, hit)
        label = "weak table" if weak else ("provider table" if group == "provider" else "table")
        c.why.insert(0, f'text matched "{hit[2] if len(hit[2]) <= 60 else hit[2][:57] + "..."}" ({reason} {label}, row {hit[1] + 1})')
        if weak and reason == "networkerror" and (c.delayed or c.action == "failed") and not _BROKEN_RE.search(hit[2]):
            reason = "expired"
            c.why.append("a DSN whose only symptom is the connection: retried until it expired")
        generic = bool(GENERIC_USERUNKNOWN.search(hit[2])) if not weak else True
        c.reason = by_stage(reason, c.stage, c.reason_status, c.why, generic=generic)
        if c.reason != hit[0]:
            rule += f"; stage {c.stage}: {c.reason}" if c.reason != reason else f"; {c.reason}"
        c.decided_by = rule
        return True
    return step


def _step_status(c: _Case) -> bool:
    if c.delayed is False and c.stage in ("HELO", "CONN"):
        # a refusal before any recipient was named: a code about an address cannot be about this one
        c.reason = "blocked"
        c.why.append(f"refused at {c.stage}, before any recipient was named: blocked")
        c.decided_by = f"stage: refused at {c.stage}"
        return True
    if not c.reason_status:
        return False
    found = st.status_reason(c.reason_status)
    if not found:
        return False
    c.why.append(f"reason from status {c.reason_status}: {found[0]}")
    c.reason = by_stage(found[0], c.stage, c.reason_status, c.why)
    c.decided_by = f"status: {c.reason_status} {found[1]}" + (f"; stage {c.stage}: {c.reason}" if c.reason != found[0] else "")
    return True


def _step_stage_alone(c: _Case) -> bool:
    if c.stage == "MAIL":
        c.reason = "rejected"
        c.why.append("refused at MAIL FROM with no other cause: the sender was rejected")
        c.decided_by = "stage: refused at MAIL FROM"
        return True
    return False


def _step_reply_code(c: _Case) -> bool:
    code = c.reply or c.text_reply
    if code in st.REPLY_CODES:
        c.reason = st.REPLY_CODES[code][0]
        c.why.append(f"reply code {code}: {st.REPLY_CODES[code][1]}")
        c.decided_by = f"reply code: {code} {st.REPLY_CODES[code][1]}"
        return True
    return False


def _step_fallback(c: _Case) -> bool:
    if c.delayed:
        c.reason, said = "expired", "delayed and nothing more specific: expired"
    elif c.text:
        c.reason, said = "onhold", "text present but nothing recognised: onhold"
    elif c.source in (StatusSource.DSN, StatusSource.REPLY_CODE):
        c.reason, said = "onhold", "a failure that says nothing of its cause: onhold"
    else:
        c.reason, said = "undefined", "nothing to go on"
    c.why.append(said)
    c.decided_by = f"fallback: {said}"
    return True


_provider_text = _phrase_step("provider")


def _step_provider(c: _Case) -> bool:
    if _provider_text(c):
        return True
    domain = c.recipient.rpartition("@")[2].lower() if c.recipient else ""
    rule = RECIPIENT_DOMAINS.get(domain)
    if rule is None:
        return False
    c.reason = rule[0]
    c.why.append(f"a failure for an address at {domain}: {rule[0]}")
    c.decided_by = f"provider: {domain} recipients ({rule[1]})"
    return True


# The decision, in order. Each step returns True when it decided.
STEPS: Final[tuple[tuple[str, Callable[[_Case], bool]], ...]] = (
    ("provider", _step_provider),
    ("text", _phrase_step("text")),
    ("status", _step_status),
    ("weak text", _phrase_step("weak", weak=True)),
    ("stage alone", _step_stage_alone),
    ("reply code", _step_reply_code),
    ("fallback", _step_fallback),
)


# The lines of the steps that found nothing before step i, made once.
_NOTHING: Final = tuple(tuple(f"{name}: nothing" for name, _step in STEPS[:i]) for i in range(len(STEPS)))


def classify(
    status: str | None = None,
    smtp_code: int | None = None,
    diagnostic: str | None = None,
    kind: Kind = Kind.BOUNCE,
    action: str | None = None,
    *,
    command: str | None = None,
    recipient: str | None = None,
) -> Verdict:
    """Reason, hard/soft and the honest status of one failed (or delayed...) recipient.

    `status`: the DSN's Status field, or the enhanced code of an SMTP reply; `smtp_code`: the reply
    code; `diagnostic`: the text (Diagnostic-Code, the reply line, or what a non-standard bounce says);
    `action`: the DSN Action; `command`: the SMTP command the reply answered, when the caller knows it
    (MAIL, RCPT, DATA, EHLO...); `recipient`: the failed address (a few providers' refusals mean one
    thing for their addresses). The same inputs always give the same verdict: they are what an event
    stores, so that reclassifying reproduces it.
    """
    kind = Kind(kind) if not isinstance(kind, Kind) else kind
    c = _Case()
    c.kind = kind
    c.recipient = recipient
    c.action = (action or "").strip().lower() or None
    c.text = text = normalise(diagnostic[:MAX_TEXT] if diagnostic else diagnostic)
    why = c.why

    # --- the honest status --------------------------------------------------------------------
    c.dsn_status = dsn_status = st.parse_status(status)
    text_status = st.find_status(text) if text else None
    c.reply = reply = smtp_code if isinstance(smtp_code, int) and 200 <= smtp_code <= 599 else None
    c.text_reply = text_reply = st.find_reply_code(text) if (reply is None and text) else None
    if dsn_status:
        out_status, source = dsn_status, StatusSource.DSN
    elif text_status:
        out_status, source = text_status, StatusSource.TEXT
    elif reply or text_reply:
        out_status, source = f"{str(reply or text_reply)[0]}.0.0", StatusSource.REPLY_CODE
    elif c.action in ("failed", "delayed"):
        out_status, source = ("5.0.0" if c.action == "failed" else "4.0.0"), StatusSource.ACTION
    else:
        out_status, source = None, None
    c.out_status, c.source = out_status, source
    # The code that decides the reason: a generic DSN status lets a specific one in the text speak.
    reason_status = dsn_status or text_status
    if not dsn_status or st.is_vague(dsn_status):
        informing = next((m.group(0) for m in st.STATUS_RE.finditer(text)
                          if m.group(1) != "2" and not st.is_vague(m.group(0))), None)
        if informing and informing != dsn_status:
            reason_status = informing
    c.reason_status = reason_status
    if out_status:
        why.append(f"status {out_status} ({source}{st.meaning(out_status)})")
    if reason_status and reason_status != out_status:
        why.append(f"text code {reason_status} informs the reason{st.meaning(reason_status, ': ')}")

    # --- fixed kinds --------------------------------------------------------------------------
    fixed = FIXED_REASON.get(kind)
    if fixed is None and out_status and out_status.startswith("2") and kind is Kind.BOUNCE and c.action not in ("failed", "delayed"):
        fixed = "delivered"
    if fixed:
        why.insert(0, f"kind {kind}: reason {fixed}, no hard/soft")
        return Verdict(fixed, BounceType.UNDETERMINED, out_status, source, "; ".join(why),
                       decided_by=f"kind: {kind}", steps=(f"kind: {kind} -> {fixed}",))

    # --- reason: the steps ----------------------------------------------------------------------
    c.candidates = prefilter.candidates(text) if text else 0  # what may match, for every table
    c.delayed = kind is Kind.DELAY or c.action == "delayed"
    _step_stage(c, command)
    for i, (name, step) in enumerate(STEPS):
        if step(c):
            c.steps += _NOTHING[i]
            c.steps.append(f"{name}: {c.reason} <- {c.decided_by.split(': ', 1)[1]}")
            break
    reason = c.reason

    # --- hard / soft --------------------------------------------------------------------------
    klass = _failure_class(dsn_status, reply, text_status, text_reply, c.action)
    if reason == "undefined" or kind is Kind.UNKNOWN:
        bounce_type = BounceType.UNDETERMINED
    elif c.delayed:
        bounce_type = BounceType.SOFT
        why.append("soft: a delay is not final")
    elif reason in HARD_REASONS and klass == "5" and c.decided_by.startswith("weak") and c.stage != "RCPT" \
            and (c.reason_status or "")[2:4] != "1.":
        # A symptom ("recipient address rejected" and no cause) is no proof against the address.
        bounce_type = BounceType.SOFT
        why.append("soft: only a symptom, neither refused at RCPT nor an X.1 status")
    elif reason in HARD_REASONS and klass == "5":
        bounce_type = BounceType.HARD
        why.append("hard: the address itself is bad, permanently")
    else:
        bounce_type = BounceType.SOFT
        if reason in HARD_REASONS:
            why.append("soft: not a permanent failure" if klass == "4" else "soft: permanence not shown")
    c.steps.append(f"hard/soft: {bounce_type}")
    return Verdict(reason, bounce_type, out_status, source, "; ".join(why),
                   decided_by=c.decided_by, stage=c.stage, steps=tuple(c.steps))


def _failure_class(dsn_status, reply, text_status, text_reply, action) -> str | None:
    for value in (dsn_status, reply, text_status, text_reply):
        if value:
            return str(value)[0]
    return {"failed": "5", "delayed": "4"}.get(action or "")


def classify_reply(line: str, kind: Kind = Kind.BOUNCE, *, command: str | None = None) -> Verdict:
    """Classify one raw SMTP reply or diagnostic line, e.g.
    ``550 5.1.1 <a@b>: Recipient address rejected: User unknown`` or ``smtp; 550-5.1.1 ...``.

    The leading reply code and the reply's enhanced code are taken from the line (the enhanced code
    then counts as the reply's own status, as the relay's replies do)."""
    text = (line or "").strip()
    code = st.find_reply_code(text)
    status = None
    m = re.match(r"^\s*(?:[a-z][\w.-]{0,20};\s*)?[#(\[]?[245][0-5]\d[ \-:)\]]+#?([245]\.[0-7]\.\d{1,3})(?![\d.])", text, re.I)
    if m:
        status = m.group(1)
    return classify(status, code, text, kind, command=command)


# Words one of which every stage phrase of STAGE_ROWS and every transcript contains.
_STAGE_WORDS: Final = ("in reply to", "after ", "did not like", "does not like", ">>>", "sent: rcpt", "rcpt to generated",
                       "[rcpt_to]", "data]", "[mail_from]", "[ehlo]", "[helo]", "was rejected", "refused to talk",
                       "failed after i sent")


def stage_near(text: str, address: str, others=(), limit: int = 2000) -> tuple[str, str] | None:
    """(stage, what was read) that a report's human-readable `text` states for `address`: read in the
    text after each place that names it, up to the next other recipient (or `limit` characters).
    Postfix writes "(in reply to end of DATA command)" there and Sendmail, Courier and gateways a
    transcript ("... while talking to mx: >>> DATA <<< 550 ..."), when the DSN's fields say neither."""
    if not text or not address:
        return None
    lower = text[:65536].lower()
    if not any(map(lower.__contains__, _STAGE_WORDS)):
        return None  # (most texts: one pass per word, no window read)
    address = address.lower()
    others = [o.lower() for o in others if o and o.lower() != address]
    at = lower.find(address)
    tries = 0
    while at >= 0 and tries < 8:
        tries += 1
        end = min(len(lower), at + limit)
        for other in others:
            j = lower.find(other, at + len(address), end)
            if j >= 0:
                end = j
        window = normalise(lower[at:end])
        found = transcript_stage(window)
        if found is None:
            sm = prefilter.first_match(window, prefilter.candidates(window), prefilter.GROUPS["stage"])
            found = (STAGE_ROWS[sm[1]][1], sm[2]) if sm else None
        if found:
            return found
        at = lower.find(address, at + len(address))
    return None


def explain(verdict: Verdict) -> str:
    """One line for an operator: reason, bounce type, status and why."""
    status = f"{verdict.status} ({verdict.status_source})" if verdict.status else "no status"
    return f"{verdict.reason} / {verdict.bounce_type} / {status} -- {verdict.evidence}"


def explain_steps(verdict: Verdict) -> str:
    """The steps taken, one a line, and what decided: for `bounceproxy classify --explain`."""
    lines = [f"{verdict.reason} / {verdict.bounce_type} / {verdict.status or 'no status'} ({verdict.status_source or '-'})"]
    lines += [f"  {i}. {s}" for i, s in enumerate(verdict.steps, 1)]
    lines.append(f"  decided by: {verdict.decided_by or '-'}")
    return "\n".join(lines)
