"""The classifier against Sisimai 5.2's answers for the real bounces in ../shared/samples/sisimai/.

For every reference row of kind `bounce`, classify what Sisimai itself extracted (its Status
unless it invented one, its reply code, its Diagnostic-Code text, cut at 300 characters) the
way the parser will call us: the DSN's Action is passed along, and `delayed` makes the kind
`delay` (proxy.dsn.parser does the same). No SMTP command is passed: the parser does not pass
one today, so the stage must come from the text.

Scored as ../shared/tools/score-samples does: reason over reference rows whose reason is not
undefined/onhold; hard/soft over the same rows (`undetermined` from us is a disagreement).
Every disagreement must be listed in ARGUED with the reason we believe the mail over Sisimai
(or why the cut text cannot tell): an unlisted one fails, and so does a listed one that no
longer disagrees, so the list stays true.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.dsn.classify import classify
from proxy.model import Kind

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
EXPECTED = SAMPLES / "sisimai" / "expected.jsonl"

if not EXPECTED.is_file():
    pytest.skip(f"sample corpus not found at {EXPECTED} (../shared/samples is absent)", allow_module_level=True)

# Sisimai 5.2 still says `mesgtoobig` and `exceedlimit`; our vocabulary (DESIGN.md) names both
# `emailtoolarge` (what Sisimai itself later renamed them to). The scorer compares literally.
REASON_ALIASES = {"mesgtoobig": "emailtoolarge", "exceedlimit": "emailtoolarge"}
NO_HARDSOFT = {"undefined", "onhold", "feedback", "vacation", "delivered", ""}

TRUNCATED = "Sisimai's text is cut at 300 characters before the part that says why; the parser hands us the whole text"
NO_STAGE = ("Sisimai calls 'user unknown' `filtered` unless the status is X.1.1 or the SMTP command was RCPT; "
            "the text names neither stage nor a filter, and says the user is unknown: we follow the text")

# (file name, recipient) -> (our reason, our bounce_type, why we differ from Sisimai)
ARGUED: dict[tuple[str, str], tuple[str, str, str]] = {
    # --- hard/soft disagreements -------------------------------------------------------
    ("lhost-courier-02.eml", "kijitora@example.jp"): ("userunknown", "hard", NO_STAGE + " (the DSN's transcript says DATA; "
                                                      "classify(command='DATA') gives filtered)"),
    ("lhost-x1-02.eml", "kijitora@example.org"): ("userunknown", "hard", NO_STAGE),
    ("lhost-x2-01.eml", "kijitora@example.co.jp"): ("userunknown", "hard", "'This user doesn't have a ... account' is Yahoo's "
                                                    "no-such-user answer (Sisimai itself calls it userunknown for yahoo.com)"),
    ("lhost-x2-02.eml", "kijitora@example.com"): ("userunknown", "hard", "as lhost-x2-01: the text says the user does not exist"),
    ("lhost-x2-02.eml", "sabineko@example.com"): ("userunknown", "hard", "as lhost-x2-01: the text says the user does not exist"),
    ("lhost-zoho-03.eml", "shironeko@example.org"): ("userunknown", "hard", "'Invalid Address ... mailbox unavailable': " + NO_STAGE),
    ("rfc3464-35.eml", "mikeneko@neko.example.or.jp"): ("userunknown", "hard", "'550 user unknown' with Status 5.0.0: " + NO_STAGE),
    ("rfc3464-42.eml", "jane.doe@some-domain.net"): ("userunknown", "hard", "Gmail's 'the email account that you tried to reach does "
                                                "not exist' is Gmail's no-such-user reply: " + NO_STAGE),
    ("lhost-postfix-13.eml", "kijitora@example.jp"): ("filtered", "soft", "'550 5.2.1 ... User Unknown': the status says the "
                                                      "mailbox exists but is disabled (X.2.1) and the text names no stage; with "
                                                      "command='RCPT' (which the DSN's transcript has) we say userunknown"),
    ("lhost-postfix-80.eml", "xxxx@xxxx.com"): ("blocked", "soft", "'MailFrom domain is listed in Spamhaus' in reply to "
                                                      "MAIL FROM: the sender's domain is on a blocklist, the recipient is fine; "
                                                      "Sisimai's userunknown (from 5.1.0) would suppress a good address"),
    ("lhost-powermta-02.eml", "kijitora@example.com"): ("onhold", "soft", TRUNCATED + " ('dd This user doesn't have a "
                                                        "example.com account' -> userunknown, hard)"),
    ("lhost-trendmicro-03.eml", "kijitora@example.jp"): ("onhold", "soft", "'Unable to deliver message to <...> (and other "
                                                         "recipients in the same domain)' says nothing about the address"),
    # --- reason disagreements ----------------------------------------------------------
    ("lhost-exchange2007-03.eml", "kijitora@neko.example.com"): ("emailtoolarge", "soft", "Sisimai 5.2 `exceedlimit` (alias)"),
    ("lhost-sendmail-05.eml", "kijitora@example.org"): ("emailtoolarge", "soft", "Sisimai 5.2 `exceedlimit` (alias)"),
    ("lhost-einsundeins-02.eml", "kijitora@example.org"): ("emailtoolarge", "soft", "Sisimai 5.2 `mesgtoobig` (alias)"),
    ("lhost-exim-46.eml", "kijitora@example.com"): ("requireptr", "soft", "'Missing reverse DNS for <ip>': the receiver wants a PTR"),
    ("lhost-exim-56.eml", "kijitora@example.com"): ("speeding", "soft", "'You've reached your daily relay quota': a sending quota"),
    ("lhost-ezweb-01.eml", "this-message-rejected-by-the-domain-filter@ezweb.ne.jp"): (
        "onhold", "soft", "only the recipient's local part mentions a filter; the text says 'rejected by a remote mail server'"),
    ("lhost-gmail-03.eml", "kijitora@example.co.jp"): ("securityerror", "soft", TRUNCATED + " ('554 5.7.0 Header error' -> policyviolation)"),
    ("lhost-amavis-03.eml", "kijitora@example.com"): ("spamdetected", "soft", "amavis says the message 'was considered "
                                                      "unsolicited bulk e-mail (UBE)' and the DSN '554 5.7.0 Reject ... - SPAM'"),
    ("rfc3464-03.eml", "kijitora@example.com"): ("onhold", "soft", TRUNCATED + " ('rejected for policy reasons' -> policyviolation)"),
    ("lhost-mfilter-04.eml", "kijitora@libisismai.org"): ("networkerror", "soft", "'550 5.4.1 All recipient addresses rejected : Access "
                                                      "denied': Microsoft's 5.4.1 is a directory refusal, RFC 3463 X.4.1 a network "
                                                      "one; neither is Sisimai's 'rejected' (sender), so we keep the RFC meaning"),
    ("lhost-postfix-74.eml", "kijitora@y.example.ca"): ("badreputation", "soft", "Yahoo [TSS04] 'deferred due to unexpected volume or "
                                                     "user complaints' is about the sender's reputation"),
    ("rfc3464-35.eml", "kijitora@nyaan.example.com"): ("onhold", "soft", "'is not a registered gateway user' names no cause we know"),
    ("rhost-nttdocomo-03.eml", "azumakuniyuki@ntt.docomo.example.ne.jp"): ("filtered", "soft", "docomo's 'Unknown user' after end of "
                                                                           "DATA is its domain filter (the address passed RCPT)"),
    ("rhost-zoho-03.eml", "kijitora@zoho.example.com"): ("spamdetected", "soft", "'Email flagged as Spam'"),
    ("lhost-dragonfly-18.eml", "policyviolation@libsisimai.net"): ("policyviolation", "soft", "the text says 'Policy violation'"),
    ("rhost-microsoft-06.eml", "sabineko@example.onmicrosoft.com"): ("authfailure", "soft", "5.7.515: 'doesn't meet the required authentication "
                                                        "level' (SPF/DKIM/DMARC of the sending domain)"),
    ("lhost-yahoo-13.eml", "neko@sijo.example.jp"): ("expired", "soft", "'Unable to deliver message after multiple retries, giving up': "
                                                     "the retries ran out (Sisimai's own later lists say expired too)"),
    ("rhost-franceptt-08.eml", "xxxx@wanadoo.fr"): ("blocked", "soft", "Orange's 'Service refuse' is its refusal of the sending host"),
    ("lhost-googlegroups-03.eml", "libsisimai@googlegroups.com"): ("onhold", "soft", "Google Groups' refusal in Arabic; the "
                                                                   "English text and the groups.google.com/support link (in the Chinese -13 within 300 characters) match"),
    ("lhost-googlegroups-05.eml", "libsisimai@googlegroups.com"): ("onhold", "soft", "Google Groups' refusal in German (see -03)"),
    ("lhost-googlegroups-07.eml", "libsisimai@googlegroups.com"): ("onhold", "soft", "Google Groups' refusal in Spanish (see -03)"),
    ("lhost-googlegroups-08.eml", "libsisimai@googlegroups.com"): ("onhold", "soft", "Google Groups' refusal in Persian (see -03)"),
    ("lhost-googlegroups-09.eml", "libsisimai@googlegroups.com"): ("onhold", "soft", "Google Groups' refusal in French (see -03)"),
}


def _rows() -> list[dict]:
    return [r for r in map(json.loads, EXPECTED.read_text(encoding="utf-8").splitlines()) if r.get("kind") == "bounce"]


def _verdict(r: dict):
    status = None if r.get("status_is_pseudo") else (r.get("deliverystatus") or None)
    code = int(r["replycode"]) if str(r.get("replycode") or "").isdigit() else None
    action = r.get("action") or None
    kind = Kind.DELAY if action == "delayed" else Kind.BOUNCE
    return classify(status, code, r.get("diagnosticcode") or None, kind, action)


def _compare():
    reason_ok = reason_n = hs_ok = hs_n = 0
    disagreements = {}
    for r in _rows():
        v = _verdict(r)
        ref = r.get("reason") or ""
        key = (Path(r["file"]).name, r["recipient"])
        reason_agrees = v.reason == REASON_ALIASES.get(ref, ref)
        hs_agrees = True
        if ref not in NO_HARDSOFT:
            hs_n += 1
            hs_agrees = v.bounce_type != "undetermined" and (v.bounce_type == "hard") == bool(r.get("hardbounce"))
            hs_ok += hs_agrees
        if ref not in ("undefined", "onhold"):
            reason_n += 1
            reason_ok += reason_agrees
        if not (reason_agrees and hs_agrees) or ref in REASON_ALIASES:
            disagreements[key] = (v.reason, str(v.bounce_type), ref, bool(r.get("hardbounce")), v.evidence)
    return reason_ok / reason_n, hs_ok / hs_n, disagreements


def test_agreement_rates():
    reason_rate, hardsoft_rate, _ = _compare()
    print(f"sisimai agreement: reason {reason_rate:.3f}, hard/soft {hardsoft_rate:.3f}")
    assert reason_rate >= 0.85
    assert hardsoft_rate >= 0.95


def test_every_disagreement_is_argued():
    _, _, disagreements = _compare()
    unargued = {k: v for k, v in disagreements.items() if k not in ARGUED}
    assert not unargued, "disagreements with Sisimai nobody argued (ours, type, sisimai, hard, evidence):\n" + "\n".join(
        f"{k}: {v}" for k, v in sorted(unargued.items()))


def test_argued_disagreements_are_current():
    _, _, disagreements = _compare()
    stale = {k: a for k, a in ARGUED.items() if k not in disagreements or disagreements[k][:2] != a[:2]}
    assert not stale, "ARGUED rows that no longer match what classify says (update or remove them):\n" + "\n".join(
        f"{k}: argued {a[:2]}, now {disagreements.get(k, ('agrees',))[:2]}" for k, a in sorted(stale.items()))


def test_no_sender_side_reason_is_hard_on_the_corpus():
    from proxy.model import SENDER_SIDE_REASONS

    for r in _rows():
        v = _verdict(r)
        assert not (v.reason in SENDER_SIDE_REASONS and v.bounce_type == "hard"), (r["file"], v)
