"""RFC 3464 as real MTAs write it: every case is a real sample, as sent or transformed the way
mail gets damaged in transit (line endings converted, fields folded or re-cased, type prefixes
dropped). No bounce here is invented to fit the parser.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.dsn import parse, report_rows
from proxy.model import Kind

SISIMAI = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "sisimai" / "maildir" / "bsd"
if not SISIMAI.is_dir():
    pytest.skip(f"real bounce samples not found at {SISIMAI}", allow_module_level=True)


def sample(name: str) -> bytes:
    return (SISIMAI / name).read_bytes()


def summary(raw: bytes) -> list[tuple]:
    """What must not change under a harmless transformation."""
    report = parse(raw)
    return [(report.kind, r.recipient, r.action, r.status, r.smtp_code, r.diagnostic, r.remote_mta)
            for r in report.recipients] + [("original", report.original.message_id, report.reporting_mta)]


# A plain DSN with two recipients (Postfix), and one with no blank line between recipients (AOL).
TWO_RECIPIENTS = "lhost-postfix-13.eml"
NO_BLANK_LINES = "rhost-aol-03.eml"


def test_two_recipients_as_sent():
    report = parse(sample(TWO_RECIPIENTS))
    assert report.kind is Kind.BOUNCE and report.format == "rfc3464"
    assert [(r.recipient, r.status, r.smtp_code, r.remote_mta) for r in report.recipients] == [
        ("kijitora@example.jp", "5.2.1", 550, "mx.example.jp"),
        ("noraneko@example.jp", "5.2.2", 550, "mx.example.jp"),
    ]
    assert report.recipients[0].diagnostic == "550 5.2.1 <kijitora@example.jp>... User Unknown"
    assert report.reporting_mta == "2jo.example.jp"
    assert report.envelope_sender == "root@2jo.example.jp"  # X-Postfix-Sender
    assert report.queue_id == "CEEDB20C16"  # X-Postfix-Queue-ID: the upstream id when Postfix is the upstream
    assert report.arrival_date == "Fri, 13 Feb 2015 02:47:48 +0000 (UTC)"
    assert report.original.message_id == "20150213024748.CEEDB20C16@2jo.example.jp"


def test_recipients_without_blank_lines_between_them():
    """AOL writes per-message and per-recipient fields as one block."""
    report = parse(sample(NO_BLANK_LINES))
    assert [(r.recipient, r.status) for r in report.recipients] == [
        ("sabineko@example.jp", "5.2.2"), ("mikeneko@example.jp", "5.1.1")]
    assert report.reporting_mta == "omr-m09.mx.aol.com"


@pytest.mark.parametrize("ending", [b"\r\n", b"\r", b"\n"], ids=["CRLF", "CR", "LF"])
@pytest.mark.parametrize("name", [TWO_RECIPIENTS, NO_BLANK_LINES, "rfc3464-35.eml", "lhost-qmail-17.eml"])
def test_line_endings(name: str, ending: bytes):
    raw = sample(name)
    lf = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    assert summary(lf.replace(b"\n", ending)) == summary(lf)


def test_folded_fields():
    """Diagnostic-Code and Final-Recipient folded onto continuation lines read the same."""
    raw = sample(TWO_RECIPIENTS)
    folded = raw.replace(b"Diagnostic-Code: smtp; 550 5.2.1 <kijitora@example.jp>... User Unknown",
                         b"Diagnostic-Code: smtp;\n  550 5.2.1 <kijitora@example.jp>...\n\tUser Unknown")
    folded = folded.replace(b"Final-Recipient: rfc822; noraneko@example.jp", b"Final-Recipient: rfc822;\n noraneko@example.jp")
    assert folded != raw
    assert summary(folded) == summary(raw)


def test_folded_diagnostic_as_sent():
    """rfc3464-35 folds its Diagnostic-Code itself (and its MIME boundary is broken too)."""
    report = parse(sample("rfc3464-35.eml"))
    first = report.recipients[0]
    assert first.diagnostic == "550 'kijitora@nyaan.example.com' is not a registered gateway user"
    assert first.smtp_code == 550


def test_comments_in_status():
    """"Status: 4.0.0 (cat.example.net: host name lookup failure)": the code, not the comment."""
    report = parse(sample("rfc3464-35.eml"))
    delayed = {r.recipient: r for r in report.recipients}["sabatora@cat.example.net"]
    assert delayed.status == "4.0.0"
    assert delayed.action == "delayed"


def test_comment_added_to_status():
    raw = sample(TWO_RECIPIENTS).replace(b"Status: 5.2.2", b"Status: 5.2.2 (mailbox full)")
    assert [r.status for r in parse(raw).recipients] == ["5.2.1", "5.2.2"]


def test_missing_type_prefixes():
    """Final-Recipient and Original-Recipient without "rfc822;" (and with angle brackets)."""
    raw = sample(TWO_RECIPIENTS)
    bare = re.sub(rb"(?m)^(Final-Recipient|Original-Recipient): ?rfc822; ?(\S+)", rb"\1: <\2>", raw)
    bare = re.sub(rb"(?m)^Remote-MTA: dns; ", b"Remote-MTA: ", bare)
    assert bare != raw
    assert summary(bare) == summary(raw)


def test_missing_type_prefix_as_sent():
    """McAfee writes "Original-Recipient: <a@b>" and no Final-Recipient at all."""
    report = parse(sample("lhost-mcafee-02.eml"))
    assert [(r.recipient, r.smtp_code) for r in report.recipients] == [("kijitora@example.jp", 550)]


def test_field_names_in_any_case():
    raw = sample(TWO_RECIPIENTS)
    for name in (b"Final-Recipient", b"Original-Recipient", b"Action", b"Status", b"Diagnostic-Code", b"Remote-MTA"):
        raw = raw.replace(name + b":", name.upper() + b":")
    assert summary(raw) == summary(sample(TWO_RECIPIENTS))


def test_original_recipient_preferred_over_final():
    """Postfix expanded neko@ through an alias to postmaster@: the sender wrote to neko@."""
    report = parse(sample("lhost-postfix-77.eml"))
    assert [(r.recipient, r.final_recipient) for r in report.recipients] == [
        ("neko@example.co.jp", "postmaster@libsisimai.org")]


def test_final_recipient_when_original_is_missing():
    raw = re.sub(rb"(?m)^Original-Recipient:.*\n", b"", sample("lhost-postfix-77.eml"))
    assert [r.recipient for r in parse(raw).recipients] == ["postmaster@libsisimai.org"]


def test_mixed_actions_give_per_recipient_kinds():
    """Two failures and a delay in one report: a bounce, whose rows keep each recipient's own kind."""
    report = parse(sample("rfc3464-35.eml"))
    assert report.kind is Kind.BOUNCE
    rows = {r["recipient"]: r for r in report_rows("x", report)}
    assert {a: (r["action"], r["kind"]) for a, r in rows.items()} == {
        "kijitora@nyaan.example.com": ("failed", "bounce"),
        "sabatora@cat.example.net": ("delayed", "delay"),
        "mikeneko@neko.example.or.jp": ("failed", "bounce"),
    }
    assert rows["sabatora@cat.example.net"]["bounce_type"] != "hard"


def test_delay_only_report_is_a_delay():
    report = parse(sample("rfc3464-34.eml"))  # Postfix "Delayed Mail (still being retried)"
    assert report.kind is Kind.DELAY
    assert [(r.recipient, r.action, r.status) for r in report.recipients] == [("kijitora@example.com", "delayed", "4.4.1")]
    assert report.recipients[0].bounce_type != "hard"


@pytest.mark.parametrize("action", [b"delivered", b"relayed", b"expanded"])
def test_success_actions_make_a_delivered_report(action: bytes):
    raw = sample("rfc3464-28.eml")  # Postfix "Action: deliverable" (a success notice it was asked for)
    assert parse(raw).kind is Kind.DELIVERED
    raw = raw.replace(b"Action: deliverable", b"Action: " + action)
    report = parse(raw)
    assert report.kind is Kind.DELIVERED
    assert [(r.action, r.reason) for r in report.recipients] == [(action.decode(), "delivered")]
    assert [(r["recipient"], r["kind"]) for r in report_rows("x", report)] == [(None, "delivered")]


def test_action_missing_falls_back_to_status_class():
    raw = re.sub(rb"(?m)^Action:.*\n", b"", sample(TWO_RECIPIENTS))
    report = parse(raw)
    assert report.kind is Kind.BOUNCE
    assert [r.action for r in report.recipients] == ["failed", "failed"]


def test_global_delivery_status_part():
    """RFC 6533's message/global-delivery-status reads like message/delivery-status."""
    raw = sample(TWO_RECIPIENTS).replace(b"Content-Type: message/delivery-status",
                                         b"Content-Type: message/global-delivery-status")
    assert summary(raw) == summary(sample(TWO_RECIPIENTS))


def test_delivery_status_in_a_broken_multipart_is_read_from_the_text():
    """A boundary line indented by one space hides the status part: the fields are still read."""
    report = parse(sample("rfc3464-35.eml"))
    assert report.format == "rfc3464-text"
    assert len(report.recipients) == 3


def test_forwarded_report_is_read():
    """A gateway that wraps the report in message/rfc822 (adding a disclaimer) hides nothing."""
    flufl = SISIMAI.parents[2] / "flufl" / "dsn_15.txt"
    report = parse(flufl.read_bytes())
    assert [r.recipient for r in report.recipients] == ["userx@example.com"]


def test_status_in_diagnostic_beats_generic_status():
    """Status: 5.0.0 with "550 5.7.1 ..." in Diagnostic-Code: the remote server's own code wins."""
    report = parse(sample("lhost-messagingserver-03.eml"))
    assert {r.status for r in report.recipients} == {"5.7.1"}


def test_diagnostic_taken_from_the_text_when_the_field_is_missing():
    """OpenSMTPD leaves Diagnostic-Code out and writes the reply in its text part."""
    report = parse(sample("lhost-opensmtpd-17.eml"))
    assert [(r.recipient, r.smtp_code, r.status) for r in report.recipients] == [
        ("userunknown@libsisimai.net", 550, "5.1.1"), ("mailboxfull@libsisimai.net", 552, "5.2.2")]


def test_every_sample_reads_the_same_in_crlf_and_cr():
    """The corpus as a DOS (CRLF) and an old Mac (CR) mailbox would store it: nothing changes."""
    paths = sorted(SISIMAI.glob("*.eml")) + sorted((SISIMAI.parents[2] / "flufl").glob("*.txt"))
    for path in paths:
        lf = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        expected = summary(lf)
        for ending in (b"\r\n", b"\r"):
            assert summary(lf.replace(b"\n", ending)) == expected, f"{path.name} with {ending!r}"
