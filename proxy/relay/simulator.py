"""The built-in upstream used when none is configured: SES's mailbox simulator, offline.

Nothing is delivered. Mail to simulator.amazonses.com behaves as SES's simulator addresses do;
everything else is accepted and kept in the store (the outbox) so a developer can look at it.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid

import aiosmtplib

from proxy.relay.headers import header_block
from proxy.relay.upstream import Reply

log = logging.getLogger(__name__)

SIMULATOR_DOMAIN = "simulator.amazonses.com"

# local part -> the reply SES gives at RCPT for it (None: accepted)
SIMULATED_RCPT_REPLIES: dict[str, Reply | None] = {
    "success": None,
    "bounce": Reply(550, "5.1.1 Requested action not taken: mailbox unavailable (simulated user unknown)"),
    "suppressionlist": Reply(
        550,
        "5.1.1 Amazon SES has suppressed sending to this address because it has a recent history of "
        "bouncing as an invalid address (simulated suppression list)",
    ),
    "ooto": None,
    "complaint": None,
}


def ses_message_id() -> str:
    """An id shaped like SES's (`0100018c...-uuid-000000`)."""
    stamp = f"{int(time.time() * 1000):016x}"
    h = secrets.token_hex(16)
    return f"{stamp}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}-000000"


class SimulatorConnection:
    """Answers like SES's SMTP interface would, without a network."""

    max_size = 40 * 1024 * 1024
    usable = True

    def __init__(self) -> None:
        self.in_transaction = False

    def supports(self, extension: str) -> bool:
        return extension.lower() in {"8bitmime", "smtputf8", "size", "pipelining"}

    async def mail(self, sender: str, options: list[str]) -> Reply:
        self.in_transaction = True
        return Reply(250, "Ok")

    async def rcpt(self, recipient: str) -> Reply:
        local, _, domain = recipient.rpartition("@")
        if domain.lower() == SIMULATOR_DOMAIN:
            reply = SIMULATED_RCPT_REPLIES.get(local.lower().split("+", 1)[0])
            if reply is not None:
                return reply
        return Reply(250, "Ok")

    async def data(self, content: bytes) -> Reply:
        self.in_transaction = False
        return Reply(250, f"Ok {ses_message_id()}")

    async def reset(self) -> None:
        self.in_transaction = False

    def close(self) -> None:
        pass


class SimulatorUpstream:
    """Pool-shaped, so the relay cannot tell it from a real upstream.

    Its asynchronous half sends real mail to the bounce MX after the 250, as the world would:
    an auto-reply for ooto@, an ARF complaint for complaint@, a late DSN for the configured
    late-bounce address.
    """

    name = "simulator"
    keeps_messages = True
    max_size = SimulatorConnection.max_size
    extensions = {"8bitmime", "smtputf8", "size", "pipelining"}

    def __init__(self, late_bounce: str = "latebounce@" + SIMULATOR_DOMAIN, delay: float = 1.0):
        self.late_bounce = late_bounce.lower()
        self.delay = delay
        self.bounce_mx: tuple[str, int] | None = None  # set once the bounce MX listens
        self.fallback_return_path: str | None = None  # a plain bounce address, when VERP is off
        self._tasks: set[asyncio.Task] = set()

    def accepted(self, message, recipients: list[str], content: bytes) -> None:
        """After the 250: schedule the mail the simulated world sends back."""
        return_path = message.verp_token or self.fallback_return_path
        if self.bounce_mx is None or not return_path:
            return
        for rcpt in recipients:
            local = rcpt.lower().split("@")[0].split("+", 1)[0]
            if rcpt.lower() == self.late_bounce:
                mail = late_dsn(rcpt, content)
            elif rcpt.lower().endswith("@" + SIMULATOR_DOMAIN) and local == "ooto":
                mail = out_of_office(rcpt, return_path, content)
            elif rcpt.lower().endswith("@" + SIMULATOR_DOMAIN) and local == "complaint":
                mail = complaint(rcpt, message.sender, content)
            else:
                continue
            mail["To"] = return_path
            task = asyncio.get_running_loop().create_task(self._send(mail, return_path, rcpt))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, mail: Message, return_path: str, about: str) -> None:
        await asyncio.sleep(self.delay)
        host, port = self.bounce_mx
        try:  # from the null sender, as DSNs, ARF reports and RFC 3834 auto-replies are
            await aiosmtplib.send(mail, hostname=host, port=port, sender="", recipients=[return_path],
                                  start_tls=False, use_tls=False, timeout=10)
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("simulator: could not deliver its %s mail to the bounce MX: %s", about, exc)

    async def acquire(self) -> SimulatorConnection:
        return SimulatorConnection()

    async def release(self, conn: SimulatorConnection) -> None:
        await conn.reset()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _original_headers(content: bytes) -> str:
    return header_block(content).decode("utf-8", "replace").rstrip() + "\n"


def _original(content: bytes) -> dict[str, str]:
    from email.parser import BytesHeaderParser

    headers = BytesHeaderParser().parsebytes(header_block(content))
    return {"message_id": headers.get("Message-ID", ""), "subject": headers.get("Subject", "")}


def out_of_office(rcpt: str, return_path: str, content: bytes) -> Message:
    """An RFC 3834 auto-reply, as a vacation responder sends it."""
    original = _original(content)
    mail = MIMEText("I am out of the office until next week and will read your message on my return.\n")
    mail["From"] = rcpt
    mail["Subject"] = f"Out of Office: {original['subject']}".strip()
    mail["Auto-Submitted"] = "auto-replied"
    mail["Date"] = formatdate()
    mail["Message-ID"] = make_msgid(domain=SIMULATOR_DOMAIN)
    if original["message_id"]:
        mail["In-Reply-To"] = original["message_id"]
        mail["References"] = original["message_id"]
    return mail


def _report(report_type: str, text: str, fields: list[list[tuple[str, str]]], content: bytes) -> MIMEMultipart:
    mail = MIMEMultipart("report", report_type=report_type)
    mail.attach(MIMEText(text))
    status = Message()
    status.set_type(f"message/{report_type}")
    blocks = []
    for block in fields:
        part = Message()
        for name, value in block:
            part[name] = value
        blocks.append(part)
    status.set_payload(blocks)
    mail.attach(status)
    mail.attach(MIMEText(_original_headers(content), "rfc822-headers"))
    mail["Date"] = formatdate()
    mail["Message-ID"] = make_msgid(domain=SIMULATOR_DOMAIN)
    return mail


def late_dsn(rcpt: str, content: bytes) -> MIMEMultipart:
    """An RFC 3464 DSN: the recipient's server refused the message after the upstream accepted it."""
    mail = _report(
        "delivery-status",
        f"This is the mail system at {SIMULATOR_DOMAIN}.\n\nYour message could not be delivered to {rcpt}.\n",
        [[("Reporting-MTA", f"dns; {SIMULATOR_DOMAIN}"), ("Arrival-Date", formatdate())],
         [("Final-Recipient", f"rfc822; {rcpt}"), ("Action", "failed"), ("Status", "5.1.1"),
          ("Remote-MTA", f"dns; mx.{SIMULATOR_DOMAIN}"),
          ("Diagnostic-Code", f"smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown")]],
        content,
    )
    mail["From"] = f"MAILER-DAEMON@{SIMULATOR_DOMAIN}"
    mail["Subject"] = "Undelivered Mail Returned to Sender"
    mail["Auto-Submitted"] = "auto-replied"
    return mail


def complaint(rcpt: str, sender: str, content: bytes) -> MIMEMultipart:
    """An ARF (RFC 5965) abuse report, as a mailbox provider's feedback loop sends it."""
    mail = _report(
        "feedback-report",
        "This is an email abuse report for a message you sent (simulated).\n",
        [[("Feedback-Type", "abuse"), ("User-Agent", "bounceproxy-simulator/1.0"), ("Version", "1"),
          ("Original-Mail-From", f"<{sender}>"), ("Original-Rcpt-To", f"<{rcpt}>"),
          ("Arrival-Date", formatdate()), ("Reported-Domain", rcpt.split("@")[-1])]],
        content,
    )
    mail["From"] = f"feedback@{SIMULATOR_DOMAIN}"
    mail["Subject"] = "Complaint about a message you sent"
    return mail
