"""Spool mode end to end: real clients (aiosmtplib) into a SpoolHandler on a loopback port, a real store, delivery
workers over a real UpstreamPool to an aiosmtpd upstream that throttles above a fixed rate, fails transiently and
refuses some recipients after earlier ones were accepted."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict, deque
from email.parser import BytesHeaderParser

import aiosmtplib

from proxy.config import SpoolConfig
from proxy.model import MessageStatus, RecipientStatus, Source
from proxy.relay.server import RelaySMTP
from proxy.relay.upstream import UpstreamPool
from proxy.relay.verp import VerpSigner
from proxy.smtp_guard import Limits
from proxy.spool import SpoolHandler, SpoolWorkers, queue_summary
from proxy.store import store_for_config
from tests.conftest import ROOT, make_config, start_upstream
from tests.test_spool_rate import window_max

THROTTLE = "454 Throttling failure: Maximum sending rate exceeded."
QUOTA = "454 Throttling failure: Daily message quota exceeded."


class ThrottlingUpstream:
    """Takes at most `quota` recipients in any one-second window (sliding) and answers `454 Throttling failure`
    after DATA beyond that. `flaky*` recipients get 451 at their first RCPT, `unknown*` 550 (after the others
    were accepted), `quota*` senders the daily quota reply once, `unverified@` senders 554 until `verified`."""

    def __init__(self, quota: int = 1_000_000, delay: float = 0.0):
        self.quota = quota
        self.delay = delay
        self.window: deque[float] = deque()
        self.attempts: list[tuple[float, bool]] = []  # (at, accepted) for each end of data
        self.copies: dict[str, list[tuple[str, str]]] = defaultdict(list)  # Message-ID -> [(recipient, upstream id)]
        self.ids: dict[str, list[str]] = defaultdict(list)  # Message-ID -> upstream ids issued, in order
        self.flaky_seen: set[str] = set()
        self.quota_spent = 0
        self.verified = False
        self.connections = 0
        self.auth_logins: list[str] = []

    async def handle_MAIL(self, server, session, envelope, address, options):
        if address.startswith("unverified@") and not self.verified:
            return "554 Message rejected: Email address is not verified. The following identities failed the check"
        envelope.mail_from = address
        return "250 Ok"

    async def handle_RCPT(self, server, session, envelope, address, options):
        local = address.split("@")[0]
        if local.startswith("unknown"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("flaky") and address not in self.flaky_seen:
            self.flaky_seen.add(address)
            return "451 4.3.0 Temporary local problem, try again"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        now = time.monotonic()
        if envelope.mail_from.startswith("quota") and self.quota_spent < 1:
            self.quota_spent += 1
            return QUOTA
        while self.window and self.window[0] <= now - 1.0:
            self.window.popleft()
        n = len(envelope.rcpt_tos)
        if len(self.window) + n > self.quota:
            self.attempts.append((now, False))
            return THROTTLE
        self.window.extend([now] * n)
        self.attempts.append((now, True))
        msgid = BytesHeaderParser().parsebytes(envelope.original_content)["Message-ID"].strip("<> ")
        upstream_id = f"0100018c{secrets.token_hex(6)}-000000"
        self.ids[msgid].append(upstream_id)
        for r in envelope.rcpt_tos:
            self.copies[msgid].append((r, upstream_id))
        return f"250 Ok {upstream_id}"


class Stack:
    """A spool-mode listener, its store and its workers (what proxy/app.py builds in spool mode)."""

    def __init__(self, config, store, pool, handler, workers, server):
        self.config, self.store, self.pool, self.handler, self.workers, self.server = \
            config, store, pool, handler, workers, server
        self.port = server.sockets[0].getsockname()[1]

    async def close(self, grace: float = 5.0) -> None:
        self.server.close()
        if self.workers is not None:
            await self.workers.stop(grace)
        await self.pool.close()
        await self.store.close()


def spool_config(tmp_path, upstream_port, store_url=None, **spool):
    config = make_config(tmp_path, upstream_port, store_url=store_url, relay={"mode": "spool"})
    up = dataclasses.replace(config.upstream, pool_size=16, command_timeout=5)
    return dataclasses.replace(config, upstream=up, spool=SpoolConfig(**{"lease_seconds": 30.0, **spool}))


async def start_stack(config, workers: bool = True, clock=time.time, verp: bool = True) -> Stack:
    store = await store_for_config(config.store).open()
    pool = UpstreamPool(config.upstream, "relay.test", None, None)
    spool = SpoolWorkers(config, store, pool, clock=clock) if workers else None
    signer = VerpSigner(b"k" * 32, "bounce", "bounces.test") if verp else None  # off: the upstream sees the sender
    handler = SpoolHandler(config, store, pool, verp=signer,
                           on_queued=spool.notify if spool else None)
    limits = Limits(1000, 1000, 3600)
    server = await asyncio.get_running_loop().create_server(
        lambda: RelaySMTP(handler, hostname="relay.test", enable_SMTPUTF8=True, limits=limits, ident="test"),
        "127.0.0.1", 0)
    if spool is not None:
        await spool.start()
    return Stack(config, store, pool, handler, spool, server)


def mail(msgid: str, sender: str = "app@example.com", size: int = 300) -> bytes:
    return (f"From: {sender}\r\nTo: someone\r\nSubject: spool test\r\nMessage-ID: <{msgid}>\r\n\r\n".encode()
            + b"x" * size + b"\r\n")


async def send_all(port: int, messages: list[tuple[str, list[str], bytes]], sessions: int = 10) -> list[str]:
    """Each message over one of `sessions` client connections; returns the final replies."""
    replies: list[str] = []
    queue = list(messages)

    async def session():
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as client:
            while queue:
                sender, rcpts, body = queue.pop()
                errors, text = await client.sendmail(sender, rcpts, body)
                replies.append(text)
    await asyncio.gather(*(session() for _ in range(sessions)))
    return replies


async def drained(store, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = await store.spool_counts(time.time())
        if counts.queued == 0 and counts.held == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the spool did not drain in {timeout}s: {await store.spool_counts(time.time())}")


async def test_throttling_flaky_and_partial_upstream_gets_all_mail_once(tmp_path):
    quota = 20
    handler = ThrottlingUpstream(quota)
    up = await start_upstream(handler)
    stack = await start_stack(spool_config(tmp_path, up.port, concurrency=8))
    try:
        messages = [("app@example.com", [f"ok{i}@example.org"], mail(f"m{i}@test")) for i in range(220)]
        messages += [("app@example.com", [f"flaky{i}@example.org"], mail(f"f{i}@test")) for i in range(3)]
        messages += [("app@example.com", [f"first{i}@example.org", f"unknown{i}@example.org"], mail(f"p{i}@test"))
                     for i in range(3)]
        started = time.monotonic()
        replies = await send_all(stack.port, messages)
        accepted_in = time.monotonic() - started
        assert len(replies) == len(messages) and all(r.startswith("2.0.0 Ok: queued as ") for r in replies)
        assert accepted_in < 10  # far faster than the upstream's 20 a second: the spool took them
        await drained(stack.store, 60)
        # every recipient the upstream accepts got exactly one copy; the refused one none
        for i in range(220):
            assert [r for r, _ in handler.copies[f"m{i}@test"]] == [f"ok{i}@example.org"]
        for i in range(3):
            assert [r for r, _ in handler.copies[f"f{i}@test"]] == [f"flaky{i}@example.org"]
            assert [r for r, _ in handler.copies[f"p{i}@test"]] == [f"first{i}@example.org"]
        # the refusal after the client's 250 is a bounce of that recipient, source sync; the message partial
        message = await stack.store.find_message_by_message_id("p0@test")
        assert message.status == MessageStatus.PARTIAL
        assert [r.status for r in message.recipients] == [RecipientStatus.ACCEPTED, RecipientStatus.REJECTED]
        [event] = await stack.store.message_events(message.id)
        assert (event.recipient, event.source, event.smtp_code, event.reason) == \
            ("unknown0@example.org", Source.SYNC, 550, "userunknown")
        assert message.upstream_id == handler.ids["p0@test"][0]
        flaky = await stack.store.find_message_by_message_id("f0@test")
        assert flaky.status == MessageStatus.SENT and await stack.store.message_events(flaky.id) == []
        # the pace: learnt within seconds; then attempts in any one second exceed the quota by one at most,
        # and almost none is throttled
        rate = stack.workers.rate
        assert rate.learnt_at is not None
        learnt = time.monotonic() - (time.time() - rate.learnt_at) + 1.0
        later = [at for at, _ in handler.attempts if at >= learnt]
        assert window_max(later) <= quota + 1, window_max(later)
        throttled_later = sum(1 for at, ok in handler.attempts if at >= learnt and not ok)
        assert throttled_later <= max(2, 0.05 * len(later)), (throttled_later, len(later))
        assert quota * 0.9 <= rate.rate <= quota * 1.05
    finally:
        await stack.close()
        up.server.close()


async def test_daily_quota_holds_the_queue_and_says_so(tmp_path):
    handler = ThrottlingUpstream()
    up = await start_upstream(handler)
    stack = await start_stack(spool_config(tmp_path, up.port, quota_retry_seconds=2.0), verp=False)
    try:
        await send_all(stack.port, [("quota@example.com", ["a@example.org"], mail("q1@test"))], sessions=1)
        deadline = time.monotonic() + 5
        while stack.workers.status()["quota_held_until"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        summary = await queue_summary(stack.store, stack.workers)
        assert summary["queued"] == 1 and summary["delivery_quota_held_until"] is not None
        assert "Daily message quota" in summary["delivery_quota_reply"]
        assert stack.workers.metrics()["bounceproxy_spool_quota_held"] == 1.0
        await drained(stack.store, 10)  # after the hold, one message tries, and the queue resumes
        assert [r for r, _ in handler.copies["q1@test"]] == ["a@example.org"]
        assert (await stack.store.find_message_by_message_id("q1@test")).status == MessageStatus.SENT
        assert stack.workers.metrics()["bounceproxy_spool_quota_held"] == 0.0
    finally:
        await stack.close()
        up.server.close()


async def test_sender_refusal_holds_until_released_and_expiry_is_a_soft_bounce(tmp_path):
    handler = ThrottlingUpstream()
    up = await start_upstream(handler)
    stack = await start_stack(spool_config(tmp_path, up.port), verp=False)
    try:
        await send_all(stack.port, [("unverified@example.com", ["a@example.org"], mail("h1@test"))], sessions=1)
        deadline = time.monotonic() + 5
        while not (held := await stack.store.list_spool("held")) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert held and "not verified" in held[0].held_reason
        message = await stack.store.get_message(held[0].relay_id)
        assert message.status == MessageStatus.QUEUED and "sender not verified" in message.send_failure
        assert await stack.store.message_events(message.id) == []  # never held against the recipient
        handler.verified = True
        assert await stack.store.spool_control("release", [held[0].relay_id]) == 1
        stack.workers.notify()
        await drained(stack.store, 5)
        assert [r for r, _ in handler.copies["h1@test"]] == ["a@example.org"]
    finally:
        await stack.close()
    # a day later (the clock is passed in), a recipient still deferred expires: a soft bounce, never sent
    later = await start_stack(spool_config(tmp_path, up.port, lifetime="1h"), workers=False)
    try:
        await send_all(later.port, [("app@example.com", ["flakyx@example.org", "b@example.org"], mail("e1@test"))],
                       sessions=1)
        workers = SpoolWorkers(later.config, later.store, later.pool, clock=lambda: time.time() + 86400)
        [entry] = await later.store.claim_spool(workers.owner, time.time() + 86400, 30, 10)
        await workers.deliver(entry)
        assert await later.store.get_spool(entry.relay_id) is None
        message = await later.store.get_message(entry.relay_id)
        assert message.status == MessageStatus.PARTIAL
        [event] = await later.store.message_events(message.id)
        assert (event.recipient, event.reason, event.bounce_type.value, event.status) == \
            ("flakyx@example.org", "expired", "soft", "4.4.7")
        assert [r for r, _ in handler.copies["e1@test"]] == ["b@example.org"]
    finally:
        await later.close()
        up.server.close()


async def test_two_instances_on_one_postgresql_drain_one_spool_once(tmp_path, pg_url):
    handler = ThrottlingUpstream(delay=0.01)
    up = await start_upstream(handler)
    config = spool_config(tmp_path, up.port, store_url=pg_url, concurrency=4, max_rate=500.0)
    one = await start_stack(config, workers=False)
    try:
        await send_all(one.port, [("app@example.com", [f"r{i}@example.org"], mail(f"t{i}@test")) for i in range(120)])
        two = await start_stack(config, workers=False)
        workers = [SpoolWorkers(config, s.store, s.pool) for s in (one, two)]
        try:
            for w in workers:
                await w.start()
            await drained(one.store, 30)
        finally:
            for w in workers:
                await w.stop(5)
            await two.close()
        assert all(len(handler.copies[f"t{i}@test"]) == 1 for i in range(120))
        assert all(w.counts["sent"] > 10 for w in workers), [w.counts for w in workers]
        assert sum(w.counts["sent"] for w in workers) == 120
    finally:
        await one.close()
        up.server.close()


RUNNER = """
import asyncio, dataclasses, sys
from proxy.config import SpoolConfig
from proxy.relay.upstream import UpstreamPool
from proxy.spool import start_spool
from proxy.store import store_for_url
from tests.test_spool import spool_config

async def main(db, port):
    config = spool_config(__import__("pathlib").Path(db).parent, int(port), concurrency=4, max_rate=50.0)
    store = await store_for_url("sqlite:///" + db).open()
    pool = UpstreamPool(config.upstream, "relay.test", None, None)
    await start_spool(config, store, pool)
    print("running", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def runner(db: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, db, str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == b"running"
    return proc


async def test_kill_9_during_delivery_loses_nothing_and_repeats_nothing_acknowledged(tmp_path):
    handler = ThrottlingUpstream(delay=0.15)
    up = await start_upstream(handler)
    config = spool_config(tmp_path, up.port)
    accept = await start_stack(config, workers=False)
    db = config.store.path
    try:
        total = 60
        await send_all(accept.port, [("app@example.com", [f"k{i}@example.org"], mail(f"k{i}@test"))
                                     for i in range(total)])
        proc = runner(db, up.port)
        try:
            deadline = time.monotonic() + 20
            while sum(len(v) for v in handler.ids.values()) < 12 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)  # mid-delivery: four are in flight
            proc.wait()
            before = sum(len(v) for v in handler.ids.values())
            assert 0 < before < total
            proc = runner(db, up.port)  # what the dead one had claimed goes after its lease (30 s)
            await drained(accept.store, 60)
        finally:
            proc.kill()
            proc.wait()
        for i in range(total):
            ids = handler.ids[f"k{i}@test"]
            assert ids, f"k{i} was lost"
            message = await accept.store.find_message_by_message_id(f"k{i}@test")
            assert message.status == MessageStatus.SENT
            # a 250 the log recorded was never followed by another send: only an unrecorded one (the window) is
            assert message.upstream_id == ids[-1], (i, ids, message.upstream_id)
        repeated = sum(1 for i in range(total) if len(handler.ids[f"k{i}@test"]) > 1)
        assert repeated <= 4  # at most what was in flight at the kill
    finally:
        await accept.close()
        up.server.close()


async def test_an_address_suppressed_while_its_message_waited_is_never_sent(tmp_path):
    from proxy.model import Suppression
    from proxy.suppression import Suppressor

    handler = ThrottlingUpstream()
    up = await start_upstream(handler)
    config = spool_config(tmp_path, up.port)
    stack = await start_stack(config, workers=False, verp=False)
    suppressor = Suppressor(config.suppression, stack.store)
    try:
        await send_all(stack.port, [("app@example.com", ["gone@example.org", "b@example.org"], mail("s1@test"))],
                       sessions=1)
        # while it waited, another message's hard bounce put gone@ on the list
        await stack.store.upsert_suppressions([Suppression("", "gone@example.org", "userunknown", "hard", time.time())])
        await suppressor.start()
        workers = SpoolWorkers(config, stack.store, stack.pool, suppressor=suppressor)
        [entry] = await stack.store.claim_spool(workers.owner, time.time() + 1, 30, 10)
        await workers.deliver(entry)
        message = await stack.store.get_message(entry.relay_id)
        status = {r.address: (r.status, r.reply) for r in message.recipients}
        assert status["gone@example.org"][0] == RecipientStatus.SUPPRESSED
        assert status["gone@example.org"][1].startswith("550 5.1.1 <gone@example.org>: address is on the suppression list")
        assert status["b@example.org"][0] == RecipientStatus.ACCEPTED and message.status == MessageStatus.PARTIAL
        assert [r for r, _ in handler.copies["s1@test"]] == ["b@example.org"]  # gone@ never went upstream
        assert await stack.store.get_spool(entry.relay_id) is None and workers.counts["suppressed"] == 1
    finally:
        await suppressor.stop()
        await stack.close()
        up.server.close()
