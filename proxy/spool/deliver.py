"""Spool mode's delivery: claim due messages, send them over the upstream pool at a learnt pace, record each outcome.

One dispatcher books pace slots (proxy.spool.rate) one at a time and starts at most `[spool] concurrency`
deliveries. A delivery sends MAIL, RCPT for each recipient still pending, DATA; then one store unit records the
upstream's replies (its 250 among them), the bounces, and what is left to do: the 250 is recorded in the same
transaction that marks the recipient done. What remains possible is the window every MTA has (RFC 1047): the
upstream answered 250 but the process died (or the store refused the write) before that transaction committed;
the lease then runs out and the message is sent again.

Replies: 250 sent; a 5xx about a recipient a bounce (source sync, classified, reaching webhooks); a 5xx about the
sender or the account (not verified, paused, credentials) holds the message (`queue release` after the fix): it
is never dropped; `454 Throttling failure` and 421 slow the pace and the message is due again at once; `Daily
message quota exceeded` holds the whole queue (QuotaHold); any other 4xx retries with backoff (rate.retry_delay)
until `[spool] lifetime`, after which the recipients still pending expire as soft bounces.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time

from proxy.dsn.classify import classify
from proxy.logging_setup import log_message
from proxy.leases import new_owner
from proxy.model import (
    BounceEvent, BounceType, Kind, MessageRecord, MessageStatus, RecipientRecord, RecipientStatus, Source,
    SpoolEntry, SpoolRecipientState, SpoolState, StatusSource, spool_status,
)
from proxy.relay.failures import send_failure
from proxy.relay.upstream import Reply, UpstreamAuthFailed, UpstreamUnavailable, upstream_id_from
from proxy.suppression import refusal
from proxy.spool.rate import QuotaHold, RateController, jitter, retry_delay
from proxy.store import StoreError

log = logging.getLogger("bounceproxy.spool")

# what a reply means for the recipients it concerns
SENT, BOUNCE, DEFER, THROTTLE, QUOTA, HOLD = "sent", "bounce", "defer", "throttle", "quota", "hold"
SUPPRESS = "suppress"  # on the suppression list by the time its turn came: never sent
_QUOTA = re.compile(r"daily message quota|sending quota exceeded", re.I)


def verdict(reply: Reply) -> tuple[str, str | None]:
    """(what to do, the send failure if the reply is about the sender or the account) for a refusal."""
    failure = send_failure(reply)
    if _QUOTA.search(reply.text[:2000]):  # "454 Throttling failure: Daily message quota exceeded." says both
        return QUOTA, "quota exceeded"
    if reply.code == 421 or failure == "throttled":
        return THROTTLE, failure or "service closing"
    if failure == "quota exceeded":
        return QUOTA, failure
    if failure:
        return (HOLD if reply.permanent else DEFER), failure
    return (BOUNCE if reply.permanent else DEFER), None


class SpoolWorkers:
    """`start()` / `stop(grace)` on the running loop; `notify()` when a message was queued; counters for /metrics."""

    poll_seconds = 0.5  # how late a message due again, or queued by another instance, is noticed at most
    record_tries = 5  # an outcome the store refuses is tried again this often before the lease decides

    def __init__(self, config, store, upstream, suppressor=None, health=None, clock=time.time):
        self.cfg = config.spool
        self.store = store
        self.upstream = upstream
        self.suppressor = suppressor
        self.suppression_mode = config.suppression.mode  # enforce, or observe: count only
        self.reply_style = config.suppression.reply_style
        self.health = health
        self.clock = clock
        self.owner = new_owner()
        self.lease_seconds = self.cfg.lease_seconds
        self.rate = RateController(clock(), self.cfg.max_rate, self.cfg.initial_rate)
        self.quota = QuotaHold(self.cfg.quota_retry_seconds)
        self.name = getattr(upstream, "name", "upstream")
        self.wake = asyncio.Event()
        self.counts = dict.fromkeys(("attempts", "sent", "bounced", "deferred", "throttled", "held", "expired",
                                     "suppressed"), 0)
        self._in_flight: set[asyncio.Task] = set()
        self._slot_free = asyncio.Event()
        self._buffer: list[SpoolEntry] = []
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._store_failing = False

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> "SpoolWorkers":
        freed = await self.store.release_gone_leases("spool", self.owner)
        if freed:
            log.warning("spool: %d messages an earlier process on this host was delivering are due again", freed)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="spool")
        log.info("spool: delivering to %s, %d at once, %s", self.name, self.cfg.concurrency,
                 f"at most {self.cfg.max_rate:g} recipients/s" if self.cfg.max_rate > 0 else
                 f"learning the rate from {self.cfg.initial_rate:g} recipients/s")
        return self

    def notify(self) -> None:
        self.wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def stop(self, grace: float = 30.0) -> None:
        """No new delivery; those in flight have `grace` seconds to finish and record their outcome. What is
        left keeps its lease until it runs out, then is sent again (by this instance's next start or another)."""
        self._stopping = True
        self.wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._give_back(self.clock())
        if self._in_flight:
            done, pending = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                log.warning("spool: %d deliveries cut short at shutdown; sent again after their lease (%gs): the "
                            "upstream may have taken some", len(pending), self.lease_seconds)

    async def _give_back(self, next_at: float) -> None:
        buffer, self._buffer = self._buffer, []
        for entry in buffer:
            try:
                await self.store.spool_unlease(entry.relay_id, self.owner, next_at)
            except StoreError:
                pass  # the lease runs out by itself

    def metrics(self) -> dict[str, float]:
        m = {f'bounceproxy_spool_recipients_total{{outcome="{k}"}}': v for k, v in self.counts.items()
             if k != "attempts"}
        m["bounceproxy_spool_attempts_total"] = self.counts["attempts"]
        m["bounceproxy_spool_rate"] = self.rate.rate
        m["bounceproxy_spool_rate_ceiling"] = self.rate.ceiling or 0.0
        m["bounceproxy_spool_in_flight"] = self.in_flight
        m["bounceproxy_spool_quota_held"] = 1.0 if self.quota.held(self.clock()) else 0.0
        return m

    def status(self) -> dict:
        """What `stats` and the API say of the pace and the quota hold."""
        now = self.clock()
        return {"rate": round(self.rate.rate, 3), "ceiling": self.rate.ceiling, "learning": self.rate.slow_start,
                "throttled": self.rate.throttles, "in_flight": self.in_flight,
                "quota_held_until": self.quota.until if self.quota.held(now) else None,
                "quota_reply": self.quota.reason or None}

    # -- the dispatcher -----------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            now = self.clock()
            if self.quota.held(now):
                await self._give_back(self.quota.until)
                await self._sleep(min(self.quota.until - now, 5.0))
                continue
            probing_quota = self.quota.until is not None  # the hold ran out: one message finds out
            free = self.cfg.concurrency - len(self._in_flight)
            if free <= 0 or (probing_quota and self._in_flight):
                self._slot_free.clear()
                await self._sleep(self.poll_seconds, self._slot_free)
                continue
            if not self._buffer:
                self._buffer = await self._claim(1 if probing_quota else free)
                if not self._buffer:
                    await self._sleep(self.poll_seconds)
                    continue
            entry = self._buffer.pop(0)
            wait = self.rate.reserve(self.clock(), len(entry.pending))
            if wait > 0:
                await asyncio.sleep(wait)
            self._spawn(entry)

    async def _sleep(self, seconds: float, event: asyncio.Event | None = None) -> None:
        event = event or self.wake
        try:
            await asyncio.wait_for(event.wait(), max(0.0, seconds))
        except asyncio.TimeoutError:
            pass
        self.wake.clear()

    async def _claim(self, limit: int) -> list[SpoolEntry]:
        try:
            entries = await self.store.claim_spool(self.owner, self.clock(), self.lease_seconds, limit)
        except StoreError as exc:
            if not self._store_failing:
                log.warning("spool: cannot read the queue, retrying every %gs: %s", self.poll_seconds, exc)
            self._store_failing = True
            return []
        if self._store_failing:
            log.info("spool: the queue is readable again")
            self._store_failing = False
        return entries

    def _spawn(self, entry: SpoolEntry) -> None:
        task = asyncio.get_running_loop().create_task(self.deliver(entry), name=f"spool-{entry.relay_id}")
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("spool: a delivery failed unexpectedly: %r", task.exception())

    # -- one delivery -------------------------------------------------------------------------
    async def deliver(self, entry: SpoolEntry) -> None:
        """One attempt for the recipients still pending, then its outcome recorded."""
        pending = entry.pending
        if not pending or entry.body is None:
            return
        self.counts["attempts"] += 1
        outcome: dict[str, tuple[str, Reply, str, str | None]] = {}  # address -> (what, reply, stage, failure)
        data_reply: Reply | None = None
        try:
            async with asyncio.timeout(max(10.0, self.lease_seconds - 15.0)):  # finish well within the lease
                data_reply = await self._transaction(entry, pending, outcome)
        except UpstreamAuthFailed as exc:
            self._all(pending, outcome, Reply(454, f"4.7.0 Upstream refused the relay's credentials ({exc.reply.line()})"),
                      "CONN", DEFER, "authentication")
            if self.health is not None:
                self.health.failed("auth", f"the upstream refused the relay's credentials ({exc.reply.line()})")
        except (UpstreamUnavailable, TimeoutError) as exc:
            why = str(exc) if isinstance(exc, UpstreamUnavailable) else "the delivery took longer than its lease allows"
            after_body = getattr(exc, "body_sent", None) is not False and any(s == "DATA" for _, _, s, _ in outcome.values())
            note = " (the body had gone out: the upstream may have it, and the retry may repeat it)" if after_body else ""
            self._all(pending, outcome, Reply(451, f"4.4.1 Upstream unavailable: {why}{note}"), "CONN", DEFER, None,
                      replace=True)
        await self._record(entry, outcome, data_reply)

    @staticmethod
    def _all(pending, outcome, reply: Reply, stage: str, what: str, failure: str | None, replace: bool = False):
        for r in pending:
            if replace and outcome.get(r.address, (None,))[0] in (SENT, BOUNCE):
                continue  # already decided by the upstream's own reply (a 5xx at RCPT, a 250 to the end of data)
            outcome[r.address] = (what, reply, stage, failure)

    async def _not_suppressed(self, entry: SpoolEntry, pending, outcome) -> list:
        """The suppression list as it stands now, not as it stood at RCPT: an address suppressed while the
        message waited (a hard bounce or a complaint of another message) is never sent; a soft suppression
        waits like any 4xx. The list's observe mode only counts."""
        if self.suppressor is None or self.suppression_mode != "enforce":
            return list(pending)
        sender = entry.message.sender if entry.message is not None else entry.sender
        keep = []
        for r in pending:
            row = await self.suppressor.lookup(sender, r.address)
            if row is None:
                keep.append(r)
                continue
            self.suppressor.hits += 1
            line = refusal(row, r.address, self.reply_style)
            reply = Reply(int(line[:3]), line[4:])
            outcome[r.address] = (SUPPRESS if reply.permanent else DEFER, reply, "RCPT", None)
        return keep

    async def _transaction(self, entry: SpoolEntry, pending, outcome) -> Reply | None:
        pending = await self._not_suppressed(entry, pending, outcome)
        if not pending:
            return None
        conn = await self.upstream.acquire()
        try:
            if self.health is not None:
                self.health.ok()
            options = [o for o in entry.mail_options
                       if o.upper().startswith("SMTPUTF8") or (o.upper().startswith("BODY") and conn.supports("8bitmime"))]
            reply = await conn.mail(entry.sender, options)
            if not reply.ok:
                what, failure = verdict(reply)
                if what == BOUNCE:  # a sender refused is never the recipients' fault
                    what, failure = HOLD, "sender refused"
                self._all(pending, outcome, reply, "MAIL", what, failure)
                return None
            accepted = []
            for r in pending:
                reply = await conn.rcpt(r.address)
                if reply.ok:
                    accepted.append(r)
                    outcome[r.address] = (DEFER, reply, "RCPT", None)  # until the end of data says otherwise
                    continue
                what, failure = verdict(reply)
                outcome[r.address] = (what, reply, "RCPT", failure)
                if reply.code == 421:  # the upstream closed: the rest wait for the next attempt
                    self._all([p for p in pending if p.address not in outcome], outcome, reply, "RCPT", THROTTLE,
                              "service closing")
                    return None
            if not accepted:
                return None
            for r in accepted:  # the body goes out from here: a lost connection leaves the outcome unknown
                outcome[r.address] = (DEFER, Reply(451, "4.4.1 no reply to the end of data"), "DATA", None)
            reply = await conn.data(entry.body)
            if reply.ok:
                for r in accepted:
                    outcome[r.address] = (SENT, reply, "DATA", None)
            else:
                what, failure = verdict(reply)
                for r in accepted:
                    outcome[r.address] = (what, reply, "DATA", failure)
            return reply
        finally:
            await self.upstream.release(conn)

    async def _record(self, entry: SpoolEntry, outcome: dict, data_reply: Reply | None) -> None:
        """Apply the outcome to the spool entry and the bounce-log message, and commit both in one unit."""
        now = self.clock()
        message = entry.message or MessageRecord(id=entry.relay_id, created_at=entry.created_at, status=MessageStatus.QUEUED)
        by_address: dict[str, RecipientRecord] = {r.address: r for r in message.recipients}
        events: list[BounceEvent] = []
        sent: list[str] = []
        kinds = {what for what, _, _, _ in outcome.values()}
        for r in entry.pending:
            if r.address not in outcome:
                continue
            what, reply, stage, failure = outcome[r.address]
            mr = by_address.get(r.address)
            if mr is None:
                mr = RecipientRecord(r.address, RecipientStatus.QUEUED)
                message.recipients.append(mr)
            r.attempts += 1
            r.last_reply = reply.line()
            if what == SENT:
                r.state, mr.status, mr.reply = SpoolRecipientState.SENT, RecipientStatus.ACCEPTED, reply.line()
                sent.append(r.address)
                self.counts["sent"] += 1
            elif what == SUPPRESS:
                r.state, mr.status, mr.reply = SpoolRecipientState.SUPPRESSED, RecipientStatus.SUPPRESSED, reply.line()
                self.counts["suppressed"] += 1
            elif what == BOUNCE:
                r.state, mr.status, mr.reply = SpoolRecipientState.BOUNCED, RecipientStatus.REJECTED, reply.line()
                events.append(self._bounce(message, r.address, reply, stage))
                self.counts["bounced"] += 1
            else:
                mr.reply = reply.line()
                self.counts["throttled" if what == THROTTLE else "held" if what == HOLD else "deferred"] += 1
        if data_reply is not None:
            message.upstream_reply = data_reply.line()
            if data_reply.ok:
                message.upstream_id = upstream_id_from(data_reply) or message.upstream_id
                self.rate.success(now, len(sent))
        if THROTTLE in kinds:
            self.rate.throttled(now)
        entry.last_error = next((o[1].line() for o in outcome.values() if o[0] not in (SENT,)), None)
        entry.next_at = now
        if QUOTA in kinds:
            reply = next(o[1] for o in outcome.values() if o[0] == QUOTA)
            until = self.quota.exceeded(now, reply.line())
            entry.next_at = until
            log.warning("spool: the upstream's daily quota is spent (%s): the queue is held until %s, then one message "
                        "tries again", reply.line(), time.strftime("%H:%M:%S", time.localtime(until)))
        elif sent and self.quota.cleared():
            log.info("spool: the upstream takes messages again after its daily quota: the queue resumes")
        if HOLD in kinds:
            _, reply, stage, failure = next(o for o in outcome.values() if o[0] == HOLD)
            entry.state = SpoolState.HELD
            entry.held_reason = f"{failure}: {reply.line()}"
            message.send_failure = entry.held_reason
            log.warning("spool: message %s held: %s (fix it, then `bounceproxy queue release %s`)", entry.relay_id,
                        entry.held_reason, entry.relay_id)
        elif DEFER in kinds:
            entry.attempts += 1
            entry.next_at = now + retry_delay(entry.attempts, self.cfg.max_backoff_seconds, jitter())
            if entry.pending and entry.next_at > entry.expires_at > now:
                entry.next_at = entry.expires_at  # one last try at the end of its lifetime
        if entry.pending and entry.state == SpoolState.QUEUED and now >= entry.expires_at:
            events.extend(self._expire(entry, message, by_address, now))
        message.status = spool_status(message.recipients)
        for attempt in range(self.record_tries):
            try:
                if not await self.store.spool_attempt(entry, self.owner, message, events):
                    log.warning("spool: message %s: its lease had run out before this attempt was recorded; another "
                                "worker may have sent it too", entry.relay_id)
                break
            except StoreError as exc:
                if attempt == self.record_tries - 1:
                    log.error("spool: message %s: the outcome could not be recorded (%s); it is sent again after its "
                              "lease%s", entry.relay_id, exc, " (a duplicate: the upstream took it)" if sent else "")
                    return
                await asyncio.sleep(0.2 * 2 ** attempt)
        if message.status != MessageStatus.QUEUED:
            log_message(message, self.name)
        if sent and hasattr(self.upstream, "accepted"):  # the simulator's late bounces and auto-replies
            self.upstream.accepted(message, sent, entry.body)
        if self.suppressor is not None and events:
            try:
                await self.suppressor.consider(events, message.sender)
            except StoreError as exc:
                log.error("could not update the suppression list for message %s: %s", message.id, exc)

    def _bounce(self, message: MessageRecord, address: str, reply: Reply, stage: str) -> BounceEvent:
        v = classify(reply.enhanced, reply.code, reply.line(), Kind.BOUNCE, command=stage, recipient=address)
        return BounceEvent(
            at=self.clock(), source=Source.SYNC, kind=Kind.BOUNCE, recipient=address.lower(), bounce_type=v.bounce_type,
            reason=v.reason, status=v.status, status_source=v.status_source, smtp_code=reply.code,
            diagnostic=reply.line(), remote_mta=self.name, relay_id=message.id, evidence=v.evidence,
            smtp_command=v.stage or stage, decided_by=v.decided_by)

    def _expire(self, entry: SpoolEntry, message: MessageRecord, by_address, now: float) -> list[BounceEvent]:
        """Past `[spool] lifetime`: the recipients still pending are given up, each a soft bounce (expired)."""
        events = []
        age = (now - entry.created_at) / 3600
        for r in entry.pending:
            last = r.last_reply or "no reply"
            text = f"451 4.4.7 Message expired in the spool after {age:.1f} hours and {r.attempts} attempts; last reply: {last}"
            r.state = SpoolRecipientState.EXPIRED
            mr = by_address[r.address]
            mr.status, mr.reply = RecipientStatus.DEFERRED, text[:1000]
            events.append(BounceEvent(
                at=now, source=Source.SYNC, kind=Kind.BOUNCE, recipient=r.address.lower(), bounce_type=BounceType.SOFT,
                reason="expired", status="4.4.7", status_source=StatusSource.REPLY_CODE, smtp_code=451,
                diagnostic=text[:1000], remote_mta=self.name, relay_id=message.id,
                evidence=f"spool: pending for longer than [spool] lifetime ({self.cfg.lifetime})",
                smtp_command="DATA", decided_by="spool: lifetime"))
            self.counts["expired"] += 1
        log.warning("spool: message %s expired for %d recipient(s) after %.1f hours", entry.relay_id, len(events), age)
        return events
