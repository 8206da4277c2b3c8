"""Every format, in the one order they are tried: the first that claims a mail reports it.

Standards first (RFC 3464, ARF: no mail is both), then formats that recognise themselves by a marker of
their own, then the auto-reply check, and last the generic reader that trusts any
bounce-shaped text: a vague format never gets to claim a mail a precise one knows.
Adding a format: one module in this package, one line here, one real sample in tests.
"""
from __future__ import annotations

from proxy.dsn import arf, autoreply, mdn, rfc3464
from proxy.dsn.detectors import (aol, carriers, domino, dragonfly, exchange, exchange2007, exim, generic, gmail, japan,
                                 mailinglist, mimecast, opensmtpd,
                                 postfix, qmail, sendmail, ses, smtp32, zoho)

DETECTORS = [
    # standards and machine-readable notifications
    ("rfc3464", rfc3464.detect),
    ("arf", arf.detect),
    ("mdn", mdn.detect),
    ("hotmail-jmrp", arf.detect_hotmail),
    ("apple-unsubscribe", arf.detect_unsubscribe),
    ("ses-json", ses.detect),
    # formats with a signature of their own
    ("postfix-transcript", postfix.detect_transcript),
    ("postfix", postfix.detect),
    ("exim", exim.detect),
    ("qmail", qmail.detect),
    ("qmail", qmail.detect_summary),
    ("sendmail", sendmail.detect),
    ("opensmtpd", opensmtpd.detect),
    ("dragonfly", dragonfly.detect),
    ("gmail", gmail.detect),
    ("googlegroups", gmail.detect_groups),
    ("fml", mailinglist.detect_fml),
    ("exchange", exchange.detect),
    ("exchange2007", exchange2007.detect),
    ("domino", domino.detect),
    ("zoho", zoho.detect),
    ("mimecast", mimecast.detect),
    ("aol", aol.detect),
    ("mfilter", japan.detect_mfilter),
    ("smtp32", smtp32.detect),
    ("verizon", carriers.detect_verizon),
    ("au", japan.detect_au),
    # a report quoted whole in a text body (a relay forwarding the bounce it got)
    ("rfc3464-text", rfc3464.detect_quoted),
    # not a bounce at all
    ("autoreply", autoreply.detect),
    # anything else that reads like a bounce
    ("generic", generic.detect),
]
