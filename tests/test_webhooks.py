"""Webhooks (issue 14): real events through a real store (SQLite and PostgreSQL) reach a real aiohttp
receiver on loopback that checks every signature with the README's verifier, fails the first tries,
answers too slowly once, gives up; and a `bounceproxy serve` killed with SIGKILL mid-delivery loses
no notification. Every event arrives, in order per address, exactly once after de-duplication."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import signal
import smtplib
import time
from collections import defaultdict

import pytest
from aiohttp import web
from click.testing import CliRunner

from proxy.config import ConfigError, WebhooksConfig, load_config
from proxy.model import (
    BounceEvent, BounceType, Correlation, InboundResult, Kind, MessageRecord, MessageStatus, NotificationType,
    OutboxEntry, ParseState, RecipientRecord, RecipientStatus, Source, Suppression,
)
from proxy.store import store_for_url
from proxy.webhooks import HEADER, WebhookDispatcher, body, start_webhooks
from proxy.webhooks.commands import webhooks as webhooks_cli
from tests.conftest import start_upstream, until
from tests.daemon import Daemon

SECRET = b"whsec-test-0123456789"
NOW = time.time()


# -- the README's verifier, verbatim: the receivers below trust nothing else ----------------------------
def readme_verify(secret: bytes, body: bytes, header: str, tolerance: int = 300) -> bool:
    """body: the raw request bytes; header: the X-Bounceproxy-Signature value."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    if abs(time.time() - int(fields["t"])) > tolerance:
        return False  # too old, or from the future: a replay
    signed = fields["t"].encode() + b"." + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


@dataclasses.dataclass
class Hit:
    path: str
    key: str
    n: int  # the n-th request for this key on this path
    body: bytes
    answer: object  # the status given, or "slow"


class Receiver:
    """An application's endpoint on loopback. `script(path, key, n)` says how to answer: a status, or
    "slow" (answer 200 only after `slow_seconds`, past the sender's timeout). Every signature is checked."""

    def __init__(self, script=None, hold: float = 0.0, slow_seconds: float = 1.0):
        self.script = script or (lambda path, key, n: 200)
        self.hold = hold
        self.slow_seconds = slow_seconds
        self.hits: list[Hit] = []
        self.bad: list[str] = []
        self.in_progress = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{name}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    def url(self, name: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        key = request.headers.get("X-Bounceproxy-Event-Id", "")
        try:
            ok = readme_verify(SECRET, raw, request.headers[HEADER])
        except (KeyError, ValueError):
            ok = False
        if not ok or request.headers.get("Content-Type") != "application/json" \
                or not request.headers.get("User-Agent", "").startswith("bounceproxy") \
                or json.loads(raw)["bounceproxy"]["eventId"] != key:
            self.bad.append(key)
            return web.Response(status=401)
        n = 1 + sum(1 for h in self.hits if h.key == key and h.path == request.path)
        answer = self.script(request.path, key, n)
        self.hits.append(Hit(request.path, key, n, raw, answer))
        self.in_progress += 1
        try:
            if answer == "slow":
                await asyncio.sleep(self.slow_seconds)
                return web.Response(status=200)
            if self.hold:
                await asyncio.sleep(self.hold)
            return web.Response(status=answer)
        finally:
            self.in_progress -= 1

    def keys(self, path: str | None = None) -> list[str]:
        return [h.key for h in self.hits if path is None or h.path == path]


def message(relay_id: str, recipient: str, status=MessageStatus.REJECTED, send_failure=None) -> MessageRecord:
    return MessageRecord(id=relay_id, created_at=NOW, sender="app@shop.example", header_from="app@shop.example",
                         message_id=f"<{relay_id}@shop.example>", subject="hi", status=status,
                         upstream_id=f"up-{relay_id}", send_failure=send_failure,
                         recipients=[RecipientRecord(recipient, RecipientStatus.REJECTED, "550 5.1.1 gone")])


def event(recipient: str, relay_id: str, kind=Kind.BOUNCE, source=Source.SYNC, reason="userunknown",
          bounce_type=BounceType.HARD, inbound_id=None, correlation=Correlation.NONE) -> BounceEvent:
    return BounceEvent(at=NOW, source=source, kind=kind, recipient=recipient, bounce_type=bounce_type, reason=reason,
                       status="5.1.1" if bounce_type == BounceType.HARD else "4.2.2", smtp_code=550,
                       diagnostic="550 5.1.1 user unknown", relay_id=relay_id, inbound_id=inbound_id,
                       correlation=correlation, remote_mta="mx.x.example [192.0.2.7]")


def hooks(*urls: str, **changes) -> WebhooksConfig:
    base = dict(urls=urls, max_attempts=10, timeout_seconds=0.3, concurrency=4, backoff_base_seconds=0.02,
                backoff_max_seconds=0.1)
    return WebhooksConfig(**{**base, **changes})


async def drive(store) -> None:
    """Bounces, a delay, a complaint, a send failure, a suppression added and removed, for two addresses."""
    a, b = "a@x.example", "b@x.example"
    await store.record_message(message("a1", a), [event(a, "a1")])
    await store.record_message(message("b1", b, MessageStatus.SENT), [])
    await store.upsert_suppressions([Suppression("", a, "userunknown", "hard", NOW)])
    inbound = await store.store_inbound("192.0.2.1", "", ["bounce@bounces.test"], b"dsn and arf")
    await store.record_inbound_result(inbound, InboundResult(ParseState.PARSED, "v1", "delay", "rfc3464", events=[
        event(b, "b1", Kind.DELAY, Source.ASYNC, "mailboxfull", BounceType.SOFT, inbound, Correlation.VERP),
        event(a, "a1", Kind.COMPLAINT, Source.ASYNC, "feedback", BounceType.UNDETERMINED, inbound, Correlation.VERP)]))
    assert await store.delete_suppression("", a)
    await store.record_message(message("f1", "c@x.example", MessageStatus.FAILED,
                                       "454 Throttling failure: Maximum sending rate exceeded."))
    await store.record_message(message("a2", a), [event(a, "a2", reason="mailboxfull", bounce_type=BounceType.SOFT)])


# -- pure parts ----------------------------------------------------------------------------------------
def test_the_body_is_stable_and_signed_over_time_and_body():
    entry = OutboxEntry(id=1, key="event-7", url="http://r/hook", type=NotificationType.DELAY, address="b@x.example",
                        created_at=NOW, state="pending", relay_id="b1", event_id=7)
    ev = dataclasses.replace(event("b@x.example", "b1", Kind.DELAY, Source.ASYNC, "mailboxfull", BounceType.SOFT), id=7)
    first = body(entry, ev, message("b1", "b@x.example"))
    again = body(dataclasses.replace(entry, attempts=5, next_at=NOW + 99, last_error="HTTP 500"), ev,
                 message("b1", "b@x.example"))
    assert first == again  # what changes between tries is not in the body
    doc = json.loads(first)
    assert doc["eventType"] == "DeliveryDelay" and "bounce" not in doc  # a delay is never told as a bounce
    assert doc["deliveryDelay"]["delayType"] == "MailboxFull"
    assert doc["deliveryDelay"]["delayedRecipients"] == [{"emailAddress": "b@x.example", "status": "4.2.2",
                                                          "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]
    assert doc["mail"]["messageId"] == "up-b1" and doc["mail"]["commonHeaders"]["messageId"] == "<b1@shop.example>"
    assert doc["bounceproxy"] == {
        "eventId": "event-7", "type": "delay", "address": "b@x.example", "queuedAt": doc["bounceproxy"]["queuedAt"],
        "relayId": "b1", "messageId": "<b1@shop.example>", "upstreamId": "up-b1", "logEventId": 7, "source": "async",
        "correlation": "none", "reason": "mailboxfull", "bounceType": None, "status": "4.2.2", "smtpCode": 550,
        "diagnostic": "550 5.1.1 user unknown"}
    from proxy.webhooks import sign, verify

    now = int(time.time())  # not the module's NOW: the verifier refuses a signature older than 300 s
    header = sign(SECRET, first, now)
    assert readme_verify(SECRET, first, header) and verify(SECRET, first, header)
    assert not readme_verify(SECRET, first + b" ", header)  # the body is signed
    assert not readme_verify(SECRET, first, header.replace(f"t={now}", f"t={now + 1}"))  # and the time
    assert not readme_verify(b"other", first, header)
    assert not verify(SECRET, first, sign(SECRET, first, now - 3600))  # a replay an hour later
    assert not verify(SECRET, first, "v1=00") and not verify(SECRET, first, "garbage")


def test_webhooks_config_reads_filters_and_names_its_mistakes(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[webhooks]\nurls = ["https://a.example/h", "https://b.example/h?token=x"]\n'
                    'events = ["https://b.example/h?token=x bounce complaint"]\nmax_attempts = 3\n')
    cfg = load_config(path, env={})
    assert [(t.url, t.types) for t in cfg.webhooks.targets()] == [
        ("https://a.example/h", None), ("https://b.example/h?token=x", frozenset({"bounce", "complaint"}))]
    env = {"BOUNCEPROXY_WEBHOOKS__URLS": "http://h1/x, http://h2/y", "BOUNCEPROXY_WEBHOOKS__EVENTS": "http://h2/y delay"}
    assert [(t.url, t.types) for t in load_config(None, env=env).webhooks.targets()] == [
        ("http://h1/x", None), ("http://h2/y", frozenset({"delay"}))]
    for text, needle in [
        ('urls = ["ftp://a/h"]', "[webhooks] urls: 'ftp://a/h' is not an http"),
        ('urls = ["https://u:pw@a/h"]', "[webhooks] urls: a must not hold a user or password"),
        ('urls = ["https://a/h"]\nevents = ["https://a/h bonce"]', "[webhooks] events: 'https://a/h bonce'"),
        ('urls = ["https://a/h"]\nevents = ["https://b/h bounce"]', "must start with one of [webhooks] urls"),
        ('urls = ["https://a/h"]\nevents = ["https://a/h"]', "one or more of bounce, complaint"),
        ("max_attempts = 0", "[webhooks] max_attempts must be at least 1"),
        ("timeout_seconds = 0", "[webhooks] timeout_seconds must be more than 0"),
        ("backoff_base_seconds = 10\nbackoff_max_seconds = 5", "[webhooks] backoff_max_seconds must be at least"),
        ("concurrency = -1", "[webhooks] concurrency"),
    ]:
        path.write_text(f"[webhooks]\n{text}\n")
        with pytest.raises(ConfigError) as exc:
            load_config(path, env={})
        assert str(path) in str(exc.value) and needle in str(exc.value), (text, str(exc.value))


async def test_start_webhooks_needs_the_secret_and_sets_the_targets(any_store, monkeypatch):
    cfg = load_config(None, env={})
    assert await start_webhooks(cfg, any_store) is None and any_store.webhook_targets == ()
    cfg = dataclasses.replace(cfg, webhooks=hooks("http://127.0.0.1:9/h", secret_env="TEST_WEBHOOK_SECRET"))
    monkeypatch.delenv("TEST_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="environment variable TEST_WEBHOOK_SECRET holding the signing secret"):
        await start_webhooks(cfg, any_store)
    assert any_store.webhook_targets == ()  # refused before anything is queued
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", "s3cret")
    assert await start_webhooks(cfg, any_store, dispatch=False) is None
    assert [t.url for t in any_store.webhook_targets] == ["http://127.0.0.1:9/h"]


# -- delivery through failures -------------------------------------------------------------------------
async def test_every_event_arrives_once_in_order_per_address_through_failures_and_a_slow_answer(any_store):
    def flaky(path, key, n):  # /all: 500, then too slow, then accepted; /bounces: 503 once
        if path == "/all":
            return {1: 500, 2: "slow"}.get(n, 200)
        return 503 if n == 1 else 204

    receiver = await Receiver(flaky, slow_seconds=0.8).start()
    all_url, bounce_url = receiver.url("all"), receiver.url("bounces")
    cfg = hooks(all_url, bounce_url, events=(f"{bounce_url} bounce complaint",))
    any_store.webhook_targets = cfg.targets()
    await drive(any_store)
    queued = sorted(await any_store.list_webhooks(limit=1000), key=lambda e: e.id)
    assert len(queued) == 7 + 3
    dispatcher = WebhookDispatcher(cfg, any_store, SECRET)
    await dispatcher.start()
    try:
        await until(lambda: _all_delivered(any_store), timeout=60)
    finally:
        await dispatcher.stop()
        await receiver.stop()
    assert receiver.bad == []
    # exactly once after de-duplication by event id, for each URL
    for url, path in ((all_url, "/all"), (bounce_url, "/bounces")):
        expected = [e.key for e in queued if e.url == url]
        assert sorted(set(receiver.keys(path))) == sorted(expected)
        accepted = [h.key for h in receiver.hits if h.path == path and h.answer in (200, 204, "slow")]
        assert set(accepted) == set(expected)
        # in order per address: every try of an entry comes before any of the next one of its address
        for address in {e.address for e in queued if e.url == url}:
            order = [e.key for e in queued if e.url == url and e.address == address]
            arrived = [h.key for h in receiver.hits if h.path == path and json.loads(h.body)["bounceproxy"]["address"] == address]
            assert [k for i, k in enumerate(arrived) if i == 0 or arrived[i - 1] != k] == order, address
    assert all(h.n == 3 for h in receiver.hits if h.path == "/all" and h.answer == 200)  # two failed tries each
    # the body of one entry is byte-identical across its tries (and across URLs)
    bodies = defaultdict(set)
    for h in receiver.hits:
        bodies[h.key].add(h.body)
    assert all(len(b) == 1 for b in bodies.values()) and len(bodies) == 7
    assert dispatcher.delivered == 10 and dispatcher.failed == 7 * 2 + 3 and dispatcher.dead == 0
    told = {k: json.loads(next(iter(b))) for k, b in bodies.items()}
    by_type = defaultdict(list)
    for doc in told.values():
        by_type[doc["eventType"]].append(doc)
    assert sorted((t, len(d)) for t, d in by_type.items()) == [
        ("Bounce", 2), ("Complaint", 1), ("DeliveryDelay", 1), ("SendFailure", 1), ("SuppressionAdded", 1),
        ("SuppressionRemoved", 1)]
    first = next(d for d in by_type["Bounce"] if d["bounceproxy"]["relayId"] == "a1")
    assert first["bounce"]["bounceType"] == "Permanent" and first["bounce"]["bouncedRecipients"][0]["emailAddress"] == "a@x.example"
    assert first["bounceproxy"]["source"] == "sync" and first["bounceproxy"]["messageId"] == "<a1@shop.example>"
    [complaint] = by_type["Complaint"]
    assert complaint["complaint"]["complainedRecipients"] == [{"emailAddress": "a@x.example"}]
    assert complaint["bounceproxy"]["correlation"] == "verp"
    [failure] = by_type["SendFailure"]
    assert failure["sendFailure"]["reason"].startswith("454 Throttling failure")
    assert failure["bounceproxy"]["address"] == "app@shop.example" and failure["mail"]["messageId"] == "up-f1"
    [removed] = by_type["SuppressionRemoved"]
    assert removed["suppression"]["reason"] == "userunknown" and removed["suppression"]["emailAddress"] == "a@x.example"


async def _all_delivered(store) -> bool:
    counts = await store.webhook_counts()
    return set(counts) == {"delivered"}


async def test_a_dead_endpoint_is_given_up_after_max_attempts_and_retry_revives_it(any_store, store_url, tmp_path,
                                                                                   monkeypatch):
    refuse = True
    receiver = await Receiver(lambda path, key, n: 503 if refuse else 200).start()
    closed = f"http://127.0.0.1:{_closed_port()}/hook"
    cfg = hooks(receiver.url(), closed, max_attempts=3)
    any_store.webhook_targets = cfg.targets()
    await any_store.record_message(message("d1", "dead@x.example"), [event("dead@x.example", "d1")])
    await any_store.record_message(message("d2", "dead@x.example"), [event("dead@x.example", "d2")])
    dispatcher = WebhookDispatcher(cfg, any_store, SECRET)
    await dispatcher.start()
    config_path = tmp_path / "cli.toml"
    config_path.write_text(f'[store]\nbackend = "postgresql"\nurl = "{store_url}"\n' if store_url else
                           f'[store]\npath = "{tmp_path / "store.db"}"\n')
    cli = _cli(config_path, monkeypatch)
    try:
        # a dead entry stops blocking its queue: the next one is tried, and given up too
        dead = await until(lambda: _dead(any_store, 4), timeout=30)
        assert {(e.url, e.attempts) for e in dead} == {(receiver.url(), 3), (closed, 3)}
        assert {e.last_error for e in dead if e.url == receiver.url()} == {"HTTP 503"}
        assert all("onnect" in e.last_error for e in dead if e.url == closed)
        assert len(receiver.hits) == 2 * 3 and dispatcher.dead == 4
        listed = [json.loads(line) for line in (await cli("list", "--state", "dead", "--json")).output.splitlines()]
        assert sorted(r["id"] for r in listed) == sorted(e.id for e in dead) and listed[0]["state"] == "dead"

        refuse = False
        one = min(e.id for e in dead if e.url == receiver.url())
        result = await cli("retry", str(one))
        assert result.exit_code == 0 and result.output == "1 webhook(s) due again\n"
        await until(lambda: _state(any_store, one, "delivered"))
        result = await cli("retry")  # every dead one: the other of the receiver and both of the closed port
        assert result.exit_code == 0 and result.output == "3 webhook(s) due again\n"
        await until(lambda: _dead(any_store, 2), timeout=30)  # the closed port dies again; the receiver takes its
        assert sorted(set(receiver.keys())) == sorted({e.key for e in dead if e.url == receiver.url()})
        result = await cli("retry", "999999")
        assert result.exit_code == 1 and "nothing to retry" in result.output
        table = (await cli("list")).output.splitlines()
        assert table[0].split() == ["ID", "STATE", "TYPE", "ADDRESS", "ATTEMPTS", "NEXT_AT", "URL", "KEY", "LAST_ERROR"]
        assert len(table) == 1 + 4 + 1 and table[-1] == "delivered 2; dead 2"
    finally:
        await dispatcher.stop()
        await receiver.stop()


async def test_an_entry_for_a_url_taken_out_of_the_config_is_kept_and_not_sent(any_store):
    receiver = await Receiver().start()
    any_store.webhook_targets = hooks(receiver.url("old"), receiver.url("new")).targets()
    await any_store.record_message(message("o1", "o@x.example"), [event("o@x.example", "o1")])
    dispatcher = WebhookDispatcher(hooks(receiver.url("new")), any_store, SECRET)  # restarted without /old
    await dispatcher.start()
    try:
        [dead] = await until(lambda: _dead(any_store, 1))
        await until(lambda: _true(len(receiver.hits) == 1))
    finally:
        await dispatcher.stop()
        await receiver.stop()
    assert (dead.url, dead.attempts, dead.last_error) == (receiver.url("old"), 1, "the URL is no longer in [webhooks] urls")
    assert [h.path for h in receiver.hits] == ["/new"]


async def test_webhooks_test_sends_one_signed_sample_and_says_what_the_receiver_answered(tmp_path, monkeypatch):
    receiver = await Receiver(lambda path, key, n: 200 if path == "/ok" else 500).start()
    config_path = tmp_path / "c.toml"
    config_path.write_text('[webhooks]\nsecret_env = "TEST_WEBHOOK_SECRET"\n')
    cli = _cli(config_path, monkeypatch)
    try:
        ok = await cli("test", receiver.url("ok"))
        assert ok.exit_code == 0 and ok.output.startswith(f"{receiver.url('ok')}: HTTP 200 (event id test-")
        [hit] = receiver.hits
        assert json.loads(hit.body)["eventType"] == "Bounce" and receiver.bad == []
        refused = await cli("test", receiver.url("no") + "?token=hidden")
        assert refused.exit_code == 1 and "HTTP 500" in refused.output and "hidden" not in refused.output
        down = await cli("test", f"http://127.0.0.1:{_closed_port()}/x")
        assert down.exit_code == 1 and "did not accept the sample" in down.output
        monkeypatch.delenv("TEST_WEBHOOK_SECRET")
        unsigned = await cli("test", receiver.url("ok"))
        assert isinstance(unsigned.exception, ConfigError) and "TEST_WEBHOOK_SECRET" in str(unsigned.exception)
        assert len(receiver.hits) == 2  # nothing unsigned was sent
    finally:
        await receiver.stop()


def _cli(config_path, monkeypatch):
    """`bounceproxy webhooks ...` in a thread (it runs its own event loop), with the test's secret."""
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET.decode())
    runner = CliRunner()

    async def invoke(*args: str):
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: runner.invoke(webhooks_cli, [args[0], "-c", str(config_path), *args[1:]]))
    return invoke


async def _dead(store, n: int):
    dead = await store.list_webhooks("dead")
    return dead if len(dead) == n else None


async def _state(store, entry_id: int, state: str) -> bool:
    return any(e.id == entry_id for e in await store.list_webhooks(state))


def _closed_port() -> int:
    from tests.daemon import free_port

    return free_port()


# -- a real `bounceproxy serve`, killed mid-delivery -----------------------------------------------------
def _serve_starts_webhooks() -> bool:
    from pathlib import Path

    import proxy.app

    return "start_webhooks" in Path(proxy.app.__file__).read_text()


@pytest.mark.skipif(not _serve_starts_webhooks(), reason="proxy/app.py does not call start_webhooks yet")
async def test_serve_killed_mid_delivery_loses_no_notification(tmp_path):
    n = 8
    upstream = await start_upstream()
    receiver = await Receiver(hold=1.0).start()  # each POST held a second: the kill finds some in flight
    daemon = Daemon(tmp_path, f"""
[upstream]
profile = "smtp"
host = "127.0.0.1"
port = {upstream.server.sockets[0].getsockname()[1]}
tls = "none"
probe_interval = 0
[inbound]
bounce_domains = ["bounces.test"]
[webhooks]
urls = ["{receiver.url()}"]
timeout_seconds = 3.0
concurrency = 2
backoff_base_seconds = 0.1
backoff_max_seconds = 0.5
""", api=False, env={"BOUNCEPROXY_WEBHOOK_SECRET": SECRET.decode()})
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, daemon.start)
        await asyncio.gather(*(loop.run_in_executor(None, _send, daemon.relay_port, f"unknown-{i}@example.net")
                               for i in range(n)))
        await until(lambda: _true(receiver.in_progress > 0 and len(receiver.hits) < n), timeout=20, step=0.01)
        daemon.proc.send_signal(signal.SIGKILL)
        await loop.run_in_executor(None, daemon.proc.wait)
        before = len(receiver.hits)
        assert before < n  # killed mid-delivery
        await loop.run_in_executor(None, daemon.start)
        store = await store_for_url(f"sqlite:///{tmp_path / 'bounceproxy.db'}").open()
        try:
            await until(lambda: _all_delivered(store), timeout=60, step=0.2)
            entries = await store.list_webhooks(limit=1000)
        finally:
            await store.close()
    finally:
        await loop.run_in_executor(None, daemon.stop)
        await receiver.stop()
        upstream.server.close()
    assert receiver.bad == []
    told = defaultdict(list)  # address -> (eventType, key) of each POST, in arrival order
    for h in receiver.hits:
        doc = json.loads(h.body)
        told[doc["bounceproxy"]["address"]].append((doc["eventType"], h.key))
    # every bounce told, then the hard suppression it caused, each once after de-duplication by event id
    assert sorted(told) == sorted(f"unknown-{i}@example.net" for i in range(n))
    for address, posts in told.items():  # a re-sent POST comes before the next of its address, never after
        runs = [t for i, t in enumerate(posts) if i == 0 or posts[i - 1] != t]
        assert [kind for kind, _ in runs] == ["Bounce", "SuppressionAdded"], posts
    assert sorted(set(receiver.keys())) == sorted(e.key for e in entries) and len(entries) == 2 * n
    print(f"{len(receiver.hits)} POSTs for {2 * n} notifications ({len(receiver.hits) - 2 * n} sent again after the kill)")
    assert len(receiver.hits) > before and "webhooks: sending to" in daemon.text()


def _send(port: int, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        try:
            smtp.sendmail("app@example.com", [recipient], b"From: app@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
        except smtplib.SMTPRecipientsRefused:
            pass


async def _true(value: bool) -> bool:
    return value
