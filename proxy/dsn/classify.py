"""Status code + SMTP code + diagnostic text -> (reason, bounce_type), with the evidence.

Pure: no I/O, stdlib `re` and `proxy.model` only. One classifier for the relay's synchronous
replies and the bounce MX's asynchronous DSNs alike.

How a verdict is reached (each step only when the ones before it found nothing):

1. ``kind``: complaints, auto-replies and deliveries have fixed reasons (feedback, vacation,
   delivered) and no hard/soft.
2. PHRASES: the diagnostic text against one table per reason, tables in a fixed order (the
   order matters where phrases overlap: an RBL listing that says "blocked using" is
   ``blocked`` before anything else can call it ``userunknown``). Each table is a list of
   ``(regex, real example line)`` rows. The first table that matches wins: at its leftmost
   match, the first row in order, as one alternation of the table would (the evidence cites
   it). Only the rows' alternatives whose necessary strings all occur in the text are ever
   searched (see "The fast search" below).
3. The SMTP stage the text names ("in reply to RCPT TO command", "after end of data",
   "refused to talk to me"...), or the ``command`` argument: a refusal before RCPT cannot
   be about the recipient, and a "user unknown" after DATA for an address that RCPT
   accepted is a filter, not a missing mailbox (see ``_by_stage``).
4. STATUS: the enhanced status code (RFC 3463, X.1.0 .. X.7.27) -> reason.
5. WEAK_PHRASES: symptoms rather than causes ("connection timed out", "recipient address
   rejected"), trusted less than a specific status code.
6. REPLY_CODES: the few SMTP reply codes that mean one thing (521/556, 530/535, 500-504).
7. Nothing: ``expired`` for a delay, ``onhold`` when there is a failure (text nobody
   understood, or only a Status or a reply code) whose cause is not said, ``undefined``
   when there is nothing more than an Action.

``bounce_type`` is ``hard`` only for a reason that says the address itself is bad
(HARD_REASONS) in a permanent failure; a sender-side refusal (SENDER_SIDE_REASONS), a
mailbox that may change, a delay or a 4xx is ``soft``, and so is ``onhold`` (a failure whose
cause is not said cannot condemn the address); ``undefined`` is ``undetermined``.

The status reported is honest: the DSN's own Status (``dsn``), else an enhanced code found in
the text (``text``), else only the class of the reply code (``reply_code``: 5.0.0 / 4.0.0) or
of the Action (``action``); never an invented detail code.
"""
from __future__ import annotations

import re
from typing import Final

from proxy.model import REASONS, BounceType, Kind, StatusSource, Verdict

PARSER_CLASSIFIER_VERSION: Final = "1"  # bump whenever a table or a rule below changes

MAX_TEXT: Final = 8192  # characters of a diagnostic that are read (bounds the time of one call)

HARD_REASONS: Final = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

Row = tuple[str, str]  # (regex over normalised lower-case text, a real example line)

# --------------------------------------------------------------------------------------------
# PHRASES: strong evidence, one table per reason, checked in this order.
# Patterns are written in lower case and matched against the diagnostic lower-cased with runs
# of white space collapsed to one space. Use only non-capturing groups and bounded repeats.
# --------------------------------------------------------------------------------------------
PHRASES: Final[tuple[tuple[str, tuple[Row, ...]], ...]] = (
    ("suppressed", (
        # Amazon SES, global suppression list
        (r"amazon ses has suppressed sending to this address",
         "Amazon SES has suppressed sending to this address because it has a recent history of bouncing as an invalid address."),
        # Amazon SES, account-level suppression list
        (r"(?:on|in) the (?:account-level )?suppression list|suppression list for your account",
         "Amazon SES did not send the message to this address because it is on the suppression list for your account."),
        # Amazon SES synchronous reply for a suppressed recipient (not an IP listing: that is `blocked`)
        (r"(?<!ip )(?<!ip-)\baddress blacklisted",
         "554 Message rejected: Address blacklisted."),
        (r"(?:recipient|address) (?:is )?(?:on|in) (?:the|our|a) suppression list|suppressed recipient",
         "550 5.1.1 Recipient address is on the suppression list"),
    )),
    ("virusdetected", (
        (r"\bvirus(?:es)? (?:was |were |has been )?(?:detected|found)|virus[- ]infected|infected with (?:a )?(?:virus|malware|trojan)",
         "550 5.7.0 <virusdetected@libsisimai.net>: Recipient address rejected: Virus detected."),
        (r"(?:message|attachment|mail) contains? (?:a |an )?(?:virus|malware|trojan|malicious)|prohibited virus",
         "550 5.7.1 The message was rejected because it contains prohibited virus or spam content"),
        (r"malware (?:was )?(?:detected|found)|malicious(?:_url| url| content| attachment| payload| file)s? (?:was |were )?(?:detected|found)"
         r"|potentially executable attachment|used by recent viruses",
         "552-5.7.0 This message was blocked because its content presents a potential security issue. It has a potentially executable attachment."),
    )),
    ("authfailure", (
        (r"\bdmarc\b",
         "550 5.7.509 Access denied, sending domain [EXAMPLE.JP] does not pass DMARC verification and has a DMARC policy of reject."),
        (r"\bspf\b.{0,40}?(?:fail|not pass|invalid|error|reject)|(?:fail(?:s|ed)?|not pass) (?:the )?spf\b|sender policy framework"
         r"|bad spf records?|inspect your spf settings|spf\.pobox\.com|per it'?s spf record",
         "550 5.7.23 SPF validation failed for sender domain example.com"),
        (r"(?:no|missing|invalid|bad|broken|failed) (?:passing |valid |acceptable )?dkim\b|\bdkim (?:signature )?(?:check |validation |verification )?(?:fail|did not|does not|not valid|invalid)",
         "550 5.7.20 No passing DKIM signature found"),
        (r"(?:fails|failed|does not|doesn't) (?:to )?pass authentication checks|authentication checks? (?:fail|did not pass)|does not have authentication information",
         "550 5.7.1 This message does not have authentication information or fails to pass authentication checks."),
        (r"sender is unauthenticated|unauthenticated (?:e-?mail|mail|messages?) from|required authentication level|authentication requirements defined for the sender",
         "550-5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM."),
    )),
    ("requireptr", (
        (r"reverse (?:dns|lookup|hostname|resolution|mapping|host name)|\brdns\b|\bptr(?:-| )(?:records?|resource record|lookup)",
         "554 5.7.1 Reverse DNS lookup for host 203.0.113.22 failed permanently."),
        (r"cannot find your (?:reverse )?hostname|(?:no|missing|invalid|bad) (?:dns )?ptr\b|does not have a ptr|ip name lookup failed|cannot resolve your address"
         r"|forward dns entry does not point to the sending ip|unresolvable relay host name",
         "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]"),
        (r"domain \[?[^\]\s]{1,255}\]? mismatches client ip|unverifyable sending ips",
         "550 domain [example.com] mismatches client ip 192.0.2.225."),
    )),
    ("badreputation", (
        (r"(?:low|poor|bad) (?:e-?mail )?reputation|reputation (?:is )?(?:too )?(?:low|poor)|reputation (?:score|problems)|due to (?:the )?(?:ip |sender |domain |sending )?reputation",
         "550-5.7.1 Our system has detected that this message is likely suspicious due to the very low reputation of the sending IP address."),
        # Yahoo: temporarily deferred for user complaints
        (r"\[tss0[49]\]|deferred due to unexpected volume or user complaints",
         "421 4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"),
    )),
    ("spamdetected", (
        (r"(?:scored|considered|classified|identified|detected|flagged|marked|tagged|rejected|blocked|refused|treated) (?:as |due to |because of |for )?(?:an? )?(?:probable |possible |likely |suspected )?spam\b|spam classification",
         "554 5.6.0 This message has been scored as spam with a probability of more than 90%"),
        (r"\bspam (?:message|content|detected|score|e-?mail|mail|check|points|rejection|refused|not accepted|blocked|complaints|filter)"
         r"|suspicion of spam|(?:looks?|looked|appears?|seems?|thinks?|probably|likely|similar to) (?:\S{1,40} ){0,3}?(?:like |to be )?(?:a |an )?spam\b|(?:probable|possible|suspected) spam\b|spam-like",
         "554 5.7.1 Message rejected under suspicion of SPAM; https://ya.cc/1IrBc 1606381234-abCdEf1aBc"),
        (r"message content rejected|unsolicited bulk e-?mail|\bube\b|likely unsolicited mail|appears to be unsolicited|- spam\b|\bdt:spm\b|mail content denied"
         r"|spamassassin|spamprofiler|spambouncer|recurrent pattern detection|\buribl\b|antispam checks|bulk (?:e-?mail|mail)\b|unacceptable content|banned content|content filter",
         "550 5.7.1 Message content rejected, UBE, id=22220-02-222"),
        # Orange (France): content refused by its filter
        (r"mail rejete\. mail rejected|\bofr_506\b",
         "550 5.2.0 Mail rejete. Mail rejected. OFR_506 [506]"),
    )),
    ("toomanyconn", (
        (r"too many (?:concurrent |simultaneous |open |parallel )?(?:smtp )?(?:connections|sessions)|trop de connexions|maximum connection limit",
         "421 Too many concurrent SMTP connections"),
        (r"connection (?:rate|frequency|count) (?:limit(?:ed)?|exceeded)|(?:ip|connection) frequency limited|connection limit (?:exceeded|reached|for)|per-domain connection limit",
         "452 4.3.2 Connection rate limit exceeded."),
        (r"too many recipients|too many errors from your ip|max emails per hour|numerous attempts to deliver this message",
         "552 Too many recipients"),
        # Amazon SES's own throttling replies (Sisimai counts them here, with the connection limits)
        (r"throttling failure|maximum sending rate exceeded|daily message quota exceeded",
         "454 Throttling failure: Maximum sending rate exceeded"),
    )),
    ("speeding", (
        (r"rate[- ]limit(?:ed|ing)?\b|throttl(?:ed|ing)\b|receiving mail (?:at )?a rate|(?:message|mail|sending) rate (?:limit )?exceeded|try again slower|sending too (?:fast|quickly)",
         "421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited."),
        (r"too many (?:messages|mails|e-?mails)\b|reached (?:your|the) (?:daily|hourly) (?:\S{1,40} )?(?:quota|limit)|(?:daily|hourly) (?:sending |message |relay )?(?:quota|limit) (?:exceeded|reached)",
         "554 neko-22.nyaan.r.example.net : CAT : neko22 : CAT : You've reached your daily relay quota - 203.0.113.0"),
    )),
    ("rejected", (
        (r"sender address rejected|domain of sender address .{1,255}? does not exist|sender (?:address )?(?:verify|verification) (?:failed|error)",
         "553 5.1.8 <httpd@host1.mx.example.jp>... Domain of sender address httpd@host1.mx.example.jp does not exist"),
        (r"(?:invalid|bad|unknown|unverified|illegal|bogus) (?:envelope )?(?:sender|mail from|from address)(?! ip)"
         r"|sender (?:domain |address )?(?:is )?(?:invalid|unknown|not valid|not allowed|denied|not permitted|refused|empty)|server rejected mail from address",
         "553 5.1.7 <nobody@example.invalid>... Invalid sender address"),
        (r"\bfrom: domain is invalid|can't determine purported responsible address|(?:null|empty) (?:envelope )?senders? (?:is |are )?not allowed"
         r"|unrout(?:e)?able sender|mail from not owned by user|this server does not accept mail from|administrative prohibition|emetteur invalide",
         "550 5.7.1 can't determine Purported Responsible Address"),
        (r"(?:sender|your e-?mail) address has been blacklisted|sender is (?:in my black ?list|a spammer|spammer)|to/from an address that has been blacklisted",
         "553 5.1.8 Sender address has been blacklisted"),
        # Mailing lists refusing a non-member: fml, Mailman, Google Groups
        (r"not a member of (?:this|the) (?:mailing )?list|not (?:allowed|authorized|permitted) to post|permission to post|group you tried to contact|groups\.google\.com/support",
         "You are not a member of this mailing list <neko-nyaan@example.org>."),
    )),
    ("blocked", (
        (r"blocked using |blocked by (?:\S{1,40} )?(?:dnsbl|rbl|spamhaus|spamcop|sorbs|barracuda)",
         "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"),
        (r"\bspamhaus\b|\bspamcop\b|\bsorbs\b|\bdnsbl\b|\brbl\b|\buceprotect\b|barracudacentral|abuseat\.org",
         "553 http://www.spamhaus.org/query/bl?ip=192.0.2.222"),
        (r"(?:black|block|deny|ban) ?list(?:ed)?\b|blacklisted by",
         "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3140)."),
        (r"client host (?:\[[^\]]{0,80}\] )?(?:rejected|blocked)|helo command rejected|sender ip address rejected|bad sender ip address",
         "554 5.7.1 <unknown[192.0.2.1]>: Client host rejected: Access denied"),
        (r"(?:your|sending|sender'?s?|client|remote|access from) (?:ip|host|server|network|mta)(?: address)? (?:\S{1,40} ){0,3}?(?:is |has been |was |are )?(?:blocked|blacklisted|banned|blocklisted)"
         r"|(?:mail server|ip) \S{1,255} is blocked|spam ips blocked|too many spams from your ip|(?:you are|currently) sending spam|looks suspiciously like spammer",
         "421 4.7.1 Sorry, your IP is blocked"),
        # Microsoft banned IP / traffic refused; Cisco IronPort access rejected
        (r"banned sending ip|traffic not accepted from this ip|not currently accepting mail from your ip|your access to (?:submit messages to )?this (?:e-?mail|mail) system has been rejected",
         "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/"),
        # Yahoo BL/TS codes, AOL RLY codes, Proofpoint DNSBL pointer
        (r"\[(?:bl2\d|ts0[1-3])\]|\brly:b[1-3]\b|\bdyn:t1\b|\b(?:blocked|refused) - see https?://",
         "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes"),
        (r"use (?:the )?(?:smtp|mail) (?:server|relay) of your (?:isp|provider)|dynamic(?:ally assigned)? (?:ips?|address|pool|range)|\bdial-?up\b|residential (?:ip|address)",
         "550 5.7.0 <shironeko@example.jp>... Please use the smtp server of your ISP."),
        # T-Online; Orange and La Poste refusals; iCloud refusing connections; Mimecast blocks
        (r"a problem occurred\. \(ask your postmaster|service refuse|not accepting connections|envelope blocked|you are not allowed to connect|rejecting open proxy"
         r"|service not available, closing transmission channel|was blocked by (?!(?:the )?recipient)|\(\S{1,255}@\S{1,255}:blocked\)",
         "421 mwinf5c77 ME Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR_999 [999]"),
        # a receiver that drops the connection on the sender
        (r"connection (?:reset by peer|dropped|was dropped by remote host|refused by)",
         "554 Remote protocol error: Connection reset by peer during result wait with example.edu"),
    )),
    ("norelaying", (
        # Amazon SES: the sender identity is not verified in the region
        (r"email address is not verified|identities failed the check",
         "554 Message rejected: Email address is not verified. The following identities failed the check in region AP-NORTHEAST-1: nekochan@example.jp"),
        (r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited|refused)|unable to relay|not configured to relay|(?:do|does|will) not relay|no relaying"
         r"|relaying mail to \S{1,255} is not allowed|not allowed to relay|insecure mail relay|not an open relay|as a relay\b|we don't handle mail for",
         "554 5.7.1 <kijitora@example.org>: Relay access denied"),
        (r"isn't in my list of allowed rcpthosts|not in my list of allowed rcpthosts",
         "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"),
    )),
    ("filtered", (
        # KDDI (au, ezweb): the domain filter refuses with an empty address, a missing user names it
        (r"\b550(?::? :) user unknown",
         "550 : User unknown"),
        (r"refused due to recipient preferences|due to (?:the )?recipient'?s? (?:policy|preferences|settings)|has a policy that prohibited the mail",
         "550 5.1.1 RCP-P2 http://postmaster.facebook.com/response_codes?ip=192.0.2.135#rcp Refused due to recipient preferences"),
        (r"only accepting mail from specific (?:e-?mail )?addresses|blocked by (?:the )?recipient|user refuses to (?:accept|receive)|recipient (?:has )?(?:refused|rejected) (?:your|this|the) (?:message|mail|e-?mail)"
         r"|message rejected due to user rules|\bmessage filtered\b|account is protected by|refuse to receive mail|is not accepting any mail|has restricted sms e-?mail"
         r"|not accepting (?:e-?)?mail from",
         "554 5.7.1 This recipient is only accepting mail from specific email addresses"),
        # Exchange sender restrictions
        (r"resolver\.rst\.(?:notauthorized|deliverysendersrestricted|sendernotauthorized)",
         "550 5.7.1 RESOLVER.RST.NotAuthorized; not authorized"),
    )),
    ("policyviolation", (
        (r"(?:policy|protocol) violation|not accepted for policy reasons|(?:rejected|blocked|refused|denied|bounced) (?:due to|by|because of|for) (?:\S{1,40} ){0,3}?(?:polic(?:y|ies)|organizational settings)\b",
         "554 5.7.7 Email policy violation detected"),
        # Gmail: content judged a security issue; Mimecast: network not permitted by policy
        (r"content presents a potential|an illegal attachment|host network not allowed|does not allow external forwarding|members-only list|closed mailing list"
         r"|not accepting mail with (?:attachments|embedded)|using a mass mailer|do not accept messages containing",
         "552-5.7.0 This message was blocked because its content presents a potential security issue. Please visit https://support.google.com/mail/answer/6590 to review our message content and attachment content guidelines."),
        (r"\bheader error\b",
         "554 5.7.0 Header error"),
    )),
    ("securityerror", (
        (r"authentication (?:is )?required|requires? authentication|must (?:issue|use) (?:a )?starttls|starttls (?:is )?required|(?:tls|encryption) (?:is )?required|resolver\.rst\.authrequired"
         r"|authentication turned on in your email client",
         "530 Must issue a STARTTLS command first"),
        (r"authentication (?:credentials invalid|failure|failed|unsuccessful)|unauthenticated senders? not allowed|sender not authenticated|not authenticated|verification failure",
         "535 Authentication Credentials Invalid"),
        (r"delivery not authorized|not authorized to (?:send|relay|submit|perform)|executable files are not allowed",
         "551 5.7.1 <securityerror@libsisimai.net>: Recipient address rejected: Delivery not authorized."),
        # Amazon SES: the sending account itself is paused or not allowed
        (r"sending (?:paused|suspended) for this account|your (?:aws |ses )?account (?:is|has been) (?:suspended|paused|under probation)|account not subscribed to ses",
         "554 Message rejected: Sending paused for this account. For more information, please check the inbox of the email address associated with your AWS account."),
    )),
    ("notcompliantrfc", (
        (r"multiple addresses in from:|not rfc ?(?:2822|5322|822) compliant|rfc ?(?:2822|5322) (?:violation|error)|violates rfc|rfcmessagenoncompliant",
         "550-5.7.1 Messages with multiple addresses in From: header are not accepted."),
        (r"duplicate header|illegal header|\bno [\w-]{1,30} (?:field|header) given|multiple \S{1,40} headers?\b|missing (?:required )?(?:from|date|message-id|subject|to) header|bare (?:<?lf>?|line ?feeds?)\b|barelinefeedsareillegal",
         "554 Transaction failed: Duplicate header 'DKIM-Signature'."),
    )),
    ("contenterror", (
        (r"8-?bit data|invalid mime|mime (?:complexity|structure|syntax)|malformed (?:message|mime|header)|improperly.formatted|unnecessary base64",
         "550 5.6.9 improper use of 8-bit data in message header"),
        (r"(?:message )?header (?:size|line)s?\b.{0,40}?exceed|lines? too long|line length exceeded|(?:media|content) type not supported|conversion (?:failed|required)",
         "550 5.6.0 Message header size, or recipient list, exceeds policy limit"),
    )),
    ("systemfull", (
        (r"insufficient system (?:storage|resources)|mail system full|system (?:storage|disk) (?:is )?full|server (?:is )?(?:too )?busy|too busy",
         "452 4.3.1 Insufficient system storage"),
    )),
    ("mailboxfull", (
        (r"mail ?(?:box|folder) (?:\S{1,40} ){0,3}?(?:is )?(?:full|over|exceed(?:s|ed)?|would exceed)|inbox is (?:full|out of storage)|account is full|full mailbox|destinataire pleine",
         "550 5.2.2 <kijitora@example.jp>... Mailbox Full"),
        (r"over (?:the )?(?:allowed |storage )?quota|overquota|quota (?:exceeded|violation)|exceed(?:s|ed|ing) (?:\S{1,40} ){0,2}?quota|exceeded (?:\S{1,40} ){0,2}?(?:storage|quota)|(?:disk|storage|mailbox|maildir|user) quota",
         "552 5.2.2 Over quota"),
        (r"out of storage|storage space|insufficient (?:user |disk )?(?:storage|space)|not (?:enough|sufficient) (?:storage|space|disk)|exceeds allowed size|no space left on device"
         r"|space has been used up|too many messages on the server|too much mail data",
         "The recipient's inbox is out of storage space and inactive. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm"),
    )),
    ("emailtoolarge", (
        (r"(?:message|mail|e-?mail)(?: file)?s? (?:is |was )?too (?:large|big)|message (?:size|length) (?:\S{1,40} ){0,2}?exceed|(?:message|mail|e-?mail) size limits?|size limit exceeded"
         r"|exceeds? (?:the )?(?:fixed )?maximum (?:\S{1,40} ){0,2}?size|exceeded (?:the )?maximum (?:inbound |incoming )?message size|max(?:imum)? message size exceeded",
         "552 5.2.3 Message size exceeds fixed maximum message size (10485760)"),
        (r"recipsizelimit|too large for this recipient|exceeded mailsize limit|larger than (?:the )?(?:maximum|allowed|permitted)|line limit exceeded|taille limite du message",
         "#550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient ##"),
    )),
    ("suspend", (
        (r"account (?:\S{1,40} ){0,2}?(?:has been |is |was )?(?:disabled|suspended|deactivated|inactive|locked|frozen|closed|terminated|discontinued)|inactive account|deactivated mailbox",
         "554 delivery error: dd Sorry your message to kijitora@example.co.jp cannot be delivered. This account has been disabled or discontinued [#102]."),
        (r"(?:mail ?box|user|recipient|address|domain) (?:is |has been |currently )?(?:disabled|suspended|deactivated|inactive|frozen|locked|terminated)|disabled (?:recipient|mailbox|user|account)"
         r"|(?<!delivery )temporarily (?:disabled|suspended|deactivated|inactive|locked)|temporary locked|(?:is currently|has been) suspended|archived recipient|destinataire archivee|invalid/inactive user"
         r"|this address no longer accepts mail|suspend the service",
         "550 Mailbox is frozen."),
    )),
    ("hasmoved", (
        (r"no longer on (?:this |the )?server|(?:mail ?box|address|user|recipient) has (?:been )?moved|has been replaced by|(?<!wrong or )no longer (?:valid|in use|active|exists|with (?:us|the company)|employed)",
         "550 5.1.6 recipient no longer on server: kijitora@example.jp"),
        (r"user not local; please try",
         "551 User not local; please try <kijitora@example.org>"),
    )),
    ("notaccept", (
        (r"\bnull ?mx\b|rfc ?7505",
         "The domain libsisimai.org doesn't receive email according to the administrator: returned Null MX https://www.rfc-editor.org/info/rfc7505"),
        (r"(?:does not|doesn't|do not) (?:accept|receive) (?:any )?(?:e-?)?mail|not accepting (?:network )?(?:messages|mail)\b(?! from)|no mx record|mail receiving disabled|no route for current request",
         "host/domain does not accept mail"),
    )),
    ("networkerror", (
        (r"\bdns error|host not found, try again|dns (?:query|lookup) (?:failed|failure|timed out)|(?:host )?name lookup fail(?:ed|ure)|temporary failure in name resolution"
         r"|malformed (?:or unexpected )?name server reply|dns records for the destination computer could not be found|unable to resolve route|unrouteable mail domain",
         "Name service error for domain example.com: Host not found, try again"),
        (r"no route to host|network (?:is )?unreachable|host is unreachable|lost connection with .{1,120}? while|could not connect and send the mail",
         "connect to nyaan.example.com[192.0.2.2]:25: No route to host"),
        (r"too many hops|hop count exceeded|(?:mail|routing|forwarding) loop|loop detected|message is looping|message looping|forwarded more than the maximum allowed times|too many received",
         "554 5.4.6 Hop count exceeded - possible mail loop"),
    )),
    ("hostunknown", (
        (r"host unknown|host or domain name not found|unknown (?:host|domain)\b|no such domain|couldn't find any host named|illegal host/domain name|unrout(?:e)?able address"
         r"|name or service not known|domain must exist|domain mentioned in email address is unknown|account or domain may not exist",
         "550 5.1.2 <nekochan@libsisimai.org>... Host unknown (Name server: .: host not found)"),
        (r"(?:domain|host)(?: name)? (?:does not|doesn't|not) exists?|(?:domain|host)(?: name)? (?:was )?not found(?!, try again)|invalid (?:domain|host)(?: name)?\b|domain is not reachable|bad destination system address",
         "Domain does not exist"),
        (r"all relevant mx records point to non-existent hosts",
         "all relevant MX records point to non-existent hosts"),
        (r"domain \S{1,255} couldn't be found",
         "Your message wasn't delivered to neko@example.invalid because the domain example.invalid couldn't be found."),
    )),
    ("userunknown", (
        # Gmail
        (r"the email account that you tried to reach does not exist",
         "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces."),
        # Exchange / Office 365 / Outlook.com
        (r"resolver\.adr\.(?:recipientnotfound|recipnotfound|exrecipnotfound|invalidsmtp)|recipient address rejected: access denied",
         "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
        # Postfix, Sendmail, Exim, Proofpoint, Japanese carriers, SES simulator
        (r"\buser ?unknown|\bunknown (?:user|recipient|local[- ]part|mailbox|address(?! error)|addressee|e-?mail address)\b|\b(?:recipient|address|addressee) unknown\b"
         r"|(?:utilisateur|destinataire) inconnu|adresse (?:\S{1,40} ){0,6}?n'existe pas|(?:empf(?:ae|ä)nger|benutzer|adresse) (?:ist )?unbekannt|(?:usuario|utente|usu(?:a|á)rio) (?:desconocido|sconosciuto|desconhecido)",
         "550 5.1.1 <kijitora@example.jp>: Recipient address rejected: User unknown in local recipient table"),
        (r"\bno such (?:user|recipient|mailbox|account|address|person|local user)|\bno (?:account|mail ?box) (?:by that name|available for this user|found)|no one at this address"
         r"|no existe (?:dicha persona|ese usuario)|nessun utente simile",
         "550 kijitora@neko.example.org... No such user"),
        (r"\b(?:user|recipient|mail ?box|account|addressee|address)(?: name)? (?:does not|doesn't|did not|not) exists?\b|non-?existent (?:user|recipient|mailbox|address)",
         "550 5.1.1 <kijitora@icloud.example.com>: user does not exist"),
        (r"recipient name is not recognized|\b(?:user|recipient|mail ?box|addressee)s? (?:was |were )?not (?:found|present|known|active)|(?:e-?mail )?address (?:you entered )?(?:couldn't|could not) be found"
         r"|address not present in directory|email name is not found|not found recipient account",
         "550 User not found"),
        (r"\bmail ?box (?:is )?(?:unavailable|unavaiable|not available)|no mailbox here|not listed in (?:public name & address book|the directory|domino directory)",
         "550 5.1.1 Requested action not taken: mailbox unavailable"),
        (r"\b(?:invalid|not a valid|bad destination|bad) (?:recipient|mail ?box|user|e-?mail address|address)(?:es)?\b|\bbad[-_]recipient|badrcptto|badrecipientto|validrcptto"
         r"|is not (?:a known user|a valid (?:user|mailbox)|an active address)|not a (?:valid user|local address)|unknown or illegal alias|this user doesn't have an? \S{1,255} account"
         r"|\bno valid recipients?\b|can't accept user|destination addresses were unknown|destination server rejected recipients|recipient (?:is )?not (?:ok|local|accepted)"
         r"|vdeliver: invalid or unknown virtual user|missing home directory|wrong or no longer valid|not email addresses|invalid final delivery userid",
         "554 delivery error: dd This user doesn't have a yahoo.com account (this-local-part-does-not-exist@yahoo.com) [0] - mta1061.mail.ne1.yahoo.com"),
    )),
    ("syntaxerror", (
        (r"syntax error|(?:unrecognized|unknown|invalid) command|command (?:not recognized|unrecognized|not implemented)",
         "500 5.5.2 Syntax error, command unrecognized"),
    )),
    ("systemerror", (
        (r"internal (?:server |system )?error|(?<!operating )system error|queue file write error|(?:local |server |system |mail system )?config(?:uration)? error|temporary service failure"
         r"|temporary local problem|local error in processing|loops back to myself|is misconfigured|interrupted system call|can't create user output file|timeout waiting for input"
         r"|encountered an error while being processed|forwarding loop broken",
         "554 5.3.0 <systemerror@libsisimai.net>: Recipient address rejected: Internal system error."),
    )),
    ("expired", (
        (r"(?:message|envelope|delivery time|delivery) expired|retry time(?:out)? (?:exceeded|reached)|retry time not reached|(?:has been|was) in the queue too long|queue lifetime"
         r"|message timed out|within the allowed queue period",
         "Envelope expired"),
        (r"could not be delivered for (?:more than )?\d{1,3}|not (?:been )?delivered within \d|delivery failed \d{1,5} attempts|have been failing for a long time|did not accept our requests to connect"
         r"|after multiple retries|server did not respond|could not find a gateway for|has not been collected after",
         "Message could not be delivered for 5 days"),
        (r"this is a warning message only|(?:has been|was) delayed|will be retried|will-retry-until|giving up on\b|delivery attempts will continue",
         "THIS IS A WARNING MESSAGE ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE. Delivery to the following recipients has been delayed."),
    )),
    ("mailererror", (
        (r"pipe to \||operating system error|mailer error|command (?:died|failed|exited) with|exit (?:status|code) \d|\bx-unix;",
         "pipe to |/usr/local/nyaan/bin/neko kijitora@example.com generated by kijitora@example.com"),
    )),
    ("onhold", (
        (r"\bon hold\b",
         "550 5.0.0 <onhold@libsisimai.net>: Recipient address rejected: On hold."),
    )),
)

# Symptoms rather than causes: consulted only after a specific status code had nothing to say.
WEAK_PHRASES: Final[tuple[tuple[str, tuple[Row, ...]], ...]] = (
    ("userunknown", (
        (r"recipient address rejected|\baddress rejected\b",
         "550 <neko-nyaan@ne.auone-net.jp>: Recipient address rejected. (in reply to RCPT TO command)"),
    )),
    ("networkerror", (
        (r"connection (?:was )?(?:refused|reset|timed out|closed|lost|dropped)|timed out|could not connect|unable to connect|couldn't connect|failed to connect|not reachable|unreachable",
         "connect to example.org[203.0.113.225]:25: Connection timed out"),
    )),
    ("systemerror", (
        (r"service (?:is )?(?:currently |temporarily )?(?:unavailable|not available)|transaction failed|mail system problem",
         "554 Transaction failed"),
    )),
)

# RFC 3463 (and RFC 3886, 4468, 4954, 5248, 6531, 6710, 7293, 7372, 7505) -> reason.
# Keys: "subject.detail" for either class, "class.subject.detail" where the class changes it.
STATUS_REASON: Final[dict[str, tuple[str, str]]] = {
    "1.0": ("userunknown", "other address status"),
    "1.1": ("userunknown", "bad destination mailbox address"),
    "1.2": ("hostunknown", "bad destination system address"),
    "1.3": ("userunknown", "bad destination mailbox address syntax"),
    "1.4": ("filtered", "destination mailbox address ambiguous"),
    "1.6": ("hasmoved", "destination mailbox has moved, no forwarding address"),
    "1.7": ("rejected", "bad sender's mailbox address syntax"),
    "1.8": ("rejected", "bad sender's system address"),
    "1.9": ("systemerror", "message relayed to non-compliant mailer"),
    "1.10": ("notaccept", "recipient address has null MX"),
    "2.0": ("filtered", "other or undefined mailbox status"),
    "2.1": ("suspend", "mailbox disabled, not accepting messages"),
    "2.2": ("mailboxfull", "mailbox full"),
    "2.3": ("emailtoolarge", "message length exceeds administrative limit"),
    "2.4": ("systemerror", "mailing list expansion problem"),
    "3.0": ("systemerror", "other or undefined mail system status"),
    "3.1": ("systemfull", "mail system full"),
    "3.2": ("notaccept", "system not accepting network messages"),
    "3.3": ("systemerror", "system not capable of selected features"),
    "3.4": ("emailtoolarge", "message too big for system"),
    "3.5": ("systemerror", "system incorrectly configured"),
    "4.0": ("networkerror", "other or undefined network or routing status"),
    "4.4.1": ("expired", "no answer from host (retried until given up)"),
    "5.4.1": ("networkerror", "no answer from host"),
    "4.2": ("networkerror", "bad connection"),
    "4.3": ("networkerror", "directory server failure"),
    "4.4.4": ("networkerror", "unable to route (for now)"),
    "5.4.4": ("hostunknown", "unable to route"),
    "4.5": ("systemfull", "mail system congestion"),
    "4.6": ("networkerror", "routing loop detected"),
    "4.7": ("expired", "delivery time expired"),
    "4.8": ("networkerror", "retry on IPv4"),
    "5.1": ("syntaxerror", "invalid command"),
    "5.2": ("syntaxerror", "syntax error"),
    "5.3": ("toomanyconn", "too many recipients"),
    "5.4": ("syntaxerror", "invalid command arguments"),
    "5.5": ("systemerror", "wrong protocol version"),
    "5.6": ("syntaxerror", "authentication exchange line is too long"),
    "6.0": ("contenterror", "other or undefined media error"),
    "6.1": ("contenterror", "media not supported"),
    "6.2": ("contenterror", "conversion required and prohibited"),
    "6.3": ("contenterror", "conversion required but not supported"),
    "6.4": ("contenterror", "conversion with loss performed"),
    "6.5": ("contenterror", "conversion failed"),
    "6.6": ("contenterror", "message content not available"),
    "6.7": ("contenterror", "non-ASCII addresses not permitted"),
    "6.8": ("contenterror", "UTF-8 string reply required"),
    "6.9": ("contenterror", "UTF-8 header message cannot be transferred"),
    "6.10": ("contenterror", "UTF-8 string reply required (deprecated)"),
    "5.7.0": ("securityerror", "other or undefined security status"),
    "4.7.1": ("blocked", "delivery not authorized, message refused"),
    "5.7.1": ("securityerror", "delivery not authorized, message refused"),
    "7.2": ("securityerror", "mailing list expansion prohibited"),
    "7.3": ("securityerror", "security conversion required but not possible"),
    "7.4": ("securityerror", "security features not supported"),
    "7.5": ("securityerror", "cryptographic failure"),
    "7.6": ("securityerror", "cryptographic algorithm not supported"),
    "7.7": ("securityerror", "message integrity failure"),
    "7.8": ("securityerror", "authentication credentials invalid"),
    "7.9": ("securityerror", "authentication mechanism is too weak"),
    "7.10": ("securityerror", "encryption needed"),
    "7.11": ("securityerror", "encryption required for requested authentication mechanism"),
    "7.12": ("securityerror", "a password transition is needed"),
    "7.13": ("suspend", "user account disabled"),
    "7.14": ("securityerror", "trust relationship required"),
    "7.15": ("securityerror", "priority level is too low"),
    "7.16": ("emailtoolarge", "message is too big for the specified priority"),
    "7.17": ("hasmoved", "mailbox owner has changed"),
    "7.18": ("hasmoved", "domain owner has changed"),
    "7.19": ("securityerror", "RRVS test cannot be completed"),
    "7.20": ("authfailure", "no passing DKIM signature found"),
    "7.21": ("authfailure", "no acceptable DKIM signature found"),
    "7.22": ("authfailure", "no valid author-matched DKIM signature found"),
    "7.23": ("authfailure", "SPF validation failed"),
    "7.24": ("authfailure", "SPF validation error"),
    "7.25": ("requireptr", "reverse DNS validation failed"),
    "7.26": ("authfailure", "multiple authentication checks failed"),
    # RFC 7505 X.7.27 "sender address has null MX": about the sender, so never a hard bounce
    "7.27": ("rejected", "sender address has null MX"),
}
# A detail code this table does not know still has a subject (RFC 3463 section 2).
STATUS_SUBJECT: Final[dict[str, tuple[str, str]]] = {
    "3": ("systemerror", "mail system status"),
    "4": ("networkerror", "network and routing status"),
    "6": ("contenterror", "message content or media status"),
    "7": ("securityerror", "security or policy status"),
}

# The few reply codes that carry one meaning of their own (RFC 5321, RFC 7504, RFC 4954).
REPLY_CODES: Final[dict[int, tuple[str, str]]] = {
    500: ("syntaxerror", "syntax error, command unrecognized"),
    501: ("syntaxerror", "syntax error in parameters or arguments"),
    502: ("syntaxerror", "command not implemented"),
    503: ("syntaxerror", "bad sequence of commands"),
    504: ("syntaxerror", "command parameter not implemented"),
    521: ("notaccept", "host does not accept mail (RFC 7504)"),
    556: ("notaccept", "domain does not accept mail (RFC 7504)"),
    530: ("securityerror", "authentication required"),
    534: ("securityerror", "authentication mechanism is too weak"),
    535: ("securityerror", "authentication credentials invalid"),
    538: ("securityerror", "encryption required for requested authentication mechanism"),
}

# Where in the SMTP dialogue the failure happened, as the usual MTAs write it.
_STAGE_ROWS: Final[tuple[tuple[str, str], ...]] = (
    ("RCPT", r"in reply to rcpt to command|after rcpt to:|did not like our rcpt to|does not like recipient|rcpt to generated|sent: rcpt to:"
             r"|>>> rcpt to|\[rcpt_to\]"),
    ("DATA", r"in reply to (?:end of )?data command|after (?:end of )?data\b|did not like our (?:final )?data"
             r"|failed after i sent the message|>>> data\b|\[(?:end_of_)?data\]"),
    ("MAIL", r"in reply to mail from command|after mail from:|sender was rejected|>>> mail from|\[mail_from\]"),
    ("HELO", r"in reply to (?:ehlo|helo) command|after (?:ehlo|helo)\b|my name was rejected|\[(?:ehlo|helo)\]"),
    ("CONN", r"refused to talk to me|after initial connection|in reply to (?:the )?initial greeting"),
)

_COMMAND_STAGE: Final = {"RCPT": "RCPT", "DATA": "DATA", "BDAT": "DATA", "MAIL": "MAIL", "HELO": "HELO",
                         "EHLO": "HELO", "CONN": "CONN", "CONNECT": "CONN"}
# Reasons about the recipient address, which a refusal at an earlier stage cannot be.
_FIXED_REASON: Final = {Kind.COMPLAINT: "feedback", Kind.AUTOREPLY: "vacation", Kind.DELIVERED: "delivered"}
_ADDRESS_REASONS: Final = frozenset({"userunknown", "filtered", "suspend", "hostunknown"})

# The userunknown phrases that filters reuse (KDDI, docomo, many gateways say "user unknown" after
# DATA for an address that RCPT accepted): only these yield to the stage and to a contradicting status.
_GENERIC_USERUNKNOWN: Final = re.compile(r"user ?unknown|unknown user|mail ?box (?:is )?(?:unavailable|not available)|address rejected")
# (the look-behind follows the first digit so that the engine can skip ahead to a 2, 4 or 5)
_STATUS_RE: Final = re.compile(r"([245])(?<![\w.][245])\.([0-7])\.(\d{1,3})(?![\d.])")
_REPLY_RE: Final = re.compile(r"([245])(?<![\w.:-][245])([0-5]\d)(?=[ \-:]|$)")
_LEADING_REPLY_RE: Final = re.compile(r"^\s*(?:[a-z][\w.-]{0,20};\s*)?[#(\[]?([245][0-5]\d)(?:[ \-:)\]]|$)", re.I)
_BROKEN_RE: Final = re.compile(r"reset|closed|lost|dropped")  # a connection made, then broken: not a retry story
_MULTILINE_RE: Final = re.compile(r"([245])(?<![\w.][245])([0-5]\d)-#?[245]\.\d{1,3}\.\d{1,3} ")


# --------------------------------------------------------------------------------------------
# The fast search. Every row is split into its top-level alternatives and, for each, the strings
# one of which every match must contain are read from the pattern text (by a small tokenizer,
# not the stdlib's regex parser: this runs at import, on every start-up of a one-shot command).
# A text is looked at once: its 4-character substrings, against an index of those strings, name
# the few alternatives that can match anywhere in it; only those whose strings are all there are
# searched, a plain string with str.find, a pattern compiled on first use. A call costs a handful
# of small searches, and a command compiles only what its mails need, not every table.
# --------------------------------------------------------------------------------------------
_TOKEN_RE: Final = re.compile(
    r"\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|\(\?<?[=!]|\(\?:|[()|]|[?*+]\??|\{\d*(?:,\d*)?\}\??|[^\\\[\]()|?*+{.^$]+|.", re.S
)
_SPECIAL: Final = frozenset("\\[(|)?*+{.^$")  # the characters that open a token other than plain text
_KEY_LEN: Final = 4  # the index holds 4-character substrings of the necessary strings
_KEY_STEP: Final = 2  # a text is read at every other position (see _build_index)


def _atoms(tokens: list[str], i: int = 0) -> tuple[list[list[tuple]], int]:
    """The branches of a (sub)pattern, from tokens[i] to the ")" that closes it, as atoms:
    ("str", text), ("set", chars), ("any",), ("zero",), ("group", branches), ("rep", atom, least)."""
    branches: list[list[tuple]] = []
    seq: list[tuple] = []
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        first = tok[0]
        if tok == ")":
            break
        if tok == "|":
            branches.append(seq)
            seq = []
        elif first in "?*+" or (first == "{" and len(tok) > 1):
            least = 1 if first == "+" else int(tok[1:].split(",")[0].rstrip("}?") or 0) if first == "{" else 0
            atom = seq.pop()
            if atom[0] == "str" and len(atom[1]) > 1:  # a quantifier binds the last character only
                seq.append(("str", atom[1][:-1]))
                atom = ("str", atom[1][-1])
            seq.append(("rep", atom, least))
        elif tok in ("(?:", "("):
            sub, i = _atoms(tokens, i)
            seq.append(("group", sub))
        elif tok.startswith("(?"):  # a look-around: zero width, what it looks at is no part of the match
            _sub, i = _atoms(tokens, i)
            seq.append(("zero",))
        elif first == "\\":
            escaped = tok[1]
            if escaped in "bBAZ":
                seq.append(("zero",))
            elif escaped.isalnum():  # \d \s \w ..., or an escape this reader does not know: not a literal
                seq.append(("any",))
            else:
                seq.append(("str", escaped))
        elif first == "[":
            chars = _class_chars(tok)
            seq.append(("set", chars) if chars else ("any",))
        elif tok in ("^", "$"):
            seq.append(("zero",))
        elif tok == ".":
            seq.append(("any",))
        else:
            seq.append(("str", tok))
    branches.append(seq)
    return branches, i


def _class_chars(tok: str) -> frozenset[str] | None:
    """The characters of a class that only lists characters ("[- ]", "[#(\\[]"); else None."""
    body, chars, i = tok[1:-1], set(), 0
    if body.startswith("^"):
        return None
    while i < len(body):
        c = body[i]
        if c == "\\":
            if body[i + 1].isalnum():
                return None
            chars.add(body[i + 1])
            i += 2
            continue
        if c == "-" and 0 < i < len(body) - 1:
            return None  # a range
        chars.add(c)
        i += 1
    return frozenset(chars)


def _needed(branches: list[list[tuple]]) -> frozenset[str] | None:
    """Strings one of which every match of these branches contains (None: no such set found).

    Used only to skip what cannot match: what it cannot analyse gets None and is always
    searched, so the shortcut never changes an answer."""
    found = [_best(_required(seq)) for seq in branches]
    return None if any(f is None for f in found) else frozenset().union(*found)


def _best(sets: list[frozenset[str]]) -> frozenset[str] | None:
    """The most telling of several such sets: the longest strings, then the fewest."""
    return max(sets, key=lambda s: (min(map(len, s)), -len(s))) if sets else None


def _required(seq: list[tuple]) -> list[frozenset[str]]:
    """Sets of strings that every match of this sequence contains one of, each set on its own."""
    found: list[frozenset[str]] = []
    run = {""}  # the literal text that must appear here, in each of its possible spellings
    for atom in seq:
        kind = atom[0]
        if kind == "zero":
            continue  # zero width: the text on either side is contiguous
        if kind == "str":
            run = {r + atom[1] for r in run}
            continue
        if kind == "set" and len(run) * len(atom[1]) <= 16:
            run = {r + c for r in run for c in atom[1]}
            continue
        if min(map(len, run)) > 0:  # anything else ends the run of literal text
            found.append(frozenset(run))
        run = {""}
        if kind == "rep":
            if atom[2] < 1:
                continue  # optional: requires nothing
            atom = atom[1]
            kind = atom[0]
        sub = (_needed(atom[1]) if kind == "group" else frozenset((atom[1],)) if kind == "str"
               else atom[1] if kind == "set" else None)
        if sub:
            found.append(sub)
    if min(map(len, run)) > 0:
        found.append(frozenset(run))
    return found


def _split_top(tokens: list[str]) -> list[list[str]]:
    """The top-level alternatives of a tokenized pattern."""
    parts: list[list[str]] = [[]]
    depth = 0
    for tok in tokens:
        if tok == "|" and depth == 0:
            parts.append([])
            continue
        if tok[0] == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        parts[-1].append(tok)
    return parts


class _Alt:
    """One top-level alternative of a row. `triggers`: strings one of which each of its matches
    contains (None: not known, always searched), the ones the index knows it by; `requires`: more
    such sets, each also needed; `needs`: all of them, checked before it is searched. A plain
    string (half of them) is looked for with str.find; a pattern is compiled on first use."""

    __slots__ = ("pattern", "table", "reason", "row", "triggers", "requires", "needs", "literal", "_compiled")

    def __init__(self, tokens: list[str], table: int, reason: str, row: int):
        self.pattern, self.table, self.reason, self.row = "".join(tokens), table, reason, row
        self._compiled: re.Pattern[str] | None = None
        if all(tok[0] not in _SPECIAL or (tok[0] == "\\" and not tok[1].isalnum()) for tok in tokens):
            # A plain string: its only need is itself, which finding it checks.
            self.literal = "".join(tok if tok[0] != "\\" else tok[1] for tok in tokens)
            self.triggers, self.requires, self.needs = (self.literal,), (), ()
            return
        self.literal = None
        branches = _atoms(tokens)[0]
        sets = _required(branches[0]) if len(branches) == 1 else [s for s in (_needed(branches),) if s]
        best = _best(sets)
        self.triggers = tuple(sorted(best)) if best else None
        # (short strings are in nearly every text: checking them would cost more than it saves)
        self.requires = tuple(tuple(sorted(s)) for s in sets if s is not best and min(map(len, s)) >= 3)
        self.needs = ((self.triggers,) if self.triggers else ()) + self.requires

    def find(self, text: str) -> tuple[int, str] | None:
        """(start, matched text) of its leftmost match in `text`, or None."""
        if self.literal is not None:
            at = text.find(self.literal)
            return (at, self.literal) if at >= 0 else None
        if self._compiled is None:
            self._compiled = re.compile(self.pattern)
        m = self._compiled.search(text)
        return (m.start(), m.group(0)) if m is not None else None


_ALTS: list[_Alt] = []  # every alternative of every table, in table then row order: an id is an index here


def _tables(tables: tuple[tuple[str, tuple[Row, ...]], ...]):
    """(reason, alternatives, rows, triggers) per table, and the range of its tables' ids in _ALTS.
    `triggers`: strings one of which every match in the table contains (None: not known)."""
    out = []
    first = len(_ALTS)
    for reason, rows in tables:
        table = _ALTS[-1].table + 1 if _ALTS else 0
        alts = tuple(
            _Alt(tokens, table, reason, row)
            for row, (rx, _example) in enumerate(rows) for tokens in _split_top(_TOKEN_RE.findall(rx))
        )
        _ALTS.extend(alts)
        known = all(a.triggers is not None for a in alts)
        triggers = tuple(sorted({t for a in alts for t in a.triggers})) if known else None
        out.append((reason, alts, rows, triggers))
    return tuple(out), range(first, len(_ALTS))


for _reason, _rows in PHRASES + WEAK_PHRASES:
    if _reason not in REASONS:
        raise ValueError(f"{_reason!r} is not in proxy.model.REASONS")
_PHRASES, _PHRASE_IDS = _tables(PHRASES)
_WEAK, _WEAK_IDS = _tables(WEAK_PHRASES)
_STAGE, _STAGE_IDS = _tables((("stage", tuple((rx, name) for name, rx in _STAGE_ROWS)),))


def _build_index() -> tuple[dict[str, int], int, tuple[str, ...]]:
    """key -> the alternatives with a necessary string holding that key (one bit per alternative,
    bit i for _ALTS[i]); the alternatives without any; and the keys to look for whole.

    A text is read in 4-character substrings at every other position only (half the work), so
    a string is indexed by two consecutive substrings of its own, one of which that reading
    meets wherever the string sits: the pair that the fewest strings share (a rare key names
    few alternatives for nothing). A string too short for two is its own key, looked for whole.
    """
    strings = {t for alt in _ALTS for t in alt.triggers or ()}
    grams = {t: [t[i : i + _KEY_LEN] for i in range(len(t) - _KEY_LEN + 1)] for t in strings}
    shared: dict[str, int] = {}
    get = shared.get
    for keys in grams.values():
        for gram in set(keys):
            shared[gram] = get(gram, 0) + 1
    keys_of: dict[str, tuple[str, ...]] = {}
    whole = []
    for t, keys in grams.items():
        if len(keys) < _KEY_STEP:
            keys_of[t] = (t,)
            whole.append(t)
            continue
        costs = list(map(shared.__getitem__, keys))
        pairs = list(map(int.__add__, costs, costs[1:]))
        at = pairs.index(min(pairs))
        keys_of[t] = (keys[at], keys[at + 1])
    by_key: dict[str, int] = {}
    always = 0
    for i, alt in enumerate(_ALTS):
        if alt.triggers is None:
            always |= 1 << i
        for key in {key for t in alt.triggers or () for key in keys_of[t]}:
            by_key[key] = by_key.get(key, 0) | 1 << i
    return by_key, always, tuple(sorted(whole))


_BY_KEY, _ALWAYS, _WHOLE_KEYS = _build_index()
_KEYS: Final = frozenset(key for key in _BY_KEY if len(key) == _KEY_LEN)
_PHRASE_BITS: Final = (1 << _PHRASE_IDS.stop) - (1 << _PHRASE_IDS.start)
_WEAK_BITS: Final = (1 << _WEAK_IDS.stop) - (1 << _WEAK_IDS.start)
_STAGE_BITS: Final = (1 << _STAGE_IDS.stop) - (1 << _STAGE_IDS.start)


def _candidates(text: str) -> int:
    """The alternatives that may match somewhere in `text` (bit i for _ALTS[i]): those with a
    necessary string whose key occurs in it. One pass over the text serves every table."""
    found = _ALWAYS
    for key in _KEYS.intersection([text[i : i + _KEY_LEN] for i in range(0, len(text) - _KEY_LEN + 1, _KEY_STEP)]):
        found |= _BY_KEY[key]
    for key in filter(text.__contains__, _WHOLE_KEYS):
        found |= _BY_KEY[key]
    return found


def _first_match(text: str, candidates: int, tables: int) -> tuple[str, int, str] | None:
    """(reason, row, matched text) of the first table among `tables` (bits of their alternatives)
    that matches `text`: at its leftmost match, the first row (alternative) in order, as one
    alternation of the table would."""
    contains = text.__contains__
    best = None
    table = -1
    bits = candidates & tables
    while bits:
        low = bits & -bits  # the lowest bit: alternatives are tried in order
        bits ^= low
        alt = _ALTS[low.bit_length() - 1]
        if alt.table != table:
            if best is not None:
                break  # an earlier table matched
            table = alt.table
        for strings in alt.needs:
            if not any(map(contains, strings)):
                break  # a string it needs is missing: it cannot match
        else:
            found = alt.find(text)
            if found is not None and (best is None or found[0] < best[0][0]):
                best = (found, alt)
    if best is None:
        return None
    (_start, matched), alt = best
    return alt.reason, alt.row, matched


def normalise(text: str | None) -> str:
    """The form every PHRASES pattern is written against: lower case, white space collapsed, and
    the reply code that prefixes each line of a multi-line reply ("550-5.7.1 ... 550 5.7.1 ...")
    kept only once, so that a phrase broken over two lines reads whole again."""
    if not text:
        return ""
    text = " ".join(text.replace("\u2019", "'").split()).lower()  # = \s+ -> " ", stripped
    m = _MULTILINE_RE.search(text)
    if m:
        again = re.compile(rf" {m.group(1)}{m.group(2)}[ -](?:#?[245]\.\d{{1,3}}\.\d{{1,3}} )?")
        text = text[: m.end()] + again.sub(" ", text[m.end():])
    return text


def match_phrase(text: str, weak: bool = False, candidates: int | None = None) -> tuple[str, int, str] | None:
    """First table (in order) with a row matching normalised `text`: (reason, row number, matched text).
    `candidates`: what `_candidates(text)` gives, when the caller has it already."""
    if candidates is None:
        candidates = _candidates(text)
    return _first_match(text, candidates, _WEAK_BITS if weak else _PHRASE_BITS)


def parse_status(value: str | None) -> str | None:
    """A valid enhanced status code in `value` (e.g. '5.0.0 (undefined status)' -> '5.0.0'), else None."""
    if not value:
        return None
    m = _STATUS_RE.search(value.strip())
    return m.group(0) if m else None


def find_status(text: str) -> str | None:
    """The most specific enhanced status code in a diagnostic text: the first that is not X.0.0."""
    generic = None
    for m in _STATUS_RE.finditer(text):
        if m.group(2) != "0" or m.group(3) != "0":
            return m.group(0)
        generic = generic or m.group(0)
    return generic


def find_reply_code(text: str) -> int | None:
    """The SMTP reply code at the start of a reply ('550 ...', 'smtp; 550-5.1.1 ...'), else the first one inside."""
    if not text:
        return None
    m = _LEADING_REPLY_RE.match(text)
    if m:
        return int(m.group(1))
    m = _REPLY_RE.search(text)
    return int(m.group(1) + m.group(2)) if m else None


def _status_reason(status: str) -> tuple[str, str] | None:
    klass, subject, detail = status.split(".")
    hit = STATUS_REASON.get(f"{klass}.{subject}.{detail}") or STATUS_REASON.get(f"{subject}.{detail}")
    if hit:
        return hit
    if detail != "0" or subject in ("3", "4", "6"):
        sub = STATUS_SUBJECT.get(subject)
        if sub and not (subject == "7" and klass == "4"):
            return sub[0], f"{sub[1]}, detail {detail} unlisted"
    return None


def _meaning(status: str, sep: str = ": ") -> str:
    """' : RFC 3463 X.1.1 bad destination mailbox address' for the evidence, or '' when unlisted."""
    if status.endswith(".0.0"):
        return f"{sep}class {status[0]} only" if sep == ": " and status[0] in "45" else ""
    found = _status_reason(status)
    return f"{sep}RFC 3463 X.{status[2:]} {found[1]}" if found else ""


def _is_vague(status: str) -> bool:
    """X.0.0 (other) and X.1.0 (other address status): a gateway's wrapper around the real reply."""
    return status[1:] in (".0.0", ".1.0")


def _row_evidence(table: str, reason: str, row: int, matched: str) -> str:
    shown = matched if len(matched) <= 60 else matched[:57] + "..."
    return f'text matched "{shown}" ({reason} {table}, row {row + 1})'


def classify(
    status: str | None = None,
    smtp_code: int | None = None,
    diagnostic: str | None = None,
    kind: Kind = Kind.BOUNCE,
    action: str | None = None,
    *,
    command: str | None = None,
) -> Verdict:
    """Reason, hard/soft and the honest status of one failed (or delayed...) recipient.

    `status`: the DSN's Status field, or the enhanced code of an SMTP reply; `smtp_code`: the
    reply code; `diagnostic`: the text (Diagnostic-Code, the reply line, or what a non-standard
    bounce says); `action`: the DSN Action; `command`: the SMTP command the reply answered, when
    the caller knows it (MAIL, RCPT, DATA, EHLO...).
    """
    kind = Kind(kind) if not isinstance(kind, Kind) else kind
    action_l = (action or "").strip().lower() or None
    text = normalise(diagnostic[:MAX_TEXT] if diagnostic else diagnostic)
    evidence: list[str] = []

    # --- the honest status ----------------------------------------------------------------
    dsn_status = parse_status(status)
    text_status = find_status(text) if text else None
    reply = smtp_code if isinstance(smtp_code, int) and 200 <= smtp_code <= 599 else None
    text_reply = find_reply_code(text) if (reply is None and text) else None
    if dsn_status:
        out_status, source = dsn_status, StatusSource.DSN
    elif text_status:
        out_status, source = text_status, StatusSource.TEXT
    elif reply or text_reply:
        out_status, source = f"{str(reply or text_reply)[0]}.0.0", StatusSource.REPLY_CODE
    elif action_l in ("failed", "delayed"):
        out_status, source = ("5.0.0" if action_l == "failed" else "4.0.0"), StatusSource.ACTION
    else:
        out_status, source = None, None
    # The code that decides the reason: a generic DSN status lets a specific one in the text speak.
    reason_status = dsn_status or text_status
    if not dsn_status or _is_vague(dsn_status):
        informing = next((m.group(0) for m in _STATUS_RE.finditer(text) if not _is_vague(m.group(0))), None)
        if informing and informing != dsn_status:
            reason_status = informing
    if out_status:
        evidence.append(f"status {out_status} ({source}{_meaning(out_status)})")
    if reason_status and reason_status != out_status:
        evidence.append(f"text code {reason_status} informs the reason{_meaning(reason_status, ': ')}")

    # --- fixed kinds ------------------------------------------------------------------------
    fixed = _FIXED_REASON.get(kind)
    if fixed is None and out_status and out_status.startswith("2") and kind is Kind.BOUNCE and action_l not in ("failed", "delayed"):
        fixed = "delivered"
    if fixed:
        evidence.insert(0, f"kind {kind}: reason {fixed}, no hard/soft")
        return Verdict(fixed, BounceType.UNDETERMINED, out_status, source, "; ".join(evidence))

    # --- reason -------------------------------------------------------------------------------
    reason = None
    candidates = _candidates(text) if text else 0  # what may match, for every table below
    stage = _COMMAND_STAGE.get((command or "").strip().upper())
    if stage:
        evidence.append(f"command {command.strip().upper()}")
    elif text:
        sm = _first_match(text, candidates, _STAGE_BITS)
        if sm:
            stage = _STAGE_ROWS[sm[1]][0]
            evidence.append(f'stage {stage} ("{sm[2]}")')

    hit = match_phrase(text, candidates=candidates) if text else None
    if hit:
        reason = hit[0]
        evidence.insert(0, _row_evidence("table", reason, hit[1], hit[2]))
        reason = _by_stage(reason, stage, reason_status, evidence, generic=bool(_GENERIC_USERUNKNOWN.search(hit[2])))
    delayed = kind is Kind.DELAY or action_l == "delayed"
    if reason is None and stage in ("HELO", "CONN") and not delayed:
        reason = "blocked"
        evidence.append(f"refused at {stage}, before any recipient was named: blocked")
    if reason is None and reason_status:
        found = _status_reason(reason_status)
        if found:
            reason = found[0]
            evidence.append(f"reason from status {reason_status}: {found[0]}")
            reason = _by_stage(reason, stage, reason_status, evidence)
    if reason is None and text:
        weak = match_phrase(text, weak=True, candidates=candidates)
        if weak:
            reason = weak[0]
            evidence.insert(0, _row_evidence("weak table", reason, weak[1], weak[2]))
            if reason == "networkerror" and (delayed or action_l == "failed") and not _BROKEN_RE.search(weak[2]):
                reason = "expired"
                evidence.append("a DSN whose only symptom is the connection: retried until it expired")
            reason = _by_stage(reason, stage, reason_status, evidence)
    if reason is None and stage == "MAIL":
        reason = "rejected"
        evidence.append("refused at MAIL FROM with no other cause: the sender was rejected")
    code = reply or text_reply
    if reason is None and code in REPLY_CODES:
        reason = REPLY_CODES[code][0]
        evidence.append(f"reply code {code}: {REPLY_CODES[code][1]}")
    if reason is None:
        if delayed:
            reason = "expired"
            evidence.append("delayed and nothing more specific: expired")
        elif text:
            reason = "onhold"
            evidence.append("text present but nothing recognised: onhold")
        elif source in (StatusSource.DSN, StatusSource.REPLY_CODE):
            reason = "onhold"
            evidence.append("a failure that says nothing of its cause: onhold")
        else:
            reason = "undefined"
            evidence.append("nothing to go on")

    # --- hard / soft ------------------------------------------------------------------------
    klass = _failure_class(dsn_status, reply, text_status, text_reply, action_l)
    if reason == "undefined" or kind is Kind.UNKNOWN:
        bounce_type = BounceType.UNDETERMINED
    elif delayed:
        bounce_type = BounceType.SOFT
        evidence.append("soft: a delay is not final")
    elif reason in HARD_REASONS and klass == "5":
        bounce_type = BounceType.HARD
        evidence.append("hard: the address itself is bad, permanently")
    else:
        bounce_type = BounceType.SOFT
        if reason in HARD_REASONS:
            evidence.append("soft: not a permanent failure" if klass == "4" else "soft: permanence not shown")
    return Verdict(reason, bounce_type, out_status, source, "; ".join(evidence))


def _by_stage(reason: str, stage: str | None, status: str | None, evidence: list[str], generic: bool = True) -> str:
    """What the SMTP stage says about a reason that would concern the recipient address."""
    if reason not in _ADDRESS_REASONS:
        return reason
    if stage == "MAIL":
        evidence.append(f"refused at MAIL FROM: about the sender, not the recipient: rejected, not {reason}")
        return "rejected"
    if stage in ("HELO", "CONN"):
        evidence.append(f"refused at {stage}, before any recipient was named: blocked, not {reason}")
        return "blocked"
    if reason == "userunknown" and generic and _subject(status) != "1":
        if stage == "DATA":
            evidence.append("refused after DATA, the address having passed RCPT, with no X.1 status: filtered")
            return "filtered"
        if stage != "RCPT" and _subject(status) in ("2", "3", "6", "7"):
            evidence.append(f"status {status} contradicts a missing mailbox: filtered")
            return "filtered"
    return reason


def _subject(status: str | None) -> str | None:
    return status.split(".")[1] if status else None


def _failure_class(dsn_status, reply, text_status, text_reply, action) -> str | None:
    for value in (dsn_status, reply, text_status, text_reply):
        if value:
            return str(value)[0]
    return {"failed": "5", "delayed": "4"}.get(action or "")


def classify_reply(line: str, kind: Kind = Kind.BOUNCE, *, command: str | None = None) -> Verdict:
    """Classify one raw SMTP reply or diagnostic line, e.g.
    ``550 5.1.1 <a@b>: Recipient address rejected: User unknown`` or ``smtp; 550-5.1.1 ...``.

    The leading reply code and the reply's enhanced code are taken from the line (the enhanced
    code then counts as the reply's own status, as the relay's replies do)."""
    text = (line or "").strip()
    code = find_reply_code(text)
    status = None
    m = re.match(r"^\s*(?:[a-z][\w.-]{0,20};\s*)?[#(\[]?[245][0-5]\d[ \-:)\]]+#?([245]\.[0-7]\.\d{1,3})(?![\d.])", text, re.I)
    if m:
        status = m.group(1)
    return classify(status, code, text, kind, command=command)


def explain(verdict: Verdict) -> str:
    """One line for an operator: reason, bounce type, status and why."""
    status = f"{verdict.status} ({verdict.status_source})" if verdict.status else "no status"
    return f"{verdict.reason} / {verdict.bounce_type} / {status} -- {verdict.evidence}"
