"""Spool mode's listener side: answer MAIL and RCPT here, and 250 at the end of data once the message is in the spool.

The checks are the relay's own (RelayHandler: access, the reputation guard at MAIL, the suppression list and DNS
preflight at RCPT, the smuggling checks on the data), so a refused recipient costs no queue space and no upstream
send. What is queued is what the relay would have sent: the client's bytes with only header lines prepended.
"""
from __future__ import annotations

import logging
import time

from proxy.logging_setup import log_message
from proxy.model import MessageStatus, RecipientRecord, RecipientStatus, SpoolEntry, SpoolRecipient, SpoolState
from proxy.relay.headers import new_message_id, prepend_headers, read_headers
from proxy.relay.server import REPLY_STORE_DOWN, RelayHandler, Transaction, _peer, smuggling_refusal, unstuffed
from proxy.store import StoreError
from proxy.suppression import content_digest

log = logging.getLogger(__name__)

QUEUED_REPLY = "250 2.1.5 Ok: queued in the spool"
# MAIL parameters kept for the upstream; SIZE is not (the prepended lines change it), nor anything unknown
KEPT_OPTIONS = ("BODY", "SMTPUTF8")


class SpoolHandler(RelayHandler):
    """aiosmtpd handler for `[relay] mode = "spool"`; `on_queued()` wakes the delivery workers."""

    def __init__(self, config, store, upstream, verp=None, suppressor=None, preflight=None, health=None,
                 on_queued=None):
        super().__init__(config, store, upstream, verp, suppressor, preflight, health=health)
        self.on_queued = on_queued
        self.lifetime = config.spool.lifetime_seconds

    async def handle_MAIL(self, server, session, envelope, address: str, options: list[str]):
        message = await self._new_message(session, address)
        if isinstance(message, str):
            return message
        session.tx = Transaction(message, None)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address: str, options: list[str]):
        tx: Transaction | None = getattr(session, "tx", None)
        if tx is None:
            return "503 5.5.1 Error: need MAIL command"
        if any(r.address == address for r in tx.message.recipients):
            return "250 2.1.5 Ok: already a recipient of this message"
        refused = await self._refused_before_upstream(tx, address)
        if refused is not None:
            return refused
        tx.message.recipients.append(RecipientRecord(address, RecipientStatus.QUEUED, QUEUED_REPLY))
        envelope.rcpt_tos.append(address)
        return QUEUED_REPLY

    async def stream_DATA(self, server, session, envelope, data) -> str:
        """RelaySMTP hands the data over as it arrives (proxy.smtp_guard.MessageData): the spool keeps the whole
        message, so it is gathered, its refusals (size, line length, smuggling) answered as the relay does."""
        stretches = [unstuffed(s) async for s in data.stretches()]
        if data.refusal is not None:
            if data.limit_hit is None:
                log.warning("%s: refused a message (smuggling protection): %s", _peer(session), data.found[10:60])
            await self.finish(session)
            return data.refusal
        envelope.original_content = b"".join(stretches)
        return await self.handle_DATA(server, session, envelope)

    async def handle_DATA(self, server, session, envelope):
        tx: Transaction | None = getattr(session, "tx", None)
        if tx is None:
            return "503 5.5.1 Error: need MAIL command"
        message = tx.message
        content: bytes = envelope.original_content or b""
        refused = smuggling_refusal(content)
        if refused is not None:
            log.warning("%s: refused a message (smuggling protection): %s", _peer(session), refused[10:60])
            await self.finish(session)
            return refused
        queued = [r for r in message.recipients if r.status == RecipientStatus.QUEUED]
        if not queued:
            await self.finish(session, record=True)
            return "554 5.5.1 Error: no valid recipients"
        facts = read_headers(content)
        added: list[tuple[str, str]] = []
        null_sender = message.sender in ("", "<>")
        upstream_sender = "" if null_sender else message.sender
        if self.verp is not None and not null_sender:
            # the recipients are known here: a single one is named in the token (a bounce then says who)
            index = message.recipients.index(queued[0]) if len(queued) == 1 else None
            message.verp_token = self.verp.address(message.id, index)
            if self.is_ses:  # SES replaces the envelope sender but sends bounces to Return-Path
                added.append(("Return-Path", f"<{message.verp_token}>"))
            else:
                upstream_sender = message.verp_token
        if not facts.message_id:
            facts.message_id = new_message_id(self.message_id_domain)
            added.append(("Message-ID", f"<{facts.message_id}>"))
        message.message_id, message.header_from, message.subject = facts.message_id, facts.header_from, facts.subject
        message.content_sha256 = content_digest(content)
        body = prepend_headers(content, added)
        message.size = len(body)
        message.status = MessageStatus.QUEUED
        now = time.time()
        options = [o for o in envelope.mail_options if o.split("=", 1)[0].upper() in KEPT_OPTIONS]
        entry = SpoolEntry(relay_id=message.id, created_at=now, sender=upstream_sender, mail_options=options,
                           state=SpoolState.QUEUED, next_at=now, expires_at=now + self.lifetime, size=len(body),
                           recipients=[SpoolRecipient(r.address, i) for i, r in enumerate(queued)], body=body)
        try:
            await self.store.spool_accept(message, tx.events, entry)
        except StoreError as exc:
            log.error("could not queue message %s: %s", message.id, exc)
            await self.finish(session)  # nothing queued: the client keeps its message and retries
            return REPLY_STORE_DOWN
        session.tx = None
        log_message(message, "spool")
        if self.suppressor is not None and tx.events:
            try:
                await self.suppressor.consider(tx.events, message.sender)
            except StoreError as exc:
                log.error("could not update the suppression list for message %s: %s", message.id, exc)
        if self.on_queued is not None:
            self.on_queued()
        return f"250 2.0.0 Ok: queued as {message.id}"
