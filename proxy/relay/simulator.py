"""The built-in upstream used when none is configured: SES's mailbox simulator, offline.

Nothing is delivered. Mail to simulator.amazonses.com behaves as SES's simulator addresses do;
everything else is accepted and kept in the store (the outbox) so a developer can look at it.
"""
from __future__ import annotations

import secrets
import time

from proxy.relay.upstream import Reply

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
    """Pool-shaped, so the relay cannot tell it from a real upstream."""

    name = "simulator"
    keeps_messages = True
    max_size = SimulatorConnection.max_size
    extensions = {"8bitmime", "smtputf8", "size", "pipelining"}

    async def acquire(self) -> SimulatorConnection:
        return SimulatorConnection()

    async def release(self, conn: SimulatorConnection) -> None:
        await conn.reset()

    async def close(self) -> None:
        pass
