"""The HTTP API, /metrics and the dashboard, over real HTTP against a real bounce log: SQLite, then PostgreSQL."""
from __future__ import annotations

import dataclasses
import re
import time

import aiohttp
import pytest

from proxy.api import create_api, start_api
from proxy.api.dashboard import PAGE
from proxy import queries
from proxy.config import Address, ApiConfig, Config, ConfigError
from proxy.model import (BounceEvent, BounceType, Correlation, InboundResult, Kind, MessageRecord, MessageStatus,
                         ParseState, RecipientRecord, RecipientStatus, Source, StatusSource)
from proxy.store import Store, store_for_config
from tests.conftest import make_config

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NOW = time.time()
DSN = (b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounce@bounces.test\r\nSubject: Undelivered\r\n"
       b"Content-Type: text/plain\r\n\r\n<b@example.com>: user unknown\r\n")
ARF = b"From: fbl@isp.example\r\nSubject: complaint\r\n\r\nabuse report\r\n"


def config(tmp_path, listen: str = "127.0.0.1", token_env: str = "BOUNCEPROXY_TEST_API_TOKEN",
           store_url: str | None = None) -> Config:
    cfg = make_config(tmp_path, store_url=store_url)
    return dataclasses.replace(cfg, api=ApiConfig(listen=Address(listen, 0), token_env=token_env))


async def seed(store: Store) -> dict:
    """Two recent messages and one from last week; sync and async events; two inbound mails."""
    m1 = MessageRecord(
        id="m1", created_at=NOW - 600, client_peer="127.0.0.1", sender="app@example.com", header_from="App <app@example.com>",
        message_id="<one@relay.test>", subject="Hello", upstream_id="0100-one", size=1200, status=MessageStatus.PARTIAL,
        upstream_reply="250 Ok 0100-one",
        recipients=[RecipientRecord("a@example.com", RecipientStatus.ACCEPTED, "250 2.1.5 Ok"),
                    RecipientRecord("b@example.com", RecipientStatus.REJECTED, "550 5.1.1 user unknown")],
    )
    sync = BounceEvent(at=NOW - 600, source=Source.SYNC, kind=Kind.BOUNCE, recipient="b@example.com",
                       bounce_type=BounceType.HARD, reason="userunknown", status="5.1.1",
                       status_source=StatusSource.DSN, smtp_code=550, diagnostic="550 5.1.1 user unknown",
                       correlation=Correlation.NONE, relay_id="m1")
    await store.record_message(m1, [sync])
    m2 = MessageRecord(id="m2", created_at=NOW - 300, sender="news@example.com", status=MessageStatus.SENT,
                       recipients=[RecipientRecord("c@example.com", RecipientStatus.ACCEPTED, "250 Ok")])
    await store.record_message(m2, raw=b"Subject: kept by the simulator\r\n\r\nbody\r\n")
    old = MessageRecord(id="m-old", created_at=NOW - 7 * 86400, sender="app@example.com", status=MessageStatus.SENT,
                        recipients=[RecipientRecord("d@example.com", RecipientStatus.ACCEPTED, "250 Ok")])
    old_event = BounceEvent(at=NOW - 6 * 86400, source=Source.ASYNC, kind=Kind.BOUNCE, recipient="d@example.com",
                            bounce_type=BounceType.SOFT, reason="mailboxfull", status="4.2.2",
                            diagnostic="mailbox full", correlation=Correlation.VERP, relay_id="m-old")
    await store.record_message(old, [old_event])

    dsn_id = await store.store_inbound("192.0.2.7", "", ["bounce+tok@bounces.test"], DSN)
    complaint = BounceEvent(at=NOW - 60, source=Source.ASYNC, kind=Kind.COMPLAINT, recipient="A@Example.com",
                            bounce_type=BounceType.UNDETERMINED, reason="feedback", correlation=Correlation.MESSAGE_ID,
                            relay_id="m1", inbound_id=dsn_id, feedback_type="abuse", parser_version="1")
    await store.record_inbound_result(dsn_id, InboundResult(ParseState.PARSED, "1", "complaint", "arf", None,
                                                            [complaint]))
    pending_id = await store.store_inbound("192.0.2.8", "x@y.example", ["bounce@bounces.test"], ARF)
    return {"dsn_id": dsn_id, "pending_id": pending_id}


@pytest.fixture
async def store(tmp_path, store_url):
    """A seeded bounce log on each backend in turn (the Service's own store, as `serve` opens it)."""
    s = await store_for_config(config(tmp_path, store_url=store_url).store).open()
    s.seeded = await seed(s)
    yield s
    await s.close()


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str):
        self.session, self.base = session, base

    async def get(self, path: str, **kw) -> tuple[int, object, aiohttp.ClientResponse]:
        async with self.session.get(self.base + path, **kw) as r:
            body = await r.read()
            if r.content_type == "application/json":
                return r.status, await r.json(), r
            return r.status, body, r

    async def request(self, method: str, path: str, **kw):
        async with self.session.request(method, self.base + path, **kw) as r:
            return r.status, await r.json(), r


async def serve(cfg: Config, store, **kw):
    runner, (host, port) = await start_api(cfg, store, **kw)
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def live():
    return {"bounceproxy_relay_open_sessions": 3, 'bounceproxy_relay_commands_total{verb="MAIL"}': 7}


@pytest.fixture
async def api(tmp_path, store, live):
    runner, base = await serve(config(tmp_path), store, live_metrics=lambda: live)
    async with aiohttp.ClientSession() as session:
        yield Api(session, base)
    await runner.cleanup()


# -- endpoints -----------------------------------------------------------------------------------
async def test_healthz(api):
    status, body, _ = await api.get("/healthz")
    assert status == 200 and body == {"status": "ok"}


async def test_bounces_and_their_filters(api):
    status, body, _ = await api.get("/api/bounces")
    assert status == 200
    events = body["events"]
    assert [(e["kind"], e["recipient"]) for e in events] == [
        ("complaint", "A@Example.com"), ("bounce", "b@example.com"), ("bounce", "d@example.com")]  # newest first
    assert all(ISO.match(e["at"]) for e in events)
    sync = events[1]
    assert sync["source"] == "sync" and sync["bounce_type"] == "hard" and sync["reason"] == "userunknown"
    assert sync["status"] == "5.1.1" and sync["smtp_code"] == 550 and sync["relay_id"] == "m1"
    # one name per id: relay_id is the relay's id of the message, message_id its Message-ID header
    assert sync["message_id"] == "<one@relay.test>" and sync["subject"] == "Hello"
    assert sync["message_sender"] == "app@example.com" and sync["upstream_id"] == "0100-one"

    async def recipients(query: str) -> list:
        status, body, _ = await api.get("/api/bounces?" + query)
        assert status == 200, body
        return [e["recipient"] for e in body["events"]]

    assert await recipients("since=1h") == ["A@Example.com", "b@example.com"]
    assert await recipients("since=1h&recipient=&type=&limit=") == ["A@Example.com", "b@example.com"]  # empty: unset
    assert await recipients("type=hard") == ["b@example.com"]
    assert await recipients("type=soft&reason=mailboxfull") == ["d@example.com"]
    assert await recipients("kind=complaint") == ["A@Example.com"]
    assert await recipients("source=sync") == ["b@example.com"]
    assert await recipients("correlation=verp") == ["d@example.com"]
    assert await recipients("recipient=a@EXAMPLE.com") == ["A@Example.com"]  # addresses match without case
    assert await recipients("message=m1") == ["A@Example.com", "b@example.com"]
    assert await recipients("limit=1") == ["A@Example.com"]
    since_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 3600))
    assert await recipients(f"since={since_iso}") == ["A@Example.com", "b@example.com"]


async def test_messages_list_and_filters(api):
    status, body, _ = await api.get("/api/messages")
    assert status == 200
    rows = body["messages"]
    assert [m["id"] for m in rows] == ["m2", "m1", "m-old"]
    m1 = rows[1]
    assert m1["recipients"] == ["a@example.com", "b@example.com"] and m1["recipient_count"] == 2
    assert m1["status"] == "partial" and ISO.match(m1["created_at"])
    ids = lambda body: [m["id"] for m in body["messages"]]  # noqa: E731
    assert ids((await api.get("/api/messages?since=1h"))[1]) == ["m2", "m1"]
    assert ids((await api.get("/api/messages?status=partial"))[1]) == ["m1"]
    assert ids((await api.get("/api/messages?recipient=B@example.com"))[1]) == ["m1"]
    assert ids((await api.get("/api/messages?sender=app@example.com&limit=1"))[1]) == ["m1"]


async def test_message_story(api):
    status, m, _ = await api.get("/api/messages/m1")
    assert status == 200
    assert m["id"] == "m1" and m["subject"] == "Hello" and ISO.match(m["created_at"])
    assert m["recipients"] == [
        {"address": "a@example.com", "status": "accepted", "reply": "250 2.1.5 Ok"},
        {"address": "b@example.com", "status": "rejected", "reply": "550 5.1.1 user unknown"}]
    assert [(e["source"], e["kind"]) for e in m["events"]] == [("sync", "bounce"), ("async", "complaint")]
    assert {e["relay_id"] for e in m["events"]} == {"m1"} and m["message_id"] == "<one@relay.test>"
    assert all(ISO.match(e["at"]) for e in m["events"])

    status, body, _ = await api.get("/api/messages/nope")
    assert status == 404 and "nope" in body["error"]

    status, raw, r = await api.get("/api/messages/m2/raw")
    assert status == 200 and r.content_type == "message/rfc822" and raw.startswith(b"Subject: kept")
    status, body, _ = await api.get("/api/messages/m1/raw")
    assert status == 404 and "error" in body


async def test_stats_is_the_cli_summary(api, store):
    status, body, _ = await api.get("/api/stats")
    assert status == 200
    assert body["messages"] == 2 and body["recipients"] == 3  # the default window is 24h
    assert body["bounces"] == 1 and body["hard_bounces"] == 1 and body["complaints"] == 1
    assert body["bounce_rate"] == round(1 / 3, 4) and body["complaint_rate"] == round(1 / 3, 4)
    assert body["by_status"] == {"partial": 1, "sent": 1}
    assert ISO.match(body["since"])
    assert body["identities"] == [{"identity": "example.com", "recipients": 3, "hard_bounces": 1, "complaints": 1,
                                   "hard_bounce_rate": round(1 / 3, 4), "complaint_rate": round(1 / 3, 4),
                                   "paused": None}]
    await store.pause_identity("example.com", time.time(), "hard bounce rate 33% over 5%")
    status, body, _ = await api.get("/api/stats")
    assert body["identities"][0]["paused"] == "hard bounce rate 33% over 5%"
    since = NOW - 30 * 86400
    expected = await queries.stats_summary(store, since)
    status, body, _ = await api.get("/api/stats?since=30d")
    assert {k: v for k, v in body.items() if k != "since"} == {k: v for k, v in expected.items() if k != "since"}
    assert body["messages"] == 3 and body["bounces"] == 2


async def test_inbound_list_and_raw(api, store):
    dsn_id, pending_id = store.seeded["dsn_id"], store.seeded["pending_id"]
    status, body, _ = await api.get("/api/inbound")
    assert status == 200
    rows = body["inbound"]
    assert [r["id"] for r in rows] == [pending_id, dsn_id]
    assert all("raw" not in r for r in rows)
    dsn = rows[1]
    assert dsn["state"] == "parsed" and dsn["kind"] == "complaint" and dsn["size"] == len(DSN)
    assert dsn["rcpt_tos"] == ["bounce+tok@bounces.test"] and ISO.match(dsn["received_at"])
    status, body, _ = await api.get("/api/inbound?state=pending")
    assert [r["id"] for r in body["inbound"]] == [pending_id]
    status, body, _ = await api.get("/api/inbound?since=1h&limit=1")
    assert [r["id"] for r in body["inbound"]] == [pending_id]

    status, raw, r = await api.get(f"/api/inbound/{dsn_id}/raw")
    assert status == 200 and raw == DSN
    assert r.content_type == "message/rfc822" and "attachment" in r.headers["Content-Disposition"]
    assert (await api.get("/api/inbound/999/raw"))[0] == 404
    status, body, _ = await api.get("/api/inbound/abc/raw")
    assert status == 400 and body["error"].startswith("id:")


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path, name", [
    ("/api/bounces?since=yesterday", "since"),
    ("/api/bounces?since=5x", "since"),
    ("/api/bounces?type=permanent", "type"),
    ("/api/bounces?source=later", "source"),
    ("/api/bounces?kind=bouncy", "kind"),
    ("/api/bounces?correlation=guess", "correlation"),
    ("/api/bounces?reason=nosuchreason", "reason"),
    ("/api/bounces?limit=abc", "limit"),
    ("/api/bounces?limit=0", "limit"),
    ("/api/bounces?limit=-5", "limit"),
    ("/api/bounces?limit=1000001", "limit"),
    ("/api/bounces?limit=1.5", "limit"),
    ("/api/bounces?typo=1", "typo"),
    ("/api/bounces?type=hard&type=soft", "type"),
    ("/api/messages?status=bounced", "status"),
    ("/api/messages?since=%00", "since"),
    ("/api/stats?since=never", "since"),
    ("/api/stats?since=99999999999999d", "since"),
    ("/api/bounces?since=0001-01-01T00:00:00%2B14:00", "since"),
    ("/api/inbound?state=done", "state"),
    ("/api/inbound?limit=99999999999999999999999", "limit"),
])
async def test_bad_parameters_are_400_naming_the_parameter(api, path, name):
    status, body, r = await api.get(path)
    assert status == 400 and r.content_type == "application/json"
    assert set(body) == {"error"} and name in body["error"]


async def test_unknown_path_and_wrong_method_are_json(api):
    status, body, r = await api.get("/api/nothing")
    assert status == 404 and r.content_type == "application/json" and "error" in body
    status, body, r = await api.request("POST", "/api/bounces", data=b"{}")
    assert status == 405 and "POST" in body["error"] and "GET" in r.headers["Allow"]
    status, body, _ = await api.request("DELETE", "/api/messages/m1")
    assert status == 405


async def test_failures_inside_are_500_json_without_a_traceback(api, store, monkeypatch, caplog):
    async def broken(flt):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store, "list_events", broken)
    status, body, _ = await api.get("/api/bounces")
    assert status == 500 and body == {"error": "internal error"}
    assert "secret internals" in caplog.text  # logged for the operator, not sent to the client


# -- metrics -------------------------------------------------------------------------------------
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
                    r'(-?[0-9.eE+-]+|NaN|[+-]Inf)$')


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        assert m.group(1) in types, f"{m.group(1)} has no TYPE"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


async def test_metrics_text(api, live, store):
    status, text, r = await api.get("/metrics")
    assert status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = text.decode()
    assert text.endswith("\n")
    samples = parse_metrics(text)
    assert samples['bounceproxy_messages{status="sent"}'] == 2
    assert samples['bounceproxy_messages{status="partial"}'] == 1
    assert samples['bounceproxy_messages{status="failed"}'] == 0  # known series exist from the start
    assert samples['bounceproxy_recipients{status="accepted"}'] == 3
    assert samples['bounceproxy_events{bounce_type="hard",kind="bounce",source="sync"}'] == 1
    assert samples['bounceproxy_events{bounce_type="undetermined",kind="complaint",source="async"}'] == 1
    assert samples['bounceproxy_inbound{state="parsed"}'] == 1
    assert samples['bounceproxy_inbound{state="pending"}'] == 1
    assert samples["bounceproxy_store_up"] == 1
    assert abs(samples["bounceproxy_last_event_timestamp_seconds"] - (NOW - 60)) < 1
    assert samples["bounceproxy_relay_open_sessions"] == 3
    assert samples['bounceproxy_relay_commands_total{verb="MAIL"}'] == 7
    assert "# TYPE bounceproxy_relay_commands_total counter" in text

    # live figures are read on every scrape; the store's are cached for a few seconds
    live["bounceproxy_relay_open_sessions"] = 5
    live["bad name!"] = 1
    live["bounceproxy_half{"] = 1
    live['bounceproxy_bad_labels{verb=MAIL}'] = 1
    live["bounceproxy_not_a_number"] = "many"
    live["bounceproxy_messages_total"] = 9  # may not shadow a store family
    await store.record_message(MessageRecord(id="m3", created_at=time.time(), status=MessageStatus.FAILED))
    samples = parse_metrics((await api.get("/metrics"))[1].decode())
    assert samples["bounceproxy_relay_open_sessions"] == 5
    assert not any("half" in k or "bad" in k or "not_a_number" in k for k in samples)
    assert samples['bounceproxy_messages{status="failed"}'] == 0


async def test_metrics_cache_expires_and_a_broken_callback_is_harmless(tmp_path, store):
    def broken():
        raise RuntimeError("callback down")

    runner, base = await serve(config(tmp_path), store, live_metrics=broken, metrics_ttl=0)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, base)
            await store.record_message(MessageRecord(id="m3", created_at=time.time(), status=MessageStatus.FAILED))
            status, text, _ = await api.get("/metrics")
            assert status == 200
            assert parse_metrics(text.decode())['bounceproxy_messages{status="failed"}'] == 1
    finally:
        await runner.cleanup()


# -- dashboard -----------------------------------------------------------------------------------
async def test_dashboard_page(api):
    status, page, r = await api.get("/?recipient=a@b.example&window=7d")  # its own script reads the query
    assert status == 200 and r.content_type == "text/html"
    html = page.decode()
    assert "<table" in html and 'id="chart-bounce-rate"' in html and 'id="suppressions-table"' in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # no external assets
    assert "<script>" not in html and "<style>" not in html and " style=" not in html  # no inline code at all
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == ["/static/chart.umd.min.js", "/static/dashboard.js"]
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp and "unsafe" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert html == PAGE

    status, script, r = await api.get("/static/dashboard.js")
    assert status == 200 and r.content_type in ("application/javascript", "text/javascript")
    js = script.decode()
    for path in ("/api/bounces", "/api/stats", "/api/activity", "/api/messages", "/api/suppressions", "/api/inbound"):
        assert path in js
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js  # data goes in as text only
    status, chart, r = await api.get("/static/chart.umd.min.js")
    assert status == 200 and chart.startswith(b"/*!\n * Chart.js v4.") and r.headers["X-Content-Type-Options"] == "nosniff"
    status, licence, _ = await api.get("/static/chart.js.LICENSE.md")
    assert status == 200 and b"The MIT License" in licence and b"Chart.js Contributors" in licence
    assert (await api.get("/static/nothing.js"))[0] == 404
    assert (await api.get("/static/../server.py"))[0] in (403, 404)


# -- the bearer token beyond loopback ------------------------------------------------------------
async def test_beyond_loopback_needs_a_bearer_token(tmp_path, store, monkeypatch):
    monkeypatch.setenv("BOUNCEPROXY_TEST_API_TOKEN", "s3cret-token")
    runner, base = await serve(config(tmp_path, listen="0.0.0.0"), store)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, base)
            assert (await api.get("/healthz"))[:2] == (200, {"status": "ok"})
            for path in ("/api/bounces", "/api/stats", "/metrics", "/api/inbound/1/raw", "/api/nothing"):
                status, body, r = await api.get(path)
                assert status == 401 and "Bearer" in body["error"] and r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "s3cret" not in str(body)
            for header in ("Bearer wrong", "Basic s3cret-token", "s3cret-token", "Bearer ", "Bearer s3cret-token-x",
                           "Bearer s3crét"):
                assert (await api.get("/api/bounces", headers={"Authorization": header}))[0] == 401, header
            good = {"Authorization": "Bearer s3cret-token"}
            status, body, _ = await api.get("/api/bounces", headers=good)
            assert status == 200 and len(body["events"]) == 3
            assert (await api.get("/metrics", headers={"Authorization": "bearer s3cret-token"}))[0] == 200
            assert (await api.get("/api/nothing", headers=good))[0] == 404
            # the page itself holds no data: it loads, then asks for the token when /api says 401
            assert (await api.get("/"))[0] == 200
            assert (await api.get("/static/dashboard.js"))[0] == 200  # nor do its script and library
            assert (await api.get("/static/chart.umd.min.js"))[0] == 200
            for path in ("/api/suppressions", "/api/activity", "/api/webhooks", "/api/openapi.json",
                         "/api/check/a%40b.example"):
                assert (await api.get(path))[0] == 401, path
            status, _, _ = await api.request("DELETE", "/api/suppressions/a%40b.example")
            assert status == 401
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("token", [None, ""])
async def test_refuses_to_start_beyond_loopback_without_a_token(tmp_path, store, monkeypatch, token):
    if token is None:
        monkeypatch.delenv("BOUNCEPROXY_TEST_API_TOKEN", raising=False)
    else:
        monkeypatch.setenv("BOUNCEPROXY_TEST_API_TOKEN", token)
    cfg = config(tmp_path, listen="0.0.0.0")
    with pytest.raises(ConfigError) as err:
        create_api(cfg, store)
    message = str(err.value)
    assert "[api] listen" in message and "BOUNCEPROXY_TEST_API_TOKEN" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"\[api\] listen"):
        await start_api(cfg, store)


async def test_loopback_needs_no_token_and_reports_its_port(tmp_path, store):
    cfg = dataclasses.replace(config(tmp_path), api=ApiConfig(listen=Address("127.0.0.1", 0), token_env=""))
    runner, (host, port) = await start_api(cfg, store)
    try:
        assert host == "127.0.0.1" and port > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/api/stats") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()


async def test_a_port_in_use_is_a_config_error(tmp_path, store):
    runner, (_, port) = await start_api(config(tmp_path), store)
    try:
        cfg = dataclasses.replace(config(tmp_path), api=ApiConfig(listen=Address("127.0.0.1", port)))
        with pytest.raises(ConfigError, match=rf"\[api\] listen 127.0.0.1:{port}: cannot listen"):
            await start_api(cfg, store)
    finally:
        await runner.cleanup()
