"""Issue 11, extraction: who failed, at which SMTP stage, and what the report says about it.

Mails are built as their formats specify (RFC 3464 reports, RFC 5322 headers) or taken from the real
samples in ../shared; every one goes through the whole parser (`proxy.dsn.parse`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from proxy.dsn import parse
from proxy.dsn.detectors.base import address_paragraphs
from proxy.dsn.rows import report_rows

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "sisimai" / "maildir" / "bsd"


def _dsn(blocks: str, human: str = "This is the mail system at host mx.example.org.\n") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.org\r\nTo: app@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
        f"--B\r\nContent-Type: text/plain\r\n\r\n{human}\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n{blocks}\r\n"
        "--B--\r\n"
    ).encode()


def _by_recipient(raw: bytes) -> dict[str, dict]:
    return {r["recipient"]: r for r in report_rows("x", parse(raw)) if r["recipient"]}


def test_the_stage_stated_only_in_the_human_part_decides_per_recipient():
    human = ("<a@example.net>: host mx.example.net[192.0.2.1] said: 550 User unknown (in reply to RCPT TO command)\r\n\r\n"
             "<b@example.net>: host mx.example.net[192.0.2.1] said: 550 User unknown (in reply to end of DATA command)\r\n")
    blocks = ("Final-Recipient: rfc822; a@example.net\r\nAction: failed\r\nStatus: 5.0.0\r\n"
              "Diagnostic-Code: smtp; 550 User unknown\r\n\r\n"
              "Final-Recipient: rfc822; b@example.net\r\nAction: failed\r\nStatus: 5.0.0\r\n"
              "Diagnostic-Code: smtp; 550 User unknown\r\n")
    rows = _by_recipient(_dsn(blocks, human))
    assert (rows["a@example.net"]["reason"], rows["a@example.net"]["bounce_type"], rows["a@example.net"]["smtp_command"]) \
        == ("userunknown", "hard", "RCPT")
    assert (rows["b@example.net"]["reason"], rows["b@example.net"]["bounce_type"], rows["b@example.net"]["smtp_command"]) \
        == ("filtered", "soft", "DATA")
    assert "stage DATA: filtered" in rows["b@example.net"]["decided_by"]


def test_a_status_comment_is_the_text_of_a_recipient_nothing_else_explains():
    blocks = ("Final-Recipient: rfc822; c@cat.example.net\r\nAction: delayed\r\n"
              "Status: 4.0.0 (cat.example.net: host name lookup failure)\r\n")
    row = _by_recipient(_dsn(blocks))["c@cat.example.net"]
    assert row["diagnostic"] == "cat.example.net: host name lookup failure"
    assert (row["reason"], row["bounce_type"]) == ("networkerror", "soft")
    # a comment that only repeats the class is no text
    blocks = "Final-Recipient: rfc822; d@example.net\r\nAction: failed\r\nStatus: 5.0.0 (permanent failure)\r\n"
    assert "permanent failure" not in (_by_recipient(_dsn(blocks))["d@example.net"]["diagnostic"] or "")


def test_a_local_mailers_exit_code_keeps_its_type_and_meaning():
    blocks = ("Final-Recipient: RFC822; nyaan@example.jp\r\nX-Actual-Recipient: X-Unix; |/usr/local/bin/filter\r\n"
              "Action: delayed\r\nStatus: 4.5.0\r\nDiagnostic-Code: X-Unix; 71\r\n")
    row = _by_recipient(_dsn(blocks))["nyaan@example.jp"]
    assert row["diagnostic"] == "X-Unix; 71 (sysexits EX_OSERR operating system error)"
    assert (row["reason"], row["bounce_type"]) == ("mailererror", "soft")


def test_folded_address_headers_of_a_returned_message_name_no_failed_recipient():
    section = ("Delivery to the following recipient has been delayed:\n\n     kijitora@example.org\n\n"
               "Cc: one@example.net, two@example.net,\n    three@example.net,\n    four@example.net\n")
    assert [a for a, _r in address_paragraphs(section)] == ["kijitora@example.org"]


CHALLENGES = [
    ("From: Boxbe <notify@boxbe.com>\r\nTo: app@example.com\r\nSubject: Please confirm your email\r\n\r\n"
     "Hello, kijitora@example.org uses Boxbe to keep an inbox free of unwanted mail. Your message was placed in\r\n"
     "a Waiting List. To have your message delivered, please click the link below to be added to the Guest List.\r\n"),
    ("From: kijitora@example.org\r\nTo: app@example.com\r\nSubject: Re: hello\r\n\r\n"
     "I use a challenge-response system against spam. Please add me to your whitelist by replying to this\r\n"
     "message; I will receive your message once you have done so.\r\n"),
]


@pytest.mark.parametrize("raw", CHALLENGES)
def test_challenge_response_requests_are_no_bounce(raw):
    report = parse(raw.encode())
    assert str(report.kind) == "autoreply"
    assert all(r["kind"] != "bounce" for r in report_rows("x", report))


def test_a_bounce_that_mentions_a_whitelist_stays_a_bounce():
    human = "<a@example.net>: host mx.example.net said: 550 5.7.1 not on our whitelist (in reply to RCPT TO command)\r\n"
    blocks = ("Final-Recipient: rfc822; a@example.net\r\nAction: failed\r\nStatus: 5.7.1\r\n"
              "Diagnostic-Code: smtp; 550 5.7.1 not on our whitelist\r\n")
    assert str(parse(_dsn(blocks, human)).kind) == "bounce"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/samples is absent")
@pytest.mark.parametrize("name,recipient", [
    ("lhost-courier-02.eml", "kijitora@example.jp"),  # ">>> DATA / <<< 550 Unknown user" in the text part only
    ("rhost-nttdocomo-03.eml", "azumakuniyuki@ntt.docomo.example.ne.jp"),  # Postfix "(in reply to end of DATA command)"
])
def test_real_reports_refused_after_data(name, recipient):
    row = _by_recipient((SHARED / name).read_bytes())[recipient]
    assert (row["reason"], row["bounce_type"], row["smtp_command"]) == ("filtered", "soft", "DATA")


def test_each_recipient_of_an_exchange_notice_keeps_its_own_reply():
    """Office 365 in plain text, two recipients: a full mailbox must not inherit the missing one's 5.1.10."""
    raw = "\r\n".join([
        "From: Microsoft Outlook <postmaster@example.onmicrosoft.com>", "To: app@example.com",
        "Subject: Undeliverable: hello", "Content-Type: text/plain", "",
        "Delivery has failed to these recipients or groups:", "",
        "kijitora@example.onmicrosoft.com<mailto:kijitora@example.onmicrosoft.com>",
        "The email address you entered couldn't be found.", "",
        "sabatora@example.onmicrosoft.com<mailto:sabatora@example.onmicrosoft.com>",
        "The recipient's mailbox is full and can't accept messages now.", "",
        "Diagnostic information for administrators:", "", "Generating server: EX1.example.onmicrosoft.com", "",
        "kijitora@example.onmicrosoft.com",
        "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup'", "",
        "sabatora@example.onmicrosoft.com",
        "Remote Server returned '554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException'", "",
        "Original message headers:", "", "Received: from app.example.com", ""]).encode()
    rows = _by_recipient(raw)
    assert (rows["kijitora@example.onmicrosoft.com"]["reason"], rows["kijitora@example.onmicrosoft.com"]["bounce_type"]) \
        == ("userunknown", "hard")
    assert (rows["sabatora@example.onmicrosoft.com"]["reason"], rows["sabatora@example.onmicrosoft.com"]["bounce_type"],
            rows["sabatora@example.onmicrosoft.com"]["status"]) == ("mailboxfull", "soft", "5.2.2")


def test_postfix_server_transcript_gives_each_rcpt_its_own_reply_and_stage():
    raw = "\r\n".join([
        "From: MAILER-DAEMON@mx.example.org", "To: postmaster@mx.example.org",
        "Subject: Postfix SMTP server: errors from app.example.com[192.0.2.9]", "Content-Type: text/plain", "",
        "Transcript of session follows.", "",
        " Out: 220 mx.example.org ESMTP", " In:  EHLO app.example.com", " Out: 250 mx.example.org",
        " In:  MAIL FROM:<app@example.com>", " Out: 250 2.1.0 Ok",
        " In:  RCPT TO:<gone@example.org>", " Out: 550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown",
        " In:  RCPT TO:<here@example.org>", " Out: 250 2.1.5 Ok",
        " In:  DATA", " Out: 354 End data with <CR><LF>.<CR><LF>", " In:  .",
        " Out: 550 5.7.1 Message content rejected, UBE", ""]).encode()
    rows = _by_recipient(raw)
    assert (rows["gone@example.org"]["reason"], rows["gone@example.org"]["bounce_type"], rows["gone@example.org"]["smtp_command"]) \
        == ("userunknown", "hard", "RCPT")
    assert (rows["here@example.org"]["reason"], rows["here@example.org"]["bounce_type"], rows["here@example.org"]["smtp_command"]) \
        == ("spamdetected", "soft", "DATA")


def test_a_persons_reply_about_a_failure_is_no_bounce():
    raw = ("From: Jane Doe <jane@example.org>\r\nTo: app@example.com\r\nSubject: Re: delivery failed?\r\n"
           "Content-Type: text/plain\r\n\r\nHi, my mailbox was full last week, sorry. Please resend to\r\n"
           "jane.doe@example.org or to bob@example.net.\r\n\r\n> Your mail to jane@example.org bounced\r\n").encode()
    report = parse(raw)
    assert not [r for r in report_rows("x", report) if r["recipient"]], report
