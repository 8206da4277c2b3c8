"""The bounce MX: accepts DSNs, complaints and auto-replies for the addresses it issued.

RCPT is accepted only on the bounce domains, and there only for a VERP address with a valid
signature or a configured plain bounce address: no open relay, no backscatter. The raw bytes
are committed before the 250; parsing and correlation run after it. It never sends mail.
"""
from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import Envelope, Session

from proxy.relay.verp import VerpSigner
from proxy.smtp_guard import GuardedSMTP
from proxy.store import StoreError

log = logging.getLogger(__name__)

REPLY_NOT_OURS = "550 5.7.1 <{addr}>: relay access denied, this server only receives bounces for its own domains"
REPLY_UNKNOWN = "550 5.1.1 <{addr}>: no such bounce address here"
REPLY_STORE_DOWN = "451 4.3.0 Cannot store the message right now; please retry later"


class InboundHandler:
    def __init__(self, config, store, signer: VerpSigner | None, on_stored):
        cfg = config.inbound
        self.store = store
        self.signer = signer
        self.domains = tuple(d.lower() for d in cfg.bounce_domains)
        self.plain = {a.lower() for a in cfg.plain_addresses}
        self.on_stored = on_stored  # callback(inbound_id): schedules parsing after the 250
        self.received = 0

    def accepts(self, address: str) -> str | None:
        """None when we take mail for this address, else the refusal."""
        local, at, domain = address.lower().rpartition("@")
        if not at or domain not in self.domains:
            return REPLY_NOT_OURS.format(addr=address)
        if address.lower() in self.plain:
            return None
        if self.signer is not None and self.signer.verify(address, self.domains) is not None:
            return None
        return REPLY_UNKNOWN.format(addr=address)

    async def handle_MAIL(self, server, session: Session, envelope: Envelope, address: str, options):
        envelope.mail_from = address  # the null sender <> is what DSNs use
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session: Session, envelope: Envelope, address: str, options):
        refusal = self.accepts(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session: Session, envelope: Envelope):
        peer = session.peer
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        mail_from = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        try:
            inbound_id = await self.store.store_inbound(peer_text, mail_from, list(envelope.rcpt_tos),
                                                        envelope.original_content or b"")
        except StoreError as exc:
            log.error("bounce MX could not store a message from %s: %s", peer_text, exc)
            return REPLY_STORE_DOWN
        self.received += 1
        self.on_stored(inbound_id)
        return f"250 2.0.0 Ok: stored as inbound #{inbound_id}"


class InboundSMTP(GuardedSMTP):
    """aiosmtpd's SMTP taking long lines: real MTAs send bounces with lines far over RFC 5321's
    1000 bytes (unwrapped HTML, long headers), and a refused bounce is lost for good.

    Lines up to `max_line_length` bytes as sent (CRLF not counted) are stored exactly as received."""

    size_reply = "552 5.3.4 Message too big for this bounce MX (limit {limit} bytes)"
    line_reply = ("554 5.6.0 Message refused: a line is longer than {limit} bytes, "
                  "the most this bounce MX takes ([inbound] max_line_length)")

    def __init__(self, handler, *args, size_limit: int, max_line_length: int = 65536, **kwargs):
        # aiosmtpd reads with a StreamReader whose limit is this, made in SMTP.__init__: set it first.
        self.max_line_length = max_line_length
        self.line_length_limit = max_line_length + 2  # and its CRLF
        super().__init__(handler, *args, data_size_limit=size_limit, **kwargs)


class InboundWorker:
    """Runs the pipeline after each 250, one mail at a time, and on pending rows at start.

    A fresh mail waits `settle` seconds first: an MTA on the same network can bounce faster
    than the relay commits the message the bounce is about (the upstream has it before our
    group commit does), and correlating too early would miss it.
    """

    def __init__(self, pipeline, settle: float = 1.0, concurrency: int = 8):
        self.pipeline = pipeline
        self.settle = settle
        self.concurrency = concurrency  # mails in flight at once, so that their commits are grouped
        self.queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []

    def submit(self, inbound_id: int, fresh: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.queue.put_nowait((inbound_id, loop.time() + self.settle if fresh else 0.0))

    async def start(self, recover: bool = True) -> None:
        if recover:
            for inbound_id in await self.pipeline.store.inbound_ids(["pending"]):
                self.submit(inbound_id, fresh=False)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._run(), name=f"inbound-worker-{n}") for n in range(self.concurrency)]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            inbound_id, not_before = await self.queue.get()
            if not_before > loop.time():
                await asyncio.sleep(not_before - loop.time())
            try:
                await self.pipeline.process(inbound_id)
            except Exception:  # noqa: BLE001 - the row stays pending; reparse or the next start redoes it
                log.exception("inbound #%d: processing failed; it stays pending", inbound_id)
            finally:
                self.queue.task_done()

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is processed (tests, shutdown)."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
        except asyncio.TimeoutError:
            log.warning("inbound: %d mails still pending at shutdown; they are parsed at the next start", self.queue.qsize())

    async def stop(self) -> None:
        await self.drain()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
