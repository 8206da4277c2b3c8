"""Provider rules, kept apart from the format-neutral reason tables (as Sisimai keeps its remote-host
rules apart from its MTA rules): wordings and codes one provider documents for itself. They are
consulted before the reason tables: a provider's own code says more than a phrase others share.

Rows are ``(regex, a real example line, the provider and the page or code the phrase comes from)``.
"""
from __future__ import annotations

from typing import Final

from proxy.dsn.classify.reasons import Row

PROVIDER_PHRASES: Final[tuple[tuple[str, tuple[Row, ...]], ...]] = (
    ("suppressed", (
        (r"amazon ses has suppressed sending to this address",
         'Amazon SES has suppressed sending to this address because it has a recent history of bouncing as an invalid address.',
         "Amazon SES: global suppression list bounce (SES Developer Guide, 'Using the suppression list')"),
        (r"(?:on|in) the (?:account-level )?suppression list|suppression list for your account",
         'Amazon SES did not send the message to this address because it is on the suppression list for your account.',
         'Amazon SES: account-level suppression list bounce (SES Developer Guide)'),
        (r"(?<!ip )(?<!ip-)\baddress blacklisted",
         '554 Message rejected: Address blacklisted.',
         'Amazon SES SMTP interface reply for a suppressed recipient (not an IP listing: that is blocked)'),
    )),
    ("badreputation", (
        (r"\[tss0[49]\]|deferred due to unexpected volume or user complaints",
         '421 4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes',
         'Yahoo Sender Hub SMTP error codes: TSS04/TSS09 temporary deferral for complaints'),
    )),
    ("spamdetected", (
        (r"mail rejete\. mail rejected|\bofr_506\b",
         '550 5.2.0 Mail rejete. Mail rejected. OFR_506 [506]',
         'Orange (France) postmaster codes: OFR_506 content refused'),
    )),
    ("toomanyconn", (
        (r"throttling failure|maximum sending rate exceeded|daily message quota exceeded",
         '454 Throttling failure: Maximum sending rate exceeded',
         'Amazon SES SMTP throttling replies (Sisimai counts them with the connection limits)'),
    )),
    ("blocked", (
        (r"banned sending ip|traffic not accepted from this ip|not currently accepting mail from your ip",
         '550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/',
         'Microsoft 365 NDR 5.7.606-5.7.649 banned sending IP, S3150 traffic not accepted'),
        (r"\[(?:bl2\d|ts0[1-3])\]|\brly:b[1-3]\b|\bdyn:t1\b|\b(?:blocked|refused) - see https?://",
         "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
         'Yahoo/AOL SMTP error codes (BL21-BL23, TS01-TS03, RLY:B1-B3, DYN:T1); Proofpoint dnsbl pointer'),
    )),
    ("norelaying", (
        (r"email address is not verified|identities failed the check",
         '554 Message rejected: Email address is not verified. The following identities failed the check in region AP-NORTHEAST-1: nekochan@example.jp',
         'Amazon SES: identity not verified in the region (SES SMTP reply)'),
    )),
    ("filtered", (
        (r"\b550(?::? :) user unknown",
         '550 : User unknown',
         "KDDI (au, ezweb) domain filter: '550 : User unknown' with an empty address"),
        (r"resolver\.rst\.(?:notauthorized|deliverysendersrestricted|sendernotauthorized)",
         '550 5.7.1 RESOLVER.RST.NotAuthorized; not authorized',
         'Exchange / Microsoft 365 NDR RESOLVER.RST sender restrictions (5.7.1)'),
    )),
    ("securityerror", (
        (r"sending (?:paused|suspended) for this account"
         r"|your (?:aws |ses )?account (?:is|has been) (?:suspended|paused|under probation)|account not subscribed to ses",
         '554 Message rejected: Sending paused for this account. For more information, please check the inbox of the email address associated with your AWS account.',
         'Amazon SES: the sending account is paused or not allowed'),
    )),
    ("userunknown", (
        (r"the email account that you tried to reach does not exist",
         "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
         'Gmail SMTP error reference 550-5.1.1'),
        (r"resolver\.adr\.(?:recipientnotfound|recipnotfound|exrecipnotfound|invalidsmtp)|recipient address rejected: access denied",
         '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup',
         'Exchange / Microsoft 365 NDR 5.1.10 RESOLVER.ADR.RecipientNotFound, 5.4.1 access denied'),
    )),
)


# A provider whose every refusal for its addresses means one thing: (reason, source) by recipient domain.
RECIPIENT_DOMAINS: Final[dict[str, tuple[str, str]]] = {
    # A group refuses a post from a non-member, or the group does not exist; the notice is localised
    # (English, Arabic, Japanese ...) and often says no more than that.
    "googlegroups.com": ("rejected", "Google Groups Help: a group refuses posts from non-members or does not exist"),
}
