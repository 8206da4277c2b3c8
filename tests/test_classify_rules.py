"""Issue 11: rules for phrase families and formats, each line in the wording its source documents.

The sources: RFC 3463 / RFC 5248, Exim's and Postfix's messages, sysexits.h, GNU Mailutils, Gmail's and
Microsoft 365's published SMTP error references, SonicWall/MDaemon/IMail/McAfee refusal texts, and the
phrase families issue 11 names (its held-out mails themselves stay unseen). Each case asserts the
reason and hard/soft; where a mistake is possible, the safe direction (soft) is what is asserted.
"""
from __future__ import annotations

import pytest

from proxy.dsn.classify import classify, classify_reply, explain, explain_steps, stage_near
from proxy.dsn.classify.stage import transcript_stage
from proxy.model import BounceType, Kind

HARD, SOFT = BounceType.HARD, BounceType.SOFT

FAMILIES = [
    # dead addresses, whatever the status says
    ("550 Rcpt <neko@example.jp> does not exist", "userunknown", HARD),
    ("550 User [neko@example.jp] does not exist", "userunknown", HARD),
    ("550 5.1.1 Recipient dosn't exist", "userunknown", HARD),
    ("550 <neko@example.jp>: does not exist", "userunknown", HARD),
    ("554 5.7.1 <neko@example.jp>: user does not exist", "userunknown", HARD),
    ('550 Unrouteable mail domain "example.invalid"', "hostunknown", HARD),  # Exim: the domain has no DNS
    # the sender's domain, not the recipient's: never hard
    ("550 Sender domain does not exist", "rejected", SOFT),
    ("553 5.1.8 Sender address domain example.com not found", "rejected", SOFT),
    ("550 5.7.1 BATV failed to verify", "rejected", SOFT),  # SonicWall
    ("550 Backscatter protection detected an invalid or expired email address", "rejected", SOFT),  # MDaemon
    ("550 Address rejected", "onhold", SOFT),  # no evidence against the recipient
    ("550 <x@example.jp>: Recipient address rejected", "userunknown", SOFT),  # a symptom: no RCPT stage, no X.1 status
    ("550 <x@example.jp>: Recipient address rejected. (in reply to RCPT TO command)", "userunknown", HARD),
    ("550 5.1.1 <x@example.jp>: Recipient address rejected", "userunknown", HARD),
    ("550 Your domain has no MX record", "rejected", SOFT),  # the sender's domain
    ("553 sorry, your envelope sender has been denied (#5.7.1)", "rejected", SOFT),  # qmail
    ("451 Could not complete sender verify callout", "rejected", SOFT),  # Exim
    ("550 5.7.501 Access denied, spam abuse detected", "spamdetected", SOFT),  # Microsoft 365 NDR
    ("550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains", "blocked", SOFT),
    ("454 4.7.0 TLS not available due to local problem", "securityerror", SOFT),
    ("550 Account blocked due to inactivity", "suspend", SOFT),
    # a full mailbox is no dead address, and no message too large
    ("550 user: message would exceed maximum mailbox size for this recipient", "mailboxfull", SOFT),  # GNU Mailutils
    ("552 5.2.3 Disk quota overdrawn", "mailboxfull", SOFT),
    ("452 4.2.2 Too many messages on the server", "mailboxfull", SOFT),
    ("552 Too many messages in this mailbox", "mailboxfull", SOFT),
    # the sender's own limits (Microsoft 365 NDR 5.2.2, Gmail 550-5.4.5)
    ("554 5.2.2 Submission quota exceeded", "speeding", SOFT),
    ("550-5.4.5 Daily user sending limit exceeded.", "speeding", SOFT),
    ("421 Too many messages from your IP", "speeding", SOFT),
    # spam lists and junk-mail filters
    ("550 Mail denied due to spam list", "spamdetected", SOFT),
    ("550 Your mail was rejected by our junk mail filter", "spamdetected", SOFT),
]


@pytest.mark.parametrize("line,reason,bounce_type", FAMILIES)
def test_phrase_families(line, reason, bounce_type):
    v = classify_reply(line)
    assert (v.reason, v.bounce_type) == (reason, bounce_type), explain(v)


def test_sendmail_queue_timeout_is_expired():
    v = classify(None, None, "Cannot send message for 5 days", Kind.BOUNCE, "failed")
    assert (v.reason, v.bounce_type) == ("expired", SOFT), explain(v)


def test_sysexits_code_of_a_local_mailer_is_a_mailer_error():
    # "Diagnostic-Code: X-Unix; 71" as the parser keeps it (type and sysexits meaning)
    v = classify("4.5.0", None, "X-Unix; 71 (sysexits EX_OSERR operating system error)", Kind.DELAY, "delayed")
    assert (v.reason, v.bounce_type) == ("mailererror", SOFT), explain(v)


def test_google_groups_refusals_are_the_senders():
    v = classify("5.0.0", None, "مرحبًا، الغرض من هذه الرسالة", Kind.BOUNCE, "failed", recipient="list@googlegroups.com")
    assert (v.reason, v.bounce_type) == ("rejected", SOFT) and v.decided_by.startswith("provider: googlegroups.com")
    v = classify("5.0.0", None, "مرحبًا، الغرض من هذه الرسالة", Kind.BOUNCE, "failed", recipient="list@example.com")
    assert v.reason == "onhold"


@pytest.mark.parametrize("text,stage", [
    # Sendmail / Courier transcripts: the command the first refusal answered, not the first one named
    (">>> MAIL From:<a@example.com> <<< 250 ok >>> RCPT To:<b@example.net> <<< 250 ok >>> DATA <<< 550 User unknown", "DATA"),
    ("... while talking to mx.example.net.: >>> RCPT To:<b@example.net> <<< 550 5.1.1 <b@example.net>... User unknown", "RCPT"),
    (">>> MAIL FROM:<a@example.com> <<< 553 sorry, sender rejected", "MAIL"),
    ("no transcript here", None),
])
def test_transcript_stage(text, stage):
    found = transcript_stage(text.lower())
    assert (found[0] if found else None) == stage


def test_user_unknown_refused_after_data_is_filtered_soft_whatever_the_format_says_it():
    for line in ("host mx.example.net said: 550 User unknown (in reply to end of DATA command)",
                 "SMTP error from remote mail server after end of data: 550 User unknown",
                 "SMTP error from remote mail server after pipelined DATA: 550 User unknown",
                 ">>> RCPT TO:<a@example.net> <<< 250 2.1.5 Ok >>> DATA <<< 550 User unknown"):
        v = classify(None, None, line, Kind.BOUNCE, "failed")
        assert (v.reason, v.bounce_type, v.stage) == ("filtered", SOFT, "DATA"), explain(v)
    # an explicit X.1.1 status is about the mailbox, even at DATA
    v = classify("5.1.1", 550, "550 5.1.1 User unknown", Kind.BOUNCE, "failed", command="DATA")
    assert (v.reason, v.bounce_type) == ("userunknown", HARD)


def test_stage_near_reads_the_paragraph_of_each_recipient():
    text = ("<a@example.net>: host mx.example.net[192.0.2.1] said: 550 5.1.1 user unknown (in reply to RCPT TO command)\n\n"
            "<b@example.net>: host mx.example.net[192.0.2.1] said: 550 user unknown (in reply to end of DATA command)\n")
    assert stage_near(text, "a@example.net", ["b@example.net"])[0] == "RCPT"
    assert stage_near(text, "b@example.net", ["a@example.net"])[0] == "DATA"
    assert stage_near(text, "c@example.net", ["a@example.net"]) is None


def test_every_verdict_says_which_step_decided():
    v = classify_reply("550 5.1.1 <a@b>: Recipient address rejected: User unknown in local recipient table")
    assert v.decided_by.startswith("text: userunknown row") and "Postfix" in v.decided_by
    steps = explain_steps(v).splitlines()
    assert steps[1].endswith("stage: not stated") and "provider: nothing" in steps[2] and "text: userunknown" in steps[3]
    v = classify("5.2.2", None, None, Kind.BOUNCE, "failed")
    assert v.decided_by == "status: 5.2.2 mailbox full"
    v = classify(None, 530, None, Kind.BOUNCE, "failed")
    assert v.decided_by.startswith("reply code: 530")
    v = classify(None, None, "nothing anybody could read", Kind.BOUNCE, "failed")
    assert v.decided_by.startswith("fallback:") and (v.reason, v.bounce_type) == ("onhold", SOFT)
