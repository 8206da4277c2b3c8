"""Acting on bounces: the suppression list and the reputation guard.

A hard bounce or a complaint suppresses the address at once (the relay then answers 550); soft
bounces count with decay, an MTA's retries of one message once, and at most one per period, and
suppress for a while (the relay then answers 4xx: the sending MTA keeps the message queued);
sender-side refusals and auto-replies never count against a recipient. Only events whose
correlation is trusted (synchronous ones always; late ones per `act_on_correlations`) act, so a
forged DSN can never suppress anyone.

The relay checks every RCPT against an in-memory index: a sorted array of 64-bit hashes (8 bytes
an entry, so a million addresses cost ~8 MB) plus a set of recent additions. A hit is confirmed
in the store, which also knows removals and expiry, so the index may only ever say "maybe".
"""
from __future__ import annotations

import array
import asyncio
import bisect
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from proxy.model import (
    NEVER_ACTS, SENDER_SIDE_REASONS, BounceEvent, BounceType, Correlation, IdentityStats, Kind, SoftBounce, Source, Suppression,
)

log = logging.getLogger(__name__)

DAY = 86400.0
SOFT_COUNTING_REASONS_EXCLUDED = SENDER_SIDE_REASONS | {"vacation", "feedback", "delivered", "undefined", "onhold",
                                                        "suppressed"}
# SES's mailbox simulator: SES never suppresses these addresses nor counts them, so neither do we, and
# a test run can be repeated and still see the simulator's own replies.
SES_SIMULATOR_DOMAIN = "simulator.amazonses.com"
# What ties an MTA's retries of one message together (fields of proxy.model.SoftBounce): the relay's id
# (several reports of one send), the client's Message-ID (Postfix keeps it), the client's bytes (no
# Message-ID: the relay adds a new one each time) and the VERP return path.
RETRY_KEYS = ("relay_id", "message_id", "content_sha256", "verp_token")
# A soft suppression answers RCPT with a temporary reply that says what it is: reason -> code,
# enhanced status (RFC 3463) and what the address keeps doing.
SOFT_REPLIES = {
    "mailboxfull": (452, "4.2.2", "mailbox repeatedly full"),
    "systemfull": (452, "4.3.1", "mail system repeatedly full"),
    "emailtoolarge": (452, "4.3.4", "messages repeatedly refused as too large"),
    "suspend": (450, "4.2.1", "mailbox repeatedly disabled"),
    "userunknown": (450, "4.1.1", "mailbox repeatedly reported unavailable"),
    "hasmoved": (450, "4.1.6", "mailbox repeatedly reported moved"),
    "hostunknown": (451, "4.1.2", "mail domain repeatedly not found"),
    "expired": (451, "4.4.7", "delivery repeatedly timed out"),
    "networkerror": (451, "4.4.1", "mail host repeatedly unreachable"),
    "systemerror": (451, "4.3.0", "mail system repeatedly failing"),
    "mailererror": (451, "4.3.0", "mail system repeatedly failing"),
}
SOFT_REPLY_OTHER = (450, "4.2.0", "mail repeatedly not accepted")


def is_simulator(address: str) -> bool:
    return normalize_address(address).rpartition("@")[2] == SES_SIMULATOR_DOMAIN


def content_digest(content: bytes) -> str:
    """SHA-256 of a message as the client sent it: an MTA's retry of a message without a Message-ID
    gets a new one from the relay each time, but its bytes stay the same."""
    return hashlib.sha256(content).hexdigest()


def normalize_address(address: str) -> str:
    """Lower case, IDNA domain; `+tags` kept (user+a and user+b are different recipients)."""
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    domain = domain.rstrip(".").lower()
    if not domain.isascii():  # IDNA leaves an ASCII name as it is (or refuses it, and it is kept as it is)
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return f"{local.lower()}@{domain}"


def sender_scope(sender: str, scope_mode: str) -> str:
    if scope_mode != "sender_domain":
        return ""
    return normalize_address(sender).rpartition("@")[2]


def _key(scope: str, address: str) -> int:
    digest = hashlib.blake2b(f"{scope}\0{address}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SuppressionIndex:
    """A compact "maybe suppressed" filter over (scope, address)."""

    MERGE_AT = 4096

    def __init__(self) -> None:
        self._sorted = array.array("q")
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def load(self, keys: list[tuple[str, str]]) -> None:
        self.load_hashes(array.array("q", (_key(s, a) for s, a in keys)))

    def load_hashes(self, hashes: array.array) -> None:
        self._sorted = array.array("q", sorted(hashes))
        self._recent = set()

    @staticmethod
    def hashes(keys: list[tuple[str, str]]):
        return (_key(s, a) for s, a in keys)

    def add(self, scope: str, address: str) -> None:
        self._recent.add(_key(scope, address))
        if len(self._recent) >= self.MERGE_AT:
            self._sorted = array.array("q", sorted(set(self._sorted) | self._recent))
            self._recent = set()

    def maybe(self, scope: str, address: str) -> bool:
        key = _key(scope, address)
        if key in self._recent:
            return True
        i = bisect.bisect_left(self._sorted, key)
        return i < len(self._sorted) and self._sorted[i] == key


@dataclass(frozen=True, slots=True)
class Decision:
    kind: str  # hard | complaint | soft
    reason: str
    expires_at: float | None


class Policy:
    """Which events suppress an address, and for how long. Pure: the clock and counts come in."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.trusted = {Correlation(c) for c in cfg.act_on_correlations} - NEVER_ACTS

    def acts_on(self, event: BounceEvent) -> bool:
        return event.recipient is not None and (event.source == Source.SYNC or event.correlation in self.trusted)

    def immediate(self, event: BounceEvent, now: float) -> Decision | None:
        if event.kind == Kind.COMPLAINT:
            days = self.cfg.complaint_expiry_days
            return Decision("complaint", event.feedback_type or "feedback", now + days * DAY if days else None)
        if event.kind == Kind.BOUNCE and event.bounce_type == BounceType.HARD:
            days = self.cfg.hard_expiry_days
            return Decision("hard", event.reason, now + days * DAY if days else None)
        return None

    def counts_as_soft(self, event: BounceEvent) -> bool:
        return (event.kind == Kind.BOUNCE and event.bounce_type == BounceType.SOFT
                and event.reason not in SOFT_COUNTING_REASONS_EXCLUDED)

    def soft_count(self, bounces: list[SoftBounce]) -> int:
        """How many of these soft bounces (oldest first, as `Store.soft_bounces` gives them) count.

        A bounce sharing any RETRY_KEYS value with an earlier one is a retry of that message and adds
        nothing (Postfix retries a 452 three times a minute, and for days). Of the rest, one counts
        per `soft_count_period_hours` at most (as Mailman scores bounces per day): a mailbox full now
        and again a minute later is one bad day, not a pattern."""
        period = self.cfg.soft_count_period_hours * 3600
        seen: set[tuple[str, str]] = set()
        count, last = 0, None
        for bounce in bounces:
            keys = {(name, getattr(bounce, name)) for name in RETRY_KEYS if getattr(bounce, name)}
            retry = bool(keys & seen)
            seen |= keys
            if retry or (last is not None and bounce.at - last < period):
                continue
            count, last = count + 1, bounce.at
        return count

    def may_reach_threshold(self, span: float | None) -> bool:
        """Counted soft bounces are a period apart at least, so bounces spanning less than
        (threshold - 1) periods cannot hold enough of them: no need to read them one by one."""
        need = (self.cfg.soft_threshold - 1) * self.cfg.soft_count_period_hours * 3600
        return span is not None and span + 1e-6 >= need

    def soft(self, event: BounceEvent, soft_count: int, now: float) -> Decision | None:
        if soft_count >= self.cfg.soft_threshold:
            return Decision("soft", event.reason, now + self.cfg.soft_suppress_days * DAY)
        return None


def refusal(row: Suppression, address: str, style: str) -> str:
    """The RCPT reply for a suppressed address: permanent for a hard bounce, a complaint or an
    operator's entry; temporary for a soft suppression (it expires, and the sending MTA must keep the
    message queued rather than bounce it for good), with the reason's own enhanced status."""
    when = _date(row.created_at)
    if row.kind == "soft":
        code, status, what = SOFT_REPLIES.get(row.reason, SOFT_REPLY_OTHER)
        until = f" until {_date(row.expires_at)}" if row.expires_at else ""
        if style == "ses":
            return (f"{code} {status} Amazon SES did not send the message to this address because it is "
                    f"temporarily on the suppression list for your account ({what}{until}).")
        return f"{code} {status} <{address}>: {what} since {when} (soft suppression{until}, {row.reason})"
    if style == "ses":
        return ("550 5.1.1 Amazon SES did not send the message to this address because it is on the "
                "suppression list for your account.")
    what = {"hard": "hard bounce", "complaint": "complaint",
            "manual": "added by an operator", "import": "imported"}.get(row.kind, row.kind)
    return f"550 5.1.1 <{address}>: address is on the suppression list ({what} {when}, {row.reason})"


def _date(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d")


class Suppressor:
    """The suppression list and reputation guard as the relay and the bounce MX use them."""

    def __init__(self, cfg, store, clock=time.time):
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.policy = Policy(cfg)
        self.index = SuppressionIndex()
        self.paused: dict[str, str] = {}
        self._seq = 0
        self._task: asyncio.Task | None = None
        self._warned: dict[str, float] = {}
        self.hits = 0
        self.observed = 0

    async def start(self) -> None:
        self._seq = await self.store.suppression_seq()
        hashes = array.array("q")
        async for chunk in self.store.suppression_keys():
            hashes.extend(SuppressionIndex.hashes(chunk))
        self.index.load_hashes(hashes)
        self.paused = await self.store.paused_identities()
        log.info("suppression list: %d addresses loaded", len(hashes))
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="suppression-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.refresh_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - a failed refresh is retried at the next tick
                log.warning("suppression refresh failed: %s", exc)

    async def refresh(self) -> None:
        """Pick up additions by other instances and the CLI, and the paused identities."""
        for scope, address, seq in await self.store.suppressions_after(self._seq):
            self.index.add(scope, address)
            self._seq = max(self._seq, seq)
        self.paused = await self.store.paused_identities()

    # -- the relay's questions ------------------------------------------------------------------
    async def lookup(self, sender: str, recipient: str) -> Suppression | None:
        """The active suppression for this recipient (in this sender's scope), or None."""
        scope = sender_scope(sender, self.cfg.scope)
        address = normalize_address(recipient)
        if address.rpartition("@")[2] == SES_SIMULATOR_DOMAIN or not self.index.maybe(scope, address):
            return None
        row = await self.store.get_suppression(scope, address)
        if row is None or (row.expires_at is not None and row.expires_at <= self.clock()):
            return None
        return row

    def paused_reply(self, sender: str) -> str | None:
        identity = normalize_address(sender).rpartition("@")[2]
        why = self.paused.get(identity)
        if why is None:
            return None
        return (f"451 4.7.1 Sending for {identity} is paused by bounceproxy's reputation guard ({why}); "
                f"an operator resumes it with `bounceproxy resume {identity}`")

    # -- acting on recorded events ----------------------------------------------------------------
    async def consider(self, events: list[BounceEvent], sender: str | None = None) -> list[str]:
        """Suppress what these (already committed) events call for; returns the addresses added."""
        added = []
        now = self.clock()
        for event in events:
            if not self.policy.acts_on(event) or is_simulator(event.recipient):
                continue
            decision = self.policy.immediate(event, now)
            if decision is None and self.policy.counts_as_soft(event):
                which = (event.recipient, now - self.cfg.soft_window_days * DAY, SOFT_COUNTING_REASONS_EXCLUDED,
                         self.policy.trusted)
                if self.policy.may_reach_threshold(await self.store.soft_bounce_span(*which)):
                    bounces = await self.store.soft_bounces(*which)
                    decision = self.policy.soft(event, self.policy.soft_count(bounces), now)
            if decision is None:
                continue
            scope_sender = sender or (await self._message_sender(event))
            scope = sender_scope(scope_sender or "", self.cfg.scope)
            address = normalize_address(event.recipient)
            source = await self.store.event_id_for(event)
            await self.store.upsert_suppressions([Suppression(
                scope, address, decision.reason, decision.kind, created_at=now, expires_at=decision.expires_at,
                source_event=source)])
            self.index.add(scope, address)
            added.append(address)
            log.info("suppressed %s (%s, %s)", address, decision.kind, decision.reason)
        if events:
            await self.guard(sender or await self._message_sender(events[0]))
        return added

    async def _message_sender(self, event: BounceEvent) -> str | None:
        if event.relay_id is None:
            return None
        message = await self.store.get_message(event.relay_id)
        return message.sender if message else None

    async def guard(self, sender: str | None) -> None:
        """Rates for the sender's identity; warn, and pause when configured to."""
        if not sender:
            return
        identity = normalize_address(sender).rpartition("@")[2]
        since = self.clock() - self.cfg.rate_window_hours * 3600
        found = await self.store.identity_stats(since, identity)
        rates = found[0] if found else IdentityStats(identity, 0, 0, 0)
        if rates.recipients < self.cfg.rate_min_recipients:
            return
        bounce_rate = rates.hard_bounces / rates.recipients
        complaint_rate = rates.complaints / rates.recipients
        cfg = self.cfg
        why = None
        if cfg.pause_bounce_rate and bounce_rate >= cfg.pause_bounce_rate:
            why = f"hard bounce rate {bounce_rate:.1%} >= {cfg.pause_bounce_rate:.1%}"
        elif cfg.pause_complaint_rate and complaint_rate >= cfg.pause_complaint_rate:
            why = f"complaint rate {complaint_rate:.2%} >= {cfg.pause_complaint_rate:.2%}"
        if why and identity not in self.paused:
            await self.store.pause_identity(identity, self.clock(), why)
            self.paused[identity] = why
            log.error("reputation guard: paused %s: %s", identity, why)
            return
        warn = (bounce_rate >= cfg.warn_bounce_rate) or (complaint_rate >= cfg.warn_complaint_rate)
        if warn and self.clock() - self._warned.get(identity, 0) > 3600:
            self._warned[identity] = self.clock()
            log.warning("reputation guard: %s hard bounce rate %.1f%%, complaint rate %.2f%% over %d recipients",
                        identity, bounce_rate * 100, complaint_rate * 100, rates.recipients)
