"""Every real sample, parsed, against what the reference decoders say about it.

sisimai/expected.jsonl (Sisimai 5.2) and flufl/expected.json (flufl.bounce) are strong
references, not oracles. Where the mail itself says otherwise, the parser follows the mail
and the disagreement is written down below, each with its argument; nothing is skipped
silently and nothing is xfail.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.dsn import parse, report_rows
from proxy.dsn.parser import recipient_kind

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
if not (SAMPLES / "sisimai" / "expected.jsonl").exists() or not (SAMPLES / "flufl" / "expected.json").exists():
    pytest.skip(f"real bounce samples not found at {SAMPLES} (../shared/samples beside the repository)",
                allow_module_level=True)

# Sisimai's kinds -> ours. Sisimai reports a delay ("Action: delayed") as a bounce.
KINDS = {"bounce": {"bounce", "delay"}, "feedback": {"complaint"}, "vacation": {"autoreply"}, "delivered": {"delivered"}}


def _load_sisimai() -> dict[str, list[dict]]:
    files: dict[str, list[dict]] = {}
    for line in (SAMPLES / "sisimai" / "expected.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            files.setdefault(row["file"], []).append(row)
    return files


SISIMAI = _load_sisimai()
FLUFL = json.loads((SAMPLES / "flufl" / "expected.json").read_text())

# Where we read the mail differently from Sisimai: file -> what the mail says, and why.
# Keys: "recipients" (the set we report instead), "status_class" ({address: class}),
# "msgid" (the Message-ID we report instead), "why".
SISIMAI_DISAGREES: dict[str, dict] = {
    "maildir/bsd/arf-15.eml": {
        "recipients": set(),
        "why": "The ARF report has no Original-Rcpt-To and the complained message is addressed to "
               "'undisclosed'. Sisimai invents a placeholder address; there is no recipient to report.",
    },
    "maildir/bsd/arf-23.eml": {
        "recipients": {"kijitora@example.com"},
        "why": "Outlook.com's JMRP complaint names the recipient in X-HmXmrOriginalRecipient (and the "
               "returned mail's To); Sisimai reports a placeholder.",
    },
    "maildir/bsd/arf-24.eml": {
        "recipients": {"kijitora@example.com"},
        "why": "As arf-23: X-HmXmrOriginalRecipient: kijitora@example.com.",
    },
    "maildir/bsd/lhost-postfix-77.eml": {
        "recipients": {"neko@example.co.jp"},
        "why": "Original-Recipient: neko@example.co.jp (the address the sender used, also the returned "
               "mail's To) is preferred over Final-Recipient postmaster@libsisimai.org (where an alias led): "
               "correlation and suppression concern the address that was sent to.",
    },
    "maildir/bsd/lhost-postfix-78.eml": {
        "recipients": {"neko@example.co.jp"},
        "why": "As postfix-77: Original-Recipient preferred over Final-Recipient.",
    },
    "maildir/bsd/lhost-opensmtpd-06.eml": {
        "status_class": {"nekochan@libsisimai.org": "4"},
        "why": "Action: delayed, Status: 4.4.7 and the text says 'Please note that this is only a temporary "
               "failure report'; Sisimai makes it a permanent 5.x.",
    },
    "maildir/bsd/lhost-opensmtpd-15.eml": {
        "status_class": {"neko@nyaan.jp": "4"},
        "why": "As opensmtpd-06: a delay notice by its own words, Status 4.4.7.",
    },
    "maildir/bsd/lhost-opensmtpd-16.eml": {
        "status_class": {"systemfull@libsisimai.net": "4"},
        "why": "As opensmtpd-06: a delay notice by its own words, Status 4.4.7.",
    },
    "maildir/bsd/lhost-exim-07.eml": {
        "status_class": {"shiba@example.com": "5"},
        "why": "Exim says 'This is a permanent error. The following address(es) failed'; Sisimai's 4 is a "
               "pseudo code it derives from the reason (mailbox full).",
    },
    "maildir/bsd/lhost-exim-08.eml": {
        "status_class": {"kijitora@example.org": "5"},
        "why": "Exim's 'could not be delivered ... The following address(es) failed': a final failure (its "
               "retry time ran out); Sisimai's class 4 is a pseudo code from the reason (expired).",
    },
    "maildir/bsd/rfc3464-28.eml": {
        "recipients": {"kijitora@neko.example.jp"},
        "why": "The file is an mbox holding two mails (two 'From MAILER-DAEMON' lines); parse() reads one "
               "mail, as the bounce MX receives them, and the first reports kijitora. Sisimai reads both.",
    },
    "maildir/bsd/lhost-sendmail-56.eml": {
        "status_class": {"neko-nyaan@icloud.example.com": "5"},
        "why": "Action: failed, Status: 5.5.0, Diagnostic-Code 554 (every MX refused at connection); "
               "Sisimai's 4.7.0 is the reply to a QUIT in the transcript.",
    },
    "maildir/bsd/lhost-exchange2007-03.eml": {
        "msgid": "20100429233445.FF00FFEE0000@r2.example.org",
        "why": "The returned message is attached as message/rfc822 with Message-ID "
               "<20100429233445.FF00FFEE0000@...>; Sisimai takes the (differing, QP-damaged) copy quoted in "
               "the text part.",
    },
    "maildir/bsd/lhost-postfix-50.eml": {
        "msgid": "20150429233445.F0F6731CE2EC@relay-22.ocn.ad.jp",
        "why": "A bounce of a bounce: the returned message is itself a bounce with this Message-ID; Sisimai "
               "digs one level deeper to the first mail.",
    },
}

# Files Sisimai could not decode ("unknown"): what they say, read by hand.
SISIMAI_UNKNOWN: dict[str, dict] = {
    "maildir/bsd/lhost-mimecast-01.eml": {
        "recipients": {"sabineko@neko.ef.example.org"}, "kind": "bounce",
        "why": "Mimecast alert: 'could not be delivered: -- sabineko@neko.ef.example.org', 5.4.1 rejected.",
    },
    "maildir/bsd/lhost-postfix-79.eml": {
        "recipients": {"nekko@c.example.co.jp"}, "kind": "bounce",
        "why": "Original-Recipient nekko@c.example.co.jp; Final-Recipient kijitora@mailhub0 has no domain "
               "part worth the name; procmail could not write the mailbox.",
    },
    "maildir/bsd/lhost-x1-04.eml": {
        "recipients": {"kijitora-neko@neko.example.go.jp"}, "kind": "delay",
        "why": "'Warning--Could not send mail for past 8.5 hours': a delay warning, connection timed out.",
    },
    "maildir/bsd/rfc3464-37.eml": {
        "recipients": {"kijitora@neko.nyaan.example.com"}, "kind": "bounce",
        "why": "'Failed addresses follow: kijitora@neko.nyaan.example.com ... unknown host'.",
    },
}

# Where flufl.bounce's expectation is not what the mail says.
FLUFL_DISAGREES: dict[str, dict] = {
    "yale_01.txt": {
        "recipients": None,  # not asserted: the mail names no address at all
        "why": "The notice names the bare login 'userx'; flufl appends two guessed Yale domains. Without a "
               "domain there is no address to report, and the explanatory text's example address is no "
               "recipient either; nothing here is worth asserting.",
    },
    "sendmail_01.txt": {
        "recipients": {"zzzzz@shaft.coal.nl"},
        "why": "'zzzzz@shaft.coal.nl (expanded from: zzzzz@nfg.nl)': one failure, reported once, by the "
               "address sendmail names; flufl reports both names of the one mailbox.",
    },
    "simple_14.txt": {
        "recipients": {"usery@example.com"},
        "why": "'unable to deliver your message to usery@example.com ... 552 Quota violation for "
               "userx@example.com': the failed delivery was to usery; userx is the mailbox an alias led to.",
    },
}


def _class(status: str | None) -> str:
    return status[0] if status and status[:1] in "245" and status[1:2] == "." else ""


def _ours(path: Path) -> dict[str, dict]:
    """Every recipient the report names, with its own kind, status and the original's Message-ID."""
    report = parse(path.read_bytes())
    out = {}
    for rr in report.recipients:
        out[rr.recipient.lower()] = {"kind": str(recipient_kind(report, rr)), "status": rr.status,
                                     "original_message_id": report.original.message_id}
    rows = report_rows(str(path), report)
    reported = {r["recipient"].lower() for r in rows if r["recipient"]}
    # The rows name exactly the recipients that bounced, were delayed or complained.
    assert reported == {a for a, o in out.items() if o["kind"] in ("bounce", "delay", "complaint")}
    return out


@pytest.mark.parametrize("name", sorted(SISIMAI), ids=lambda n: n.rsplit("/", 1)[-1])
def test_sisimai_sample(name: str):
    expected = SISIMAI[name]
    ours = _ours(SAMPLES / "sisimai" / name)

    if expected[0]["recipient"] is None:  # Sisimai decoded nothing: our own reading, argued above
        mine = SISIMAI_UNKNOWN[name]
        assert set(ours) == mine["recipients"], mine["why"]
        assert {o["kind"] for o in ours.values()} == {mine["kind"]}
        return

    override = SISIMAI_DISAGREES.get(name, {})
    by_address = {r["recipient"].lower(): r for r in expected}
    want = override.get("recipients", set(by_address))
    assert set(ours) == want, override.get("why", f"recipients of {name}")

    for address, row in ours.items():
        ref = by_address.get(address)
        if ref is None:
            continue
        assert row["kind"] in KINDS[ref["kind"]], f"{address}: kind {row['kind']} for Sisimai's {ref['kind']}"
        if ref["deliverystatus"]:
            want_class = override.get("status_class", {}).get(address, ref["deliverystatus"][0])
            assert _class(row["status"]) == want_class, f"{address}: status {row['status']} vs {ref['deliverystatus']}"
        if ref["messageid"]:
            want_id = override.get("msgid", ref["messageid"])
            assert row["original_message_id"] == want_id, override.get("why", "original Message-ID")


def test_every_complaint_is_found():
    for name, expected in SISIMAI.items():
        if expected[0]["kind"] == "feedback":
            report = parse((SAMPLES / "sisimai" / name).read_bytes())
            assert report.kind == "complaint", name
            assert all(r.reason == "feedback" for r in report.recipients)


def test_autoreplies_are_never_bounces():
    for name, expected in SISIMAI.items():
        if expected[0]["kind"] == "vacation":
            report = parse((SAMPLES / "sisimai" / name).read_bytes())
            assert report.kind == "autoreply", name


def test_no_unexplained_disagreement_is_listed():
    """The override tables only name files that exist, each with its argument."""
    for table, known in ((SISIMAI_DISAGREES, SISIMAI), (SISIMAI_UNKNOWN, SISIMAI), (FLUFL_DISAGREES, FLUFL)):
        for name, entry in table.items():
            assert name in known, name
            assert len(entry["why"]) > 30, name


@pytest.mark.parametrize("name", sorted(FLUFL), ids=str)
def test_flufl_sample(name: str):
    expected = FLUFL[name]
    report = parse((SAMPLES / "flufl" / name).read_bytes())
    rows = report_rows(name, report)
    found = {r["recipient"].lower() for r in rows if r["recipient"] and r["kind"] in ("bounce", "delay")}
    if expected is None:  # flufl recognises no bounce here; neither do we
        assert not found, f"{name}: {found}"
        return
    override = FLUFL_DISAGREES.get(name)
    if override is not None:
        if override["recipients"] is not None:
            assert found == override["recipients"], override["why"]
        return
    assert found == {a.lower() for a in expected["recipients"]}
    assert (report.kind == "delay") == expected["temporary"], f"{name}: kind {report.kind}"


def test_flufl_bar():
    """The bar: at least 112 of the 115 files with an expectation match it exactly."""
    exact = 0
    total = 0
    for name, expected in FLUFL.items():
        if expected is None:
            continue
        total += 1
        rows = report_rows(name, parse((SAMPLES / "flufl" / name).read_bytes()))
        found = {r["recipient"].lower() for r in rows if r["recipient"] and r["kind"] in ("bounce", "delay")}
        exact += found == {a.lower() for a in expected["recipients"]}
    assert total == 115
    assert exact >= 112, f"{exact}/{total}"


def test_every_format_in_the_registry_has_a_real_sample():
    """DESIGN.md: adding a format is one module, one registry line and its real sample."""
    from proxy.dsn.detectors.registry import DETECTORS

    claimed = set()
    for path in sorted(SAMPLES.glob("sisimai/maildir/**/*.eml")) + sorted(SAMPLES.glob("flufl/*.txt")):
        claimed.add(parse(path.read_bytes()).format)
    unclaimed = [name for name, _ in DETECTORS if name not in claimed]
    assert not unclaimed, f"formats no real sample exercises: {unclaimed}"
