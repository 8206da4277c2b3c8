"""The last resort: a mail that presents itself as a delivery report and lists addresses.

Only trusted when the mail says it is one (a daemon sender or a failure subject); the
bounce's own addressees and the returned mail's sender are never taken for recipients.
"""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import MAILER_DAEMON_RE, TextFormat

_SUBJECT_RE = re.compile(r"undeliver|delivery (?:status|fail|notif|problem|report)|returned mail|failure notice|"
                         r"mail delivery|non[ -]?remis|unzustellbar|nicht zustellbar|could not be delivered|"
                         r"rejected|bounced?|error|failed|failure|non-delivery|не доставлено", re.I)


# A person's reply or forward ("Re: delivery failed?", "Fwd: ..."), in the languages that send most.
_REPLY_SUBJECT_RE = re.compile(r"\s*(?:re|fwd?|aw|wg|sv|vs|tr|rif|res|enc|odp|antw)\s*(?:\[\d{1,3}\])?\s*:", re.I)


# What only a delivery report says of itself (a reply's subject needs one of these in the text).
_FAILURE_STATEMENTS = ("could not be delivered to", "not be delivered to", "undeliverable to", "unable to deliver",
                       "was not delivered to", "could not deliver", "n'a pas pu etre delivre", "n'a pas pu être délivré",
                       "delivery to the following recipient", "permanent error", "the following address")


# Phrases of delivery reports; a mail that is one only by its subject must use one of them.
_DELIVERY_PHRASES = ("not be delivered", "undeliverable", "delivery failed", "delivery to", "failed recipient",
                     "non-delivery", "unable to deliver", "was not delivered", "could not deliver", "permanent error",
                     "user unknown", "unknown user", "mailbox", "returned mail", "delivery status", "no such user",
                     "recipient address rejected", "n'a pas pu", "nicht zugestellt", "no pudo ser entregado")


class _Generic(TextFormat):
    def __call__(self, mail):
        if not (MAILER_DAEMON_RE.search(mail.from_header) or mail.content_type == "multipart/report"):
            if not _SUBJECT_RE.search(mail.subject):
                return None
            head = mail.head_lower
            if not any(map(head.__contains__, _DELIVERY_PHRASES)):
                return None
            if _REPLY_SUBJECT_RE.match(mail.subject) and not any(map(head.__contains__, _FAILURE_STATEMENTS)):
                return None  # a person answering or forwarding ("Re: delivery failed?") is no delivery report
        return super().__call__(mail)


detect = _Generic("generic", sign=("",))
