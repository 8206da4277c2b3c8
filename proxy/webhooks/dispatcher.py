"""Sends the outbox: claims due entries, POSTs them signed, records what came of each try.

It runs beside the relay and the bounce MX on their event loop and never makes them wait: the
events are already committed (the outbox row with them), a POST is only an await on a socket,
at most `concurrency` are in flight, and each has a total timeout. Whatever fails (the receiver,
the network, the store) is retried later; nothing is dropped before `max_attempts` tries.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from urllib.parse import urlsplit

import aiohttp

from proxy.leases import new_owner
from proxy.model import OutboxEntry
from proxy.webhooks import payload
from proxy.webhooks.signature import headers

log = logging.getLogger("bounceproxy.webhooks")


def safe_url(url: str) -> str:
    """The URL as logged: no user, password, query or fragment (they may hold a token)."""
    p = urlsplit(url)
    host = p.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{p.scheme}://{host}{f':{p.port}' if p.port else ''}{p.path}"


def new_session(timeout: float, concurrency: int) -> aiohttp.ClientSession:
    """No proxy from the environment, no cookies kept, one total timeout per POST."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), connector=aiohttp.TCPConnector(limit=concurrency),
        cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False)


async def post(session: aiohttp.ClientSession, url: str, body: bytes, key: str, secret: bytes) -> tuple[int | None, str]:
    """One signed try: (HTTP status, "") or (None, why it failed). Redirects are not followed: a 3xx
    is a failed try, as is anything but 2xx. The receiver's body is never read."""
    try:
        async with session.post(url, data=body, headers=headers(secret, body, key), allow_redirects=False) as resp:
            return resp.status, "" if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except asyncio.TimeoutError:
        return None, f"no answer within {session.timeout.total:g}s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}".replace(url, safe_url(url))[:300]


class WebhookDispatcher:
    """`start()` / `stop()` on the running loop; counters for /metrics as plain attributes."""

    poll_seconds = 0.5  # how late an entry written by another process (or due again) is noticed at most
    stop_grace = 2.0  # seconds POSTs in flight may finish at stop; the rest are sent again after their lease

    def __init__(self, config, store, secret: bytes):
        self.config = config  # WebhooksConfig
        self.store = store
        self.secret = secret
        self.owner = new_owner()
        # an entry claimed by a process that died is claimable again after this
        self.lease_seconds = config.timeout_seconds + 10.0
        self.delivered = self.failed = self.dead = 0
        self.wake = asyncio.Event()  # set it when something was queued: the loop claims at once
        self._in_flight: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._store_failing = False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def notify(self) -> None:
        self.wake.set()

    async def start(self) -> None:
        freed = await self.store.release_gone_leases("webhook_outbox", self.owner)
        if freed:
            log.warning("webhooks: %d notifications an earlier process on this host was sending are due again", freed)
        self._session = new_session(self.config.timeout_seconds, self.config.concurrency)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhooks")
        log.info("webhooks: sending to %s (at most %d at once, %d tries each)",
                 ", ".join(safe_url(u) for u in self.config.urls), self.config.concurrency, self.config.max_attempts)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.stop_grace)
            for task in set(self._in_flight):
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the loop -------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            free = self.config.concurrency - len(self._in_flight)
            entries = await self._claim(free) if free > 0 else []
            for entry in entries:
                self._spawn(entry)
            if len(entries) < free or free <= 0:  # nothing more due now, or every slot busy
                await self._wait()

    async def _claim(self, limit: int) -> list[OutboxEntry]:
        """Due queue heads, leased to us; a store error is logged once per outage and retried."""
        self.wake.clear()
        try:
            entries = await self.store.claim_webhooks(self.owner, time.time(), self.lease_seconds, limit)
        except Exception as exc:  # noqa: BLE001 - the loop outlives any store outage
            if not self._store_failing:
                log.warning("webhooks: cannot read the outbox, retrying every %gs: %s", self.poll_seconds, exc)
            self._store_failing = True
            return []
        if self._store_failing:
            log.info("webhooks: the outbox is readable again")
            self._store_failing = False
        return entries

    async def _wait(self) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), self.poll_seconds)
        except asyncio.TimeoutError:
            pass

    def _spawn(self, entry: OutboxEntry) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(entry), name=f"webhook-{entry.id}")
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        self.wake.set()  # a slot is free, and the next entry of that queue may be due now

    # -- one entry ------------------------------------------------------------------------------
    async def _deliver(self, entry: OutboxEntry) -> None:
        """Build the body, POST it, record the outcome. A failure to record leaves the lease to
        expire: the entry is sent again (at least once, never lost)."""
        if entry.url not in self.config.urls:  # the operator took the URL out: keep the entry, send nothing
            await self._record_failure(entry, "the URL is no longer in [webhooks] urls", give_up=True)
            return
        try:
            body = await self._body(entry)
        except payload.PayloadError as exc:
            await self._record_failure(entry, str(exc), give_up=True)
            return
        except Exception as exc:  # noqa: BLE001 - the store: try again after the backoff
            await self._record_failure(entry, f"reading the log: {exc}")
            return
        status, error = await post(self._session, entry.url, body, entry.key, self.secret)
        if not error:
            await self._record_delivery(entry, status)
        else:
            await self._record_failure(entry, error)

    async def _body(self, entry: OutboxEntry) -> bytes:
        event = await self.store.get_event(entry.event_id) if entry.event_id is not None else None
        relay_id = entry.relay_id or (event.relay_id if event else None)
        message = await self.store.get_message(relay_id) if relay_id else None
        return payload.body(entry, event, message)

    async def _record_delivery(self, entry: OutboxEntry, status: int | None) -> None:
        self.delivered += 1
        log.debug("webhook delivered id=%d key=%s url=%s status=%s attempt=%d", entry.id, entry.key,
                  safe_url(entry.url), status, entry.attempts + 1)
        try:
            await self.store.webhook_delivered(entry.id, self.owner, time.time())
        except Exception as exc:  # noqa: BLE001 - sent again after the lease: receivers de-duplicate
            log.warning("webhook id=%d key=%s delivered but not recorded (it will be sent again): %s",
                        entry.id, entry.key, exc)

    async def _record_failure(self, entry: OutboxEntry, error: str, give_up: bool = False) -> None:
        attempt = entry.attempts + 1
        dead = give_up or attempt >= self.config.max_attempts
        delay = None if dead else self.backoff(attempt)
        if dead:
            self.dead += 1
            log.warning("webhook given up id=%d key=%s url=%s after %d tries: %s (`bounceproxy webhooks retry %d`)",
                        entry.id, entry.key, safe_url(entry.url), attempt, error, entry.id)
        else:
            self.failed += 1
            log.info("webhook failed id=%d key=%s url=%s attempt=%d next_in=%.1fs: %s", entry.id, entry.key,
                     safe_url(entry.url), attempt, delay, error)
        try:
            await self.store.webhook_failed(entry.id, self.owner, error, None if dead else time.time() + delay)
        except Exception as exc:  # noqa: BLE001 - the lease expires and it is tried again
            log.warning("webhook id=%d: cannot record the failed try: %s", entry.id, exc)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the attempt-th failed try: exponential, capped, jittered ±50%
        so that many entries failing together do not come back together."""
        base, cap = self.config.backoff_base_seconds, self.config.backoff_max_seconds
        return min(cap, base * 2 ** min(attempt - 1, 60) * random.uniform(0.5, 1.5))
