"""The `bounceproxy parse --json` rows (proxy.dsn.report_rows) and the Report contract, on real mail."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.dsn import PARSER_VERSION, ParseError, parse, report_rows
from proxy.model import BounceType, Kind, StatusSource

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
SISIMAI = SAMPLES / "sisimai" / "maildir" / "bsd"
if not SISIMAI.is_dir():
    pytest.skip(f"real bounce samples not found at {SAMPLES}", allow_module_level=True)

KEYS = {"file", "recipient", "kind", "action", "status", "smtp_code", "bounce_type", "reason", "diagnostic",
        "remote_mta", "reporting_mta", "original_message_id", "format"}


def rows_of(name: str) -> list[dict]:
    return report_rows(name, parse((SISIMAI / name).read_bytes()))


def test_version_and_error_are_exported():
    assert isinstance(PARSER_VERSION, str) and PARSER_VERSION
    assert issubclass(ParseError, Exception)


def test_bounce_rows_carry_every_key_and_are_json():
    rows = rows_of("lhost-postfix-13.eml")
    assert len(rows) == 2
    for row in rows:
        assert KEYS <= set(row)
        json.dumps(row)
    first = rows[0]
    assert first["file"] == "lhost-postfix-13.eml"
    assert (first["recipient"], first["kind"], first["action"], first["status"], first["smtp_code"]) == (
        "kijitora@example.jp", "bounce", "failed", "5.2.1", 550)
    assert first["remote_mta"] == "mx.example.jp" and first["reporting_mta"] == "2jo.example.jp"
    assert first["original_message_id"] == "20150213024748.CEEDB20C16@2jo.example.jp"  # no angle brackets
    assert first["format"] == "rfc3464" and first["status_source"] == "dsn"
    assert first["bounce_type"] in {b.value for b in BounceType}


def test_complaint_row():
    rows = rows_of("arf-14.eml")
    assert [(r["recipient"], r["kind"], r["reason"], r["feedback_type"]) for r in rows] == [
        ("kijitora@y.example.com", "complaint", "feedback", "abuse")]
    assert rows[0]["original_message_id"].endswith("@email.amazonses.com")


def test_complaint_without_recipient_still_gives_a_row():
    rows = rows_of("arf-15.eml")
    assert [(r["recipient"], r["kind"]) for r in rows] == [(None, "complaint")]
    assert set(rows[0]) >= KEYS


def test_autoreply_gives_one_null_row_but_the_report_names_the_sender():
    """Nobody bounced: one row with the kind; the Report still says who is away."""
    report = parse((SISIMAI / "rfc3834-03.eml").read_bytes())
    assert [(r.recipient, r.reason) for r in report.recipients] == [("kijitora@apple.example.com", "vacation")]
    rows = report_rows("x", report)
    assert [(r["recipient"], r["kind"]) for r in rows] == [(None, "autoreply")]


def test_delivered_gives_one_null_row_but_the_report_names_the_recipient():
    report = parse((SISIMAI / "lhost-amazonses-12.eml").read_bytes())  # SES Delivery notification
    assert [(r.recipient, r.reason, r.status) for r in report.recipients] == [
        ("success@simulator.amazonses.com", "delivered", "2.6.0")]
    assert [(r["recipient"], r["kind"]) for r in report_rows("x", report)] == [(None, "delivered")]


def test_delay_row_is_soft_or_undetermined_never_hard():
    rows = rows_of("rfc3464-34.eml")
    assert [(r["kind"], r["action"]) for r in rows] == [("delay", "delayed")]
    assert rows[0]["bounce_type"] != "hard"


def test_text_bounce_status_comes_from_the_text():
    """qmail gives no Status field: the status is the one the remote server wrote, source "text"."""
    report = parse((SISIMAI / "lhost-qmail-17.eml").read_bytes())
    assert [(r.recipient, r.status, r.status_source, r.smtp_code) for r in report.recipients] == [
        ("userunknown@libsisimai.net", "5.1.1", StatusSource.TEXT, 550),
        ("mailboxfull@libsisimai.net", "5.2.2", StatusSource.TEXT, 552)]


def test_status_without_any_code_is_only_a_class():
    """A bounce that gives neither status nor reply code: an honest class, never an invented detail."""
    report = parse((SISIMAI / "lhost-dragonfly-17.eml").read_bytes())  # has "550 5.0.0": a real one
    assert report.recipients[0].status == "5.0.0"
    report = parse((SAMPLES / "flufl" / "simple_07.txt").read_bytes())  # "User's mailbox is full: <a@b>"
    (rr,) = report.recipients
    assert rr.status is None or rr.status.endswith(".0.0")
    assert rr.status_source in (None, StatusSource.ACTION, StatusSource.REPLY_CODE, StatusSource.TEXT)


def test_unknown_mail_gives_one_null_row():
    rows = report_rows("x", parse(b"From: someone@example.org\nSubject: hello\n\nJust a letter.\n"))
    assert [(r["recipient"], r["kind"]) for r in rows] == [(None, "unknown")]


def test_bounce_with_auto_submitted_is_still_a_bounce():
    """Postfix marks its bounces "Auto-Submitted: auto-replied": the DSN wins over the header."""
    raw = (SISIMAI / "lhost-postfix-50.eml").read_bytes()
    assert b"Auto-Submitted: auto-replied" in raw
    assert parse(raw).kind is Kind.BOUNCE


def test_rfc2047_subject_is_decoded():
    report = parse((SISIMAI / "rfc3834-06.eml").read_bytes())  # Subject: =?UTF-8?Q?AutoRespons?= :Nyaan?
    assert report.subject == "AutoRespons :Nyaan?"
    assert report.kind is Kind.AUTOREPLY


def test_ses_message_id_from_amazonses_message_id():
    report = parse((SISIMAI / "lhost-amazonses-01.eml").read_bytes())
    assert report.original.message_id.endswith("@email.amazonses.com")
    assert report.original.ses_message_id == report.original.message_id.split("@")[0]


def test_sieve_reject_is_a_bounce_and_a_read_receipt_is_not():
    """An MDN whose disposition is "deleted" is Sieve's reject (RFC 5429); "displayed" is a receipt."""
    raw = (SAMPLES / "flufl" / "simple_38.txt").read_bytes()
    report = parse(raw)
    assert (report.kind, report.format, [r.recipient for r in report.recipients]) == (
        Kind.BOUNCE, "mdn", ["userx@example.com"])
    assert report.original.message_id == "2ee7df1322121930966bcc2318379726@localhost"
    receipt = raw.replace(b"automatic-action/MDN-sent-automatically; deleted", b"manual-action/MDN-sent-manually; displayed")
    report = parse(receipt)
    assert (report.kind, report.recipients) == (Kind.UNKNOWN, [])
