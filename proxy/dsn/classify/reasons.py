"""Reason tables for diagnostic texts: one table per reason, checked in this order.

Each row is ``(regex, a real example line, where the phrase comes from)``. Patterns are written in
lower case against the diagnostic as `normalise` leaves it (lower case, runs of white space collapsed,
a multi-line reply's repeated codes dropped); only non-capturing groups and bounded repeats. The order
of the tables matters where phrases overlap: an RBL listing that says "blocked using" is ``blocked``
before anything can call it ``userunknown``. Provider-specific rows live in `providers`.
"""
from __future__ import annotations

from typing import Final

Row = tuple[str, str, str]  # (regex over normalised lower-case text, a real example line, its source)

PHRASE_TABLES: Final[tuple[tuple[str, tuple[Row, ...]], ...]] = (
    ("suppressed", (
        (r"(?:recipient|address) (?:is )?(?:on|in) (?:the|our|a) suppression list|suppressed recipient",
         '550 5.1.1 Recipient address is on the suppression list',
         'suppression-list replies of ESPs (SES, SendGrid, Mailgun)'),
    )),
    ("virusdetected", (
        (r"\bvirus(?:es)? (?:was |were |has been )?(?:detected|found)|virus[- ]infected"
         r"|infected with (?:a )?(?:virus|malware|trojan)",
         '550 5.7.0 <virusdetected@libsisimai.net>: Recipient address rejected: Virus detected.',
         'Postfix/amavis virus refusals (samples)'),
        (r"(?:message|attachment|mail) contains? (?:a |an )?(?:virus|malware|trojan|malicious)|prohibited virus",
         '550 5.7.1 The message was rejected because it contains prohibited virus or spam content',
         'Microsoft 365 NDR / gateway virus refusals'),
        (r"malware (?:was )?(?:detected|found)"
         r"|malicious(?:_url| url| content| attachment| payload| file)s? (?:was |were )?(?:detected|found)"
         r"|potentially executable attachment|used by recent viruses",
         '552-5.7.0 This message was blocked because its content presents a potential security issue. It has a potentially executable attachment.',
         'Gmail SMTP error reference 552-5.7.0 executable attachment'),
    )),
    ("authfailure", (
        (r"\bdmarc\b",
         '550 5.7.509 Access denied, sending domain [EXAMPLE.JP] does not pass DMARC verification and has a DMARC policy of reject.',
         'Microsoft 365 NDR 5.7.509 DMARC; Gmail 5.7.26'),
        (r"\bspf\b.{0,40}?(?:fail|not pass|invalid|error|reject)|(?:fail(?:s|ed)?|not pass) (?:the )?spf\b|sender policy framework"
         r"|bad spf records?|inspect your spf settings|spf\.pobox\.com|per it'?s spf record",
         '550 5.7.23 SPF validation failed for sender domain example.com',
         'RFC 7372 X.7.23; Gmail, Microsoft SPF refusals'),
        (r"(?:no|missing|invalid|bad|broken|failed) (?:passing |valid |acceptable )?dkim\b"
         r"|\bdkim (?:signature )?(?:check |validation |verification )?(?:fail|did not|does not|not valid|invalid)",
         '550 5.7.20 No passing DKIM signature found',
         'RFC 7372 X.7.20; Gmail DKIM refusals'),
        (r"(?:fails|failed|does not|doesn't) (?:to )?pass authentication checks|authentication checks? (?:fail|did not pass)"
         r"|does not have authentication information",
         '550 5.7.1 This message does not have authentication information or fails to pass authentication checks.',
         'Gmail SMTP error reference 550-5.7.1 unauthenticated'),
        (r"sender is unauthenticated|unauthenticated (?:e-?mail|mail|messages?) from|required authentication level"
         r"|authentication requirements defined for the sender",
         '550-5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.',
         'Gmail SMTP error reference 550-5.7.26'),
    )),
    ("requireptr", (
        (r"reverse (?:dns|lookup|hostname|resolution|mapping|host name)|\brdns\b|\bptr(?:-| )(?:records?|resource record|lookup)",
         '554 5.7.1 Reverse DNS lookup for host 203.0.113.22 failed permanently.',
         'RFC 7372 X.7.25; Gmail PTR refusals'),
        (r"cannot find your (?:reverse )?hostname|(?:no|missing|invalid|bad) (?:dns )?ptr\b|does not have a ptr"
         r"|ip name lookup failed|cannot resolve your address|forward dns entry does not point to the sending ip"
         r"|unresolvable relay host name",
         '450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]',
         'Postfix reject_unknown_client_hostname'),
        (r"domain \[?[^\]\s]{1,255}\]? mismatches client ip|unverifyable sending ips",
         '550 domain [example.com] mismatches client ip 192.0.2.225.',
         'Chinese providers (QQ/163) PTR mismatch (samples)'),
    )),
    ("badreputation", (
        (r"(?:low|poor|bad) (?:e-?mail )?reputation|reputation (?:is )?(?:too )?(?:low|poor)|reputation (?:score|problems)"
         r"|due to (?:the )?(?:ip |sender |domain |sending )?reputation",
         '550-5.7.1 Our system has detected that this message is likely suspicious due to the very low reputation of the sending IP address.',
         'Gmail SMTP error reference 550-5.7.1 low reputation'),
    )),
    ("spamdetected", (
        (r"(?:scored|considered|classified|identified|detected|flagged|marked|tagged|rejected|blocked|refused|treated) (?:as |due to |because of |for )?(?:an? )?(?:probable |possible |likely |suspected )?spam\b"
         r"|spam classification",
         '554 5.6.0 This message has been scored as spam with a probability of more than 90%',
         'Sendmail/milter, gateway spam scores (samples)'),
        (r"\bspam (?:message|content|detected|score|e-?mail|mail|check|points|rejection|refused|not accepted|blocked|complaints|filter|abuse)"
         r"|suspicion of spam"
         r"|(?:looks?|looked|appears?|seems?|thinks?|probably|likely|similar to) (?:\S{1,40} ){0,3}?(?:like |to be )?(?:a |an )?spam\b"
         r"|(?:probable|possible|suspected) spam\b|spam-like",
         '554 5.7.1 Message rejected under suspicion of SPAM; https://ya.cc/1IrBc 1606381234-abCdEf1aBc',
         'Yandex/Mail.ru spam refusals (samples)'),
        (r"message content rejected|unsolicited bulk e-?mail|\bube\b|likely unsolicited mail|appears to be unsolicited|- spam\b"
         r"|\bdt:spm\b|mail content denied|spamassassin|spamprofiler|spambouncer|recurrent pattern detection|\buribl\b"
         r"|antispam checks|bulk (?:e-?mail|mail)\b|unacceptable content|banned content|content filter"
         r"|due to (?:a |the )?spam ?list|junk (?:e-?)?mail filter|(?:rejected|blocked) by (?:our |the )?(?:spam|junk) filter",
         '550 5.7.1 Message content rejected, UBE, id=22220-02-222',
         "amavis 'Message content rejected, UBE'; SpamAssassin, Cloudmark"),
    )),
    ("toomanyconn", (
        (r"too many (?:concurrent |simultaneous |open |parallel )?(?:smtp )?(?:connections|sessions)|trop de connexions"
         r"|maximum connection limit",
         '421 Too many concurrent SMTP connections',
         'Postfix smtpd_client_connection_count_limit; qmail/Exim concurrency refusals'),
        (r"connection (?:rate|frequency|count) (?:limit(?:ed)?|exceeded)|(?:ip|connection) frequency limited"
         r"|connection limit (?:exceeded|reached|for)|per-domain connection limit",
         '452 4.3.2 Connection rate limit exceeded.',
         'Postfix anvil rate limits; Microsoft 4.3.2'),
        (r"too many recipients|too many errors from your ip|max emails per hour|numerous attempts to deliver this message",
         '552 Too many recipients',
         'RFC 5321 452 too many recipients; Postfix smtpd_recipient_limit'),
    )),
    ("speeding", (
        (r"rate[- ]limit(?:ed|ing)?\b|throttl(?:ed|ing)\b|receiving mail (?:at )?a rate"
         r"|(?:message|mail|sending) rate (?:limit )?exceeded|try again slower|sending too (?:fast|quickly)"
         r"|submission quota exceeded|sending (?:quota|limits?) (?:exceeded|reached)|user sending limit",
         '421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.',
         "Gmail SMTP error reference 421-4.7.28 rate limited, 550-5.4.5 daily user sending limit; Microsoft 365 NDR 5.2.2 submission quota"),
        (r"too many (?:messages|mails|e-?mails)\b(?! (?:on the server|in (?:the |this |your |his |her |its )?(?:mail ?box|inbox|folder)|stored))|reached (?:your|the) (?:daily|hourly) (?:\S{1,40} )?(?:quota|limit)"
         r"|(?:daily|hourly) (?:sending |message |relay )?(?:quota|limit) (?:exceeded|reached)",
         "554 neko-22.nyaan.r.example.net : CAT : neko22 : CAT : You've reached your daily relay quota - 203.0.113.0",
         'ISP relay quotas (samples); Yahoo/Outlook daily limits'),
    )),
    ("rejected", (
        (r"sender address rejected|domain of sender address .{1,255}? does not exist"
         r"|sender (?:address )?(?:verify|verification) (?:failed|error)"
         r"|sender(?:'s)? (?:address |e-?mail )?domain (?:\S{1,255} )?(?:does not|doesn't|not) exists?"
         r"|sender (?:address |e-?mail )?domain (?:is )?(?:not found|unknown|not resolvable|has no mx|must exist)"
         r"|your (?:sender |e-?mail )?domain (?:has no|does not have an?|without an?) mx|envelope sender (?:has been |was )?(?:denied|rejected)"
         r"|badmailfrom|sender verify callout|sender callout (?:failed|verification)",
         '553 5.1.8 <httpd@host1.mx.example.jp>... Domain of sender address httpd@host1.mx.example.jp does not exist',
         "Postfix reject_unknown_sender_domain; Sendmail 553 5.1.8; qmail 'envelope sender has been denied', badmailfrom; Exim sender verify callout"),
        (r"(?:invalid|bad|unknown|unverified|illegal|bogus) (?:envelope )?(?:sender|mail from|from address)(?! ip)"
         r"|sender (?:domain |address )?(?:is )?(?:invalid|unknown|not valid|not allowed|denied|not permitted|refused|empty)"
         r"|server rejected mail from address",
         '553 5.1.7 <nobody@example.invalid>... Invalid sender address',
         'Sendmail/Postfix invalid sender replies'),
        (r"\bfrom: domain is invalid|can't determine purported responsible address"
         r"|(?:null|empty) (?:envelope )?senders? (?:is |are )?not allowed|unrout(?:e)?able sender|mail from not owned by user"
         r"|this server does not accept mail from|administrative prohibition|emetteur invalide",
         "550 5.7.1 can't determine Purported Responsible Address",
         "Exchange Sender ID 'Purported Responsible Address'"),
        (r"batv (?:failed to verify|validation fail)|backscatter protection|bogus mail from|no third-party dsns"
         r"|without a valid sender domain|senderfilterconfig|denied \[bouncedeny\]|sender isn't on the recipient's list of senders"
         r"|sender (?:is )?not (?:on|in) (?:the )?(?:recipient's )?(?:list of )?(?:allowed|accepted) senders",
         '550 5.7.1 BATV failed to verify',
         "SonicWall BATV, MDaemon backscatter protection, IMail bogus MAIL FROM, McAfee bouncedeny, Exchange SenderFilterConfig"),
        (r"(?:sender|your e-?mail) address has been blacklisted|sender is (?:in my black ?list|a spammer|spammer)"
         r"|to/from an address that has been blacklisted",
         '553 5.1.8 Sender address has been blacklisted',
         'Sendmail access db; sender blacklist replies'),
        (r"not a member of (?:this|the) (?:mailing )?list|not (?:allowed|authorized|permitted) to post|permission to post"
         r"|group you tried to contact|groups\.google\.com/support",
         'You are not a member of this mailing list <neko-nyaan@example.org>.',
         'fml, Mailman, Google Groups non-member refusals'),
    )),
    ("blocked", (
        (r"blocked using |blocked by (?:\S{1,40} )?(?:dnsbl|rbl|spamhaus|spamcop|sorbs|barracuda)",
         '554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org',
         "Postfix reject_rbl_client 'blocked using'"),
        (r"\bspamhaus\b|\bspamcop\b|\bsorbs\b|\bdnsbl\b|\brbl\b|\buceprotect\b|barracudacentral|abuseat\.org",
         '553 http://www.spamhaus.org/query/bl?ip=192.0.2.222',
         'DNSBL operators named in replies (Spamhaus, SpamCop, SORBS, Barracuda, CBL)'),
        (r"(?:black|block|deny|ban) ?list(?:ed)?\b|blacklisted by",
         "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3140).",
         'Microsoft 365 / Outlook.com block list (S3140) and generic block lists'),
        (r"client host (?:\[[^\]]{0,80}\] )?(?:rejected|blocked)|helo command rejected|sender ip address rejected"
         r"|bad sender ip address",
         '554 5.7.1 <unknown[192.0.2.1]>: Client host rejected: Access denied',
         "Postfix check_client_access 'Client host rejected'; HELO restrictions"),
        (r"(?:your|sending|sender'?s?|client|remote|access from) (?:ip|host|server|network|mta)(?: address)? (?:\S{1,40} ){0,3}?(?:is |has been |was |are )?(?:blocked|blacklisted|banned|blocklisted)"
         r"|(?:mail server|ip) \S{1,255} is blocked|spam ips blocked|too many spams from your ip|(?:you are|currently) sending spam"
         r"|client blocked from sending"
         r"|looks suspiciously like spammer",
         '421 4.7.1 Sorry, your IP is blocked',
         'generic IP block replies (samples, provider error pages)'),
        (r"your access to (?:submit messages to )?this (?:e-?mail|mail) system has been rejected",
         '550 Your access to submit messages to this e-mail system has been rejected.',
         'Cisco IronPort (Secure Email) SBRS refusal'),
        (r"use (?:the )?(?:smtp|mail) (?:server|relay) of your (?:isp|provider)"
         r"|dynamic(?:ally assigned)? (?:ips?|address|pool|range)|\bdial-?up\b|residential (?:ip|address)",
         '550 5.7.0 <shironeko@example.jp>... Please use the smtp server of your ISP.',
         'dynamic/dial-up IP policies (Sendmail, Japanese ISPs)'),
        (r"a problem occurred\. \(ask your postmaster|service refuse|not accepting connections|envelope blocked"
         r"|you are not allowed to connect|rejecting open proxy|service not available, closing transmission channel"
         r"|was blocked by (?!(?:the )?recipient)|\(\S{1,255}@\S{1,255}:blocked\)",
         '421 mwinf5c77 ME Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR_999 [999]',
         'T-Online, Orange, La Poste, iCloud, Mimecast connection refusals'),
        (r"connection (?:reset by peer|dropped|was dropped by remote host|refused by)",
         '554 Remote protocol error: Connection reset by peer during result wait with example.edu',
         'a receiver dropping the connection (Sendmail transcripts)'),
    )),
    ("norelaying", (
        (r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited|refused)|unable to relay"
         r"|not configured to relay|(?:do|does|will) not relay|no relaying|relaying mail to \S{1,255} is not allowed"
         r"|not allowed to relay|insecure mail relay|not an open relay|as a relay\b|we don't handle mail for",
         '554 5.7.1 <kijitora@example.org>: Relay access denied',
         'Postfix reject_unauth_destination, Sendmail, Exim relay refusals'),
        (r"isn't in my list of allowed rcpthosts|not in my list of allowed rcpthosts",
         "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
         'qmail rcpthosts refusal'),
    )),
    ("filtered", (
        (r"refused due to recipient preferences|due to (?:the )?recipient'?s? (?:policy|preferences|settings)"
         r"|has a policy that prohibited the mail",
         '550 5.1.1 RCP-P2 http://postmaster.facebook.com/response_codes?ip=192.0.2.135#rcp Refused due to recipient preferences',
         'Facebook RCP-P2 and recipient policy refusals'),
        (r"only accepting mail from specific (?:e-?mail )?addresses|blocked by (?:the )?recipient"
         r"|user refuses to (?:accept|receive)|recipient (?:has )?(?:refused|rejected) (?:your|this|the) (?:message|mail|e-?mail)"
         r"|message rejected due to user rules|\bmessage filtered\b|account is protected by|refuse to receive mail"
         r"|is not accepting any mail|has restricted sms e-?mail|not accepting (?:e-?)?mail from",
         '554 5.7.1 This recipient is only accepting mail from specific email addresses',
         'recipient whitelists/filters (Yahoo, carriers, Mimecast)'),
    )),
    ("policyviolation", (
        (r"(?:policy|protocol) violation|not accepted for policy reasons"
         r"|(?:rejected|blocked|refused|denied|bounced) (?:due to|by|because of|for) (?:\S{1,40} ){0,3}?(?:polic(?:y|ies)|organizational settings)\b",
         '554 5.7.7 Email policy violation detected',
         'RFC 3463 X.7.7 wording; gateway policy refusals'),
        (r"content presents a potential|an illegal attachment|host network not allowed|does not allow external forwarding"
         r"|members-only list|closed mailing list|not accepting mail with (?:attachments|embedded)|using a mass mailer"
         r"|do not accept messages containing",
         '552-5.7.0 This message was blocked because its content presents a potential security issue. Please visit https://support.google.com/mail/answer/6590 to review our message content and attachment content guidelines.',
         'Gmail 552-5.7.0 content; Mimecast network/policy refusals'),
        (r"\bheader error\b",
         '554 5.7.0 Header error',
         'gateway header policy refusals (samples)'),
    )),
    ("securityerror", (
        (r"authentication (?:is )?required|requires? authentication|must (?:issue|use) (?:a )?starttls|starttls (?:is )?required"
         r"|tls (?:is )?not available|tls handshake fail"
         r"|(?:tls|encryption) (?:is )?required|resolver\.rst\.authrequired|authentication turned on in your email client",
         '530 Must issue a STARTTLS command first',
         'RFC 3207 530 STARTTLS; RFC 4954 530 authentication required'),
        (r"authentication (?:credentials invalid|failure|failed|unsuccessful)|unauthenticated senders? not allowed"
         r"|sender not authenticated|not authenticated|verification failure",
         '535 Authentication Credentials Invalid',
         'RFC 4954 535 authentication credentials invalid'),
        (r"delivery not authorized|not authorized to (?:send|relay|submit|perform)|executable files are not allowed",
         '551 5.7.1 <securityerror@libsisimai.net>: Recipient address rejected: Delivery not authorized.',
         "Postfix check_recipient_access 'Delivery not authorized'"),
    )),
    ("notcompliantrfc", (
        (r"multiple addresses in from:|not rfc ?(?:2822|5322|822) compliant|rfc ?(?:2822|5322) (?:violation|error)|violates rfc"
         r"|rfcmessagenoncompliant",
         '550-5.7.1 Messages with multiple addresses in From: header are not accepted.',
         'Gmail 550-5.7.1 RFC 5322 compliance'),
        (r"duplicate header|illegal header|\bno [\w-]{1,30} (?:field|header) given|multiple \S{1,40} headers?\b"
         r"|missing (?:required )?(?:from|date|message-id|subject|to) header|bare (?:<?lf>?|line ?feeds?)\b|barelinefeedsareillegal",
         "554 Transaction failed: Duplicate header 'DKIM-Signature'.",
         'SES / Gmail header compliance refusals'),
    )),
    ("contenterror", (
        (r"8-?bit data|invalid mime|mime (?:complexity|structure|syntax)|malformed (?:message|mime|header)|improperly.formatted"
         r"|unnecessary base64",
         '550 5.6.9 improper use of 8-bit data in message header',
         'RFC 6152 8-bit data; MIME refusals'),
        (r"(?:message )?header (?:size|line)s?\b.{0,40}?exceed|lines? too long|line length exceeded"
         r"|(?:media|content) type not supported|conversion (?:failed|required)",
         '550 5.6.0 Message header size, or recipient list, exceeds policy limit',
         'header size / line length refusals (Exchange, Postfix)'),
    )),
    ("systemfull", (
        (r"insufficient system (?:storage|resources)|mail system full|system (?:storage|disk) (?:is )?full"
         r"|server (?:is )?(?:too )?busy|too busy",
         '452 4.3.1 Insufficient system storage',
         'RFC 3463 X.3.1; Postfix 452 insufficient system storage'),
    )),
    ("mailboxfull", (
        (r"mail ?(?:box|folder) (?:\S{1,40} ){0,3}?(?:is )?(?:full|over|exceed(?:s|ed)?|would exceed)"
         r"|inbox is (?:full|out of storage)|account is full|full mailbox|destinataire pleine",
         '550 5.2.2 <kijitora@example.jp>... Mailbox Full',
         "Sendmail/Postfix local delivery 'Mailbox full'"),
        (r"over (?:the )?(?:allowed |storage )?quota|overquota|quota (?:exceeded|violation)"
         r"|exceed(?:s|ed|ing) (?:\S{1,40} ){0,2}?quota|exceeded (?:\S{1,40} ){0,2}?(?:storage|quota)"
         r"|(?:disk|storage|mailbox|maildir|user) quota",
         '552 5.2.2 Over quota',
         'RFC 3463 X.2.2; qmail/Courier/Dovecot quota replies'),
        (r"out of storage|storage space|insufficient (?:user |disk )?(?:storage|space)"
         r"|not (?:enough|sufficient) (?:storage|space|disk)|exceeds allowed size|no space left on device|space has been used up"
         r"|too many messages on the server|too much mail data|too many messages in (?:the |this |your |his |her |its )?(?:mail ?box|inbox|folder)"
         r"|exceed (?:the )?maximum (?:mail ?box|inbox|folder) size|quota overdrawn|diskquota|(?:mail ?box|inbox) (?:size )?limit (?:exceeded|reached)",
         "The recipient's inbox is out of storage space and inactive. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm",
         "Gmail OverQuotaPerm; Exchange storage; Japanese carriers; GNU Mailutils 'would exceed maximum mailbox size'; 'disk quota overdrawn'"),
    )),
    ("emailtoolarge", (
        (r"(?:message|mail|e-?mail)(?: file)?s? (?:is |was )?too (?:large|big)|message (?:size|length) (?:\S{1,40} ){0,2}?exceed"
         r"|(?:message|mail|e-?mail) size limits?|size limit exceeded|exceeds? (?:the )?(?:fixed )?maximum (?:\S{1,40} ){0,2}?size"
         r"|exceeded (?:the )?maximum (?:inbound |incoming )?message size|max(?:imum)? message size exceeded",
         '552 5.2.3 Message size exceeds fixed maximum message size (10485760)',
         'Postfix message_size_limit 552 5.2.3 / 5.3.4'),
        (r"recipsizelimit|too large for this recipient|exceeded mailsize limit|larger than (?:the )?(?:maximum|allowed|permitted)"
         r"|line limit exceeded|taille limite du message",
         '#550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient ##',
         'Exchange RESOLVER.RST.RecipSizeLimit; Exim/Orange size replies'),
    )),
    ("suspend", (
        (r"account (?:\S{1,40} ){0,2}?(?:has been |is |was )?(?:disabled|suspended|deactivated|inactive|locked|frozen|closed|terminated|discontinued)"
         r"|inactive account|deactivated mailbox",
         '554 delivery error: dd Sorry your message to kijitora@example.co.jp cannot be delivered. This account has been disabled or discontinued [#102].',
         "Yahoo 'account has been disabled or discontinued' [#102]; Gmail disabled"),
        (r"(?:mail ?box|user|recipient|address|domain) (?:is |has been |currently )?(?:disabled|suspended|deactivated|inactive|frozen|locked|terminated)"
         r"|disabled (?:recipient|mailbox|user|account)"
         r"|(?<!delivery )temporarily (?:disabled|suspended|deactivated|inactive|locked)|temporary locked"
         r"|(?:is currently|has been) suspended|archived recipient|destinataire archivee|invalid/inactive user"
         r"|this address no longer accepts mail|suspend the service|(?:blocked|disabled|suspended|closed|locked) (?:due to|for|because of) inactivity",
         '550 Mailbox is frozen.',
         'mailbox frozen/disabled replies (Mail.ru, Japanese carriers, Orange archivee); accounts closed for inactivity'),
    )),
    ("hasmoved", (
        (r"no longer on (?:this |the )?server|(?:mail ?box|address|user|recipient) has (?:been )?moved|has been replaced by"
         r"|(?<!wrong or )no longer (?:valid|in use|active|exists|with (?:us|the company)|employed)",
         '550 5.1.6 recipient no longer on server: kijitora@example.jp',
         'RFC 3463 X.1.6 wording'),
        (r"user not local; please try",
         '551 User not local; please try <kijitora@example.org>',
         'RFC 5321 551 user not local; please try'),
    )),
    ("notaccept", (
        (r"\bnull ?mx\b|rfc ?7505",
         "The domain libsisimai.org doesn't receive email according to the administrator: returned Null MX https://www.rfc-editor.org/info/rfc7505",
         'RFC 7505 null MX'),
        (r"(?:does not|doesn't|do not) (?:accept|receive) (?:any )?(?:e-?)?mail"
         r"|not accepting (?:network )?(?:messages|mail)\b(?! from)|no mx record|mail receiving disabled"
         r"|no route for current request",
         'host/domain does not accept mail',
         'RFC 7504 521/556 wording; Sendmail no MX'),
    )),
    ("networkerror", (
        (r"\bdns error|host not found, try again|dns (?:query|lookup) (?:failed|failure|timed out)"
         r"|(?:host )?name lookup fail(?:ed|ure)|temporary failure in name resolution"
         r"|malformed (?:or unexpected )?name server reply|dns records for the destination computer could not be found"
         r"|unable to resolve route",
         'Name service error for domain example.com: Host not found, try again',
         'Postfix/Sendmail name service errors'),
        (r"no route to host|network (?:is )?unreachable|host is unreachable|lost connection with .{1,120}? while"
         r"|could not connect and send the mail",
         'connect to nyaan.example.com[192.0.2.2]:25: No route to host',
         "Postfix connect errors; 'lost connection ... while'"),
        (r"too many hops|hop count exceeded|(?:mail|routing|forwarding) loop|loop detected|message is looping|message looping"
         r"|forwarded more than the maximum allowed times|too many received",
         '554 5.4.6 Hop count exceeded - possible mail loop',
         'RFC 3463 X.4.6 loops; Postfix/Exim hop count'),
    )),
    ("hostunknown", (
        (r"host unknown|host or domain name not found|unknown (?:host|domain)\b|no such domain|couldn't find any host named"
         r"|illegal host/domain name|unrout(?:e)?able address|name or service not known|domain must exist"
         r"|domain mentioned in email address is unknown|account or domain may not exist|unrout(?:e)?able mail domain",
         '550 5.1.2 <nekochan@libsisimai.org>... Host unknown (Name server: .: host not found)',
         "Sendmail 550 5.1.2 Host unknown; RFC 3463 X.1.2; Exim 'Unrouteable mail domain' (the domain has no DNS)"),
        (r"(?:domain|host)(?: name)? (?:does not|doesn't|not) exists?|(?:domain|host)(?: name)? (?:was )?not found(?!, try again)"
         r"|invalid (?:domain|host)(?: name)?\b|domain is not reachable|bad destination system address",
         'Domain does not exist',
         "generic 'domain does not exist' replies"),
        (r"all relevant mx records point to non-existent hosts",
         'all relevant MX records point to non-existent hosts',
         "Exim 'all relevant MX records point to non-existent hosts'"),
        (r"domain \S{1,255} couldn't be found",
         "Your message wasn't delivered to neko@example.invalid because the domain example.invalid couldn't be found.",
         "Microsoft 365 NDR 'domain couldn't be found'"),
    )),
    ("userunknown", (
        (r"\buser ?unknown|\bunknown (?:user|recipient|local[- ]part|mailbox|address(?! error)|addressee|e-?mail address)\b"
         r"|\b(?:recipient|address|addressee) unknown\b|(?:utilisateur|destinataire) inconnu"
         r"|adresse (?:\S{1,40} ){0,6}?n'existe pas|(?:empf(?:ae|ä)nger|benutzer|adresse) (?:ist )?unbekannt"
         r"|(?:usuario|utente|usu(?:a|á)rio) (?:desconocido|sconosciuto|desconhecido)",
         '550 5.1.1 <kijitora@example.jp>: Recipient address rejected: User unknown in local recipient table',
         "Postfix 'User unknown in local recipient table', Sendmail, Exim; French/German/Spanish/Italian MTAs"),
        (r"\bno such (?:user|recipient|mailbox|account|address|person|local user)"
         r"|\bno (?:account|mail ?box) (?:by that name|available for this user|found)|no one at this address"
         r"|no existe (?:dicha persona|ese usuario)|nessun utente simile",
         '550 kijitora@neko.example.org... No such user',
         "Sendmail/qmail 'No such user'"),
        (r"\b(?:user|recipient|rcpt|mail ?box|account|addressee|address)(?: name)?(?: [<\[('\"]?[^\s@]{1,64}@[^\s]{1,255}?)?"
         r" (?:does not|doesn't|dosn't|doesnt|did not|not) exists?\b"
         r"|non-?existent (?:user|recipient|mailbox|address)|@[\w.-]{1,255}[>\])'\"]?:? (?:does not|doesn't|dosn't) exists?\b",
         '550 5.1.1 <kijitora@icloud.example.com>: user does not exist',
         "iCloud/Apple and generic 'user does not exist', 'Rcpt <x> does not exist', 'User [x] does not exist'"),
        (r"recipient name is not recognized"
         r"|\b(?:user|recipient|mail ?box|addressee)s? (?:was |were )?not (?:found|present|known|active)"
         r"|(?:e-?mail )?address (?:you entered )?(?:couldn't|could not) be found|address not present in directory"
         r"|email name is not found|not found recipient account",
         '550 User not found',
         "generic 'user not found'"),
        (r"\bmail ?box (?:is )?(?:unavailable|unavaiable|not available)|no mailbox here"
         r"|not listed in (?:public name & address book|the directory|domino directory)",
         '550 5.1.1 Requested action not taken: mailbox unavailable',
         "RFC 5321 550 'mailbox unavailable'; Domino directory"),
        (r"\b(?:invalid|not a valid|bad destination|bad) (?:recipient|mail ?box|user|e-?mail address|address)(?:es)?\b"
         r"|\bbad[-_]recipient|badrcptto|badrecipientto|validrcptto"
         r"|is not (?:a known user|a valid (?:user|mailbox)|an active address)|not a (?:valid user|local address)"
         r"|unknown or illegal alias|this user doesn't have an? \S{1,255} account|\bno valid recipients?\b|can't accept user"
         r"|destination addresses were unknown|destination server rejected recipients|recipient (?:is )?not (?:ok|local|accepted)"
         r"|vdeliver: invalid or unknown virtual user|missing home directory|wrong or no longer valid|not email addresses"
         r"|invalid final delivery userid",
         "554 delivery error: dd This user doesn't have a yahoo.com account (this-local-part-does-not-exist@yahoo.com) [0] - mta1061.mail.ne1.yahoo.com",
         "Yahoo 'doesn't have a yahoo.com account'; qmail/vpopmail; gateways"),
    )),
    ("syntaxerror", (
        (r"syntax error|(?:unrecognized|unknown|invalid) command|command (?:not recognized|unrecognized|not implemented)",
         '500 5.5.2 Syntax error, command unrecognized',
         'RFC 5321 500/501 replies'),
    )),
    ("systemerror", (
        (r"internal (?:server |system )?error|(?<!operating )system error|queue file write error"
         r"|(?:local |server |system |mail system )?config(?:uration)? error|temporary service failure|temporary local problem"
         r"|local error in processing|loops back to myself|is misconfigured|interrupted system call|can't create user output file"
         r"|timeout waiting for input|encountered an error while being processed|forwarding loop broken",
         '554 5.3.0 <systemerror@libsisimai.net>: Recipient address rejected: Internal system error.',
         'Postfix/Sendmail internal errors; RFC 3463 X.3.0'),
    )),
    ("expired", (
        (r"(?:message|envelope|delivery time|delivery) expired|retry time(?:out)? (?:exceeded|reached)|retry time not reached"
         r"|(?:has been|was) in the queue too long|queue lifetime|message timed out|within the allowed queue period",
         'Envelope expired',
         'Sendmail/Postfix queue expiry'),
        (r"could not be delivered for (?:more than )?\d{1,3}|not (?:been )?delivered within \d|delivery failed \d{1,5} attempts"
         r"|cannot send (?:the )?message (?:for|within) \d"
         r"|have been failing for a long time|did not accept our requests to connect|after multiple retries|server did not respond"
         r"|could not find a gateway for|has not been collected after",
         'Message could not be delivered for 5 days',
         "Exim/Sendmail/qmail retry timeouts; Sendmail 'Cannot send message for 5 days'"),
        (r"this is a warning message only|(?:has been|was) delayed|will be retried|will-retry-until|giving up on\b"
         r"|delivery attempts will continue",
         'THIS IS A WARNING MESSAGE ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE. Delivery to the following recipients has been delayed.',
         'Sendmail/Postfix delay warnings'),
    )),
    ("mailererror", (
        (r"pipe to \||operating system error|mailer error|command (?:died|failed|exited) with|exit (?:status|code) \d|\bx-unix;",
         'pipe to |/usr/local/nyaan/bin/neko kijitora@example.com generated by kijitora@example.com',
         'Sendmail/Postfix local mailer (pipe) failures'),
    )),
    ("onhold", (
        (r"\bon hold\b",
         '550 5.0.0 <onhold@libsisimai.net>: Recipient address rejected: On hold.',
         'Sisimai onhold sample wording'),
    )),
)

WEAK_TABLES: Final[tuple[tuple[str, tuple[Row, ...]], ...]] = (
    ("userunknown", (
        (r"recipient address rejected",
         '550 <neko-nyaan@ne.auone-net.jp>: Recipient address rejected. (in reply to RCPT TO command)',
         "Postfix 'Recipient address rejected' without a cause (KDDI, gateways); a bare 'Address rejected' is no evidence against the recipient"),
    )),
    ("networkerror", (
        (r"connection (?:was )?(?:refused|reset|timed out|closed|lost|dropped)|timed out|could not connect|unable to connect"
         r"|couldn't connect|failed to connect|not reachable|unreachable",
         'connect to example.org[203.0.113.225]:25: Connection timed out',
         'Postfix/Sendmail connection errors'),
    )),
    ("systemerror", (
        (r"service (?:is )?(?:currently |temporarily )?(?:unavailable|not available)|transaction failed|mail system problem",
         '554 Transaction failed',
         "SES/Postfix 'Transaction failed', 'service unavailable'"),
    )),
)
