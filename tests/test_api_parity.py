"""The API's parity with the CLI (issue 14): cursors on every list, the suppression list (list, add, remove,
SES CSV import and export), check, activity, the webhooks' outbox, /api/openapi.json; over real HTTP against a
real bounce log on both backends, and against the running Service whose relay then refuses what the API
suppressed."""
from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import time

import aiohttp
import aiosmtplib
import pytest
from openapi_spec_validator import validate

from proxy import queries
from proxy.app import Service
from proxy.model import Suppression, WebhookTarget
from tests.conftest import make_config
from tests.test_api import Api, api, config, live, parse_metrics, serve, store  # noqa: F401  (fixtures)


async def pages(api: Api, path: str, key: str) -> tuple[list, int]:
    """Every row of a list by following next_cursor; and how many pages it took."""
    rows, cursor, count = [], None, 0
    while True:
        sep = "&" if "?" in path else "?"
        status, body, _ = await api.get(path + (f"{sep}cursor={cursor}" if cursor else ""))
        assert status == 200, body
        count += 1
        rows += body[key]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows, count
        assert count < 50


# -- cursors -------------------------------------------------------------------------------------
async def test_every_list_continues_by_cursor_to_the_same_rows(api, store):
    everything = (await api.get("/api/bounces?limit=100"))[1]
    assert everything["next_cursor"] is None and len(everything["events"]) == 3
    rows, n = await pages(api, "/api/bounces?limit=1", "events")
    assert rows == everything["events"] and n == 3  # the last full page already says: no more
    rows, n = await pages(api, "/api/bounces?limit=2&kind=bounce", "events")
    assert [e["recipient"] for e in rows] == ["b@example.com", "d@example.com"] and n == 1

    rows, n = await pages(api, "/api/messages?limit=2", "messages")
    assert [m["id"] for m in rows] == ["m2", "m1", "m-old"] and n == 2
    rows, n = await pages(api, "/api/inbound?limit=1", "inbound")
    assert [r["id"] for r in rows] == [store.seeded["pending_id"], store.seeded["dsn_id"]] and n == 2

    await store.upsert_suppressions([Suppression("", f"s{i}@example.org", "userunknown", "hard", time.time() - i)
                                     for i in range(5)])
    rows, n = await pages(api, "/api/suppressions?limit=2", "suppressions")
    assert [s["address"] for s in rows] == [f"s{i}@example.org" for i in range(5)] and n == 3
    rows, _ = await pages(api, "/api/suppressions?limit=1&search=S3@EXAMPLE", "suppressions")
    assert [s["address"] for s in rows] == ["s3@example.org"]


def token(data) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize("path, cursor", [
    ("/api/bounces", "not a cursor!"),
    ("/api/bounces", "AAAA"),
    ("/api/bounces", token({"k": "messages", "b": [1.0, "m1"]})),  # another list's cursor
    ("/api/bounces", token({"k": "events", "b": [1.0, "7"]})),  # an id that is no integer
    ("/api/bounces", token({"k": "events", "b": [True, 7]})),
    ("/api/bounces", token({"k": "events", "b": [1.0]})),
    ("/api/bounces", token([1, 2])),
    ("/api/bounces", "A" * 5000),
    ("/api/messages", token({"k": "messages", "b": [1.0, 5]})),
    ("/api/inbound", token({"k": "inbound", "b": ["9"]})),
    ("/api/inbound", token({"k": "inbound", "b": [2 ** 70]})),
    ("/api/suppressions", token({"k": "suppressions", "b": [1.0, "", None]})),
])
async def test_a_bad_cursor_is_a_400_naming_cursor(api, path, cursor):
    status, body, r = await api.get(f"{path}?cursor={cursor}")
    assert status == 400 and r.content_type == "application/json", body
    assert body["error"].startswith("cursor:") and "Traceback" not in body["error"]


async def test_bounces_in_ses_format_page_like_the_cli(api, store):
    status, body, _ = await api.get("/api/bounces?format=ses")
    assert status == 200 and body["next_cursor"] is None
    notes = body["notifications"]
    expected = await queries.ses_notifications(store, queries.EventFilter(limit=100))
    assert notes == json.loads(json.dumps(expected))  # what `bounces --format ses` prints
    assert [n["notificationType"] for n in notes] == ["Complaint", "Bounce", "Bounce"]
    assert notes[1]["bounce"]["bounceType"] == "Permanent"
    rows, n = await pages(api, "/api/bounces?format=ses&limit=1", "notifications")
    assert rows == notes and n == 3
    assert (await api.get("/api/bounces?format=xml"))[1]["error"].startswith("format:")


# -- the suppression list ------------------------------------------------------------------------
async def test_suppressions_add_list_check_remove(api, store):
    status, body, _ = await api.request("POST", "/api/suppressions", json={
        "addresses": ["Gone@Example.NET", "old@example.net"], "reason": "userunknown", "days": 30})
    assert status == 201 and body == {"added": 2, "addresses": ["gone@example.net", "old@example.net"], "scope": ""}
    row = await store.get_suppression("", "gone@example.net")
    assert row.kind == "manual" and row.reason == "userunknown" and abs(row.expires_at - time.time() - 30 * 86400) < 60

    status, body, _ = await api.get("/api/suppressions?search=gone")
    assert [s["address"] for s in body["suppressions"]] == ["gone@example.net"]
    assert body["suppressions"][0]["expires_at"].endswith("Z")
    status, body, _ = await api.get("/api/suppressions?address=OLD@example.net")
    assert [s["address"] for s in body["suppressions"]] == ["old@example.net"]

    status, body, _ = await api.get("/api/check/Gone%40EXAMPLE.net")
    assert status == 200 and body["suppressed"] is True and body["suppression"]["reason"] == "userunknown"
    assert body == await queries.check_address(store, "Gone@example.net")  # what `bounceproxy check --json` says
    status, body, _ = await api.get("/api/check/nobody@example.net")
    assert body == {"address": "nobody@example.net", "suppressed": False, "suppression": None}

    status, body, _ = await api.request("DELETE", "/api/suppressions/Gone%40example.net")
    assert status == 200 and body == {"removed": "gone@example.net", "scope": ""}
    assert await store.get_suppression("", "gone@example.net") is None
    status, body, _ = await api.request("DELETE", "/api/suppressions/Gone%40example.net")
    assert status == 404 and body["error"].startswith("address:")


async def test_suppressions_export_and_import_in_ses_csv(api, store):
    await store.upsert_suppressions([
        Suppression("", "hard@example.net", "userunknown", "hard", 1_700_000_000.25),
        Suppression("", "angry@example.net", "abuse", "complaint", 1_700_000_100.0)])
    async with api.session.get(api.base + "/api/suppressions/export") as r:
        assert r.status == 200 and r.content_type == "text/csv"
        assert "attachment" in r.headers["Content-Disposition"]
        text = await r.text()
    assert text.splitlines() == ["EmailAddress,Reason,LastUpdateTime",
                                 "angry@example.net,COMPLAINT,2023-11-14T22:15:00.000Z",
                                 "hard@example.net,BOUNCE,2023-11-14T22:13:20.250Z"]
    out = io.StringIO()
    await queries.export_suppressions_csv(store, "", out)
    assert out.getvalue() == text  # the CLI's export, byte for byte

    body = "\ufeffEmailAddress,Reason,LastUpdateTime\nNew@Example.org,BOUNCE,2024-01-02T03:04:05.000Z\nx@example.org,COMPLAINT,\n"
    status, answer, _ = await api.request("POST", "/api/suppressions/import", data=body.encode(),
                                          headers={"Content-Type": "text/csv"})
    assert status == 200 and answer == {"imported": 2, "scope": ""}
    row = await store.get_suppression("", "new@example.org")
    assert row.kind == "import" and row.created_at == 1704164645.0
    assert (await store.get_suppression("", "x@example.org")).kind == "complaint"

    status, answer, _ = await api.request("POST", "/api/suppressions/import", data=b"EmailAddress,Reason\nnobody,BOUNCE\n",
                                          headers={"Content-Type": "text/csv"})
    assert status == 400 and answer["error"].startswith("body:2:")
    status, answer, _ = await api.request("POST", "/api/suppressions/import", data=b"a,b\n",
                                          headers={"Content-Type": "text/plain"})
    assert status == 415 and answer["error"].startswith("body:")


async def test_the_export_streams_a_long_list_in_pages(api, store):
    await store.upsert_suppressions([Suppression("", f"u{i:05d}@example.org", "userunknown", "hard", 1_700_000_000 + i)
                                     for i in range(12_000)])
    async with api.session.get(api.base + "/api/suppressions/export") as r:
        rows = list(csv.reader(io.StringIO(await r.text())))
    assert len(rows) == 12_001 and rows[1][0] == "u11999@example.org" and rows[-1][0] == "u00000@example.org"
    assert len({r[0] for r in rows}) == 12_001  # no row twice across the pages


@pytest.mark.parametrize("body, name", [
    ({"addresses": []}, "addresses"),
    ({"addresses": "a@b.example"}, "addresses"),
    ({"addresses": ["not an address"]}, "addresses"),
    ({"addresses": [42]}, "addresses"),
    ({"address": "a@b.example", "addresses": ["c@d.example"]}, "addresses"),
    ({"address": "@b.example"}, "address"),
    ({"address": "a@b.example", "days": -1}, "days"),
    ({"address": "a@b.example", "days": True}, "days"),
    ({"address": "a@b.example", "days": "7"}, "days"),
    ({"address": "a@b.example", "reason": ""}, "reason"),
    ({"address": "a@b.example", "reason": "x" * 201}, "reason"),
    ({"address": "a@b.example", "sender_domain": "shop.example"}, "sender_domain"),  # the list is global here
    ({"address": "a@b.example", "typo": 1}, "typo"),
    ([1, 2], "body"),
])
async def test_bad_additions_are_400_naming_the_field(api, store, body, name):
    status, answer, r = await api.request("POST", "/api/suppressions", json=body)
    assert status == 400 and r.content_type == "application/json", answer
    assert name in answer["error"].split(":")[0] or answer["error"].startswith(f"unknown field '{name}'")
    assert await store.list_suppressions(queries.SuppressionFilter(limit=None)) == []


async def test_writes_need_json_and_a_same_origin_browser(api, store):
    status, answer, _ = await api.request("POST", "/api/suppressions", data=b"address=a@b.example",
                                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and answer["error"].startswith("body:")
    status, answer, _ = await api.request("POST", "/api/suppressions", data=b"{not json",
                                          headers={"Content-Type": "application/json"})
    assert status == 400 and answer["error"].startswith("body:")
    host = api.base.split("//")[1]
    status, answer, _ = await api.request("POST", "/api/suppressions", json={"address": "a@b.example"},
                                          headers={"Origin": "https://evil.example"})
    assert status == 403 and answer["error"].startswith("Origin:")
    status, answer, _ = await api.request("DELETE", "/api/suppressions/a%40b.example", headers={"Origin": "null"})
    assert status == 403
    assert await store.list_suppressions(queries.SuppressionFilter(limit=None)) == []
    status, answer, _ = await api.request("POST", "/api/suppressions", json={"address": "a@b.example"},
                                          headers={"Origin": f"http://{host}"})
    assert status == 201  # the dashboard itself


async def test_per_sender_domain_lists(tmp_path, store):
    cfg = config(tmp_path)
    cfg = dataclasses.replace(cfg, suppression=dataclasses.replace(cfg.suppression, scope="sender_domain"))
    runner, base = await serve(cfg, store)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, base)
            status, body, _ = await api.request("POST", "/api/suppressions", json={
                "address": "a@b.example", "sender_domain": "Shop.Example"})
            assert status == 201 and body["scope"] == "shop.example"
            assert await store.get_suppression("shop.example", "a@b.example") is not None
            assert await store.get_suppression("", "a@b.example") is None
            assert (await api.get("/api/check/a%40b.example?sender=app%40shop.example"))[1]["suppressed"] is True
            assert (await api.get("/api/check/a%40b.example?sender=app%40other.example"))[1]["suppressed"] is False
            assert (await api.get("/api/suppressions?sender_domain=other.example"))[1]["suppressions"] == []
            status, body, _ = await api.get("/api/suppressions?sender_domain=bad_domain!")
            assert status == 400 and body["error"].startswith("sender_domain:")
            assert (await api.request("DELETE", "/api/suppressions/a%40b.example"))[0] == 404  # not in the global list
            status, _, _ = await api.request("DELETE", "/api/suppressions/a%40b.example?sender_domain=shop.example")
            assert status == 200 and await store.get_suppression("shop.example", "a@b.example") is None
    finally:
        await runner.cleanup()


async def test_resume_an_identity(api, store):
    await store.pause_identity("example.com", time.time(), "hard bounce rate 33% over 5%")
    status, body, _ = await api.request("POST", "/api/identities/Example.COM/resume")
    assert status == 200 and body == {"resumed": "example.com"} and await store.paused_identities() == {}
    status, body, _ = await api.request("POST", "/api/identities/example.com/resume")
    assert status == 404 and "not paused" in body["error"]


# -- activity, webhooks, metrics -----------------------------------------------------------------
async def test_activity_buckets_the_window_with_ses_lines(api):
    status, body, _ = await api.get("/api/activity?since=2h&bucket=1h")
    assert status == 200 and body["bucket_seconds"] == 3600
    assert body["thresholds"] == {"hard_bounce_rate": {"review": 0.05, "pause": 0.10},
                                  "complaint_rate": {"review": 0.001, "pause": 0.005}}
    buckets = body["buckets"]
    assert len(buckets) in (3, 4) and all(b["start"].endswith(":00:00Z") for b in buckets)
    assert sum(b["messages"] for b in buckets) == 2 and sum(b["recipients"] for b in buckets) == 3
    assert sum(b["hard"] for b in buckets) == 1 and sum(b["complaints"] for b in buckets) == 1
    assert sum(b["soft"] for b in buckets) == 0  # last week's is outside the window
    empty = [b for b in buckets if b["recipients"] == 0]
    assert empty and all(b["hard_bounce_rate"] is None for b in empty)
    status, body, _ = await api.get("/api/activity?since=30d&bucket=1d")
    assert sum(b["soft"] for b in body["buckets"]) == 1 and len(body["buckets"]) in (31, 32)
    for query in ("bucket=10s", "bucket=1x", "bucket=0h", "since=400d&bucket=1m", "bucket=99999999d"):
        status, body, _ = await api.get("/api/activity?" + query)
        assert status == 400 and body["error"].startswith("bucket:"), (query, body)


async def test_webhooks_outbox_and_its_gauge(tmp_path, store, api):
    store.webhook_targets = (WebhookTarget("https://user:pw@hooks.example/in?key=secret"),)
    await store.upsert_suppressions([Suppression("", "w@example.org", "userunknown", "hard", time.time())])
    await store.delete_suppression("", "w@example.org")
    status, body, _ = await api.get("/api/webhooks")
    assert status == 200
    assert [(w["type"], w["state"], w["address"]) for w in body["webhooks"]] == [
        ("suppression_removed", "pending", "w@example.org"), ("suppression_added", "pending", "w@example.org")]
    assert {w["url"] for w in body["webhooks"]} == {"https://hooks.example/in"}  # no credentials, no query
    assert body["counts"]["pending"]["count"] == 2 and body["counts"]["pending"]["oldest"].endswith("Z")
    assert (await api.get("/api/webhooks?state=dead"))[1]["webhooks"] == []
    assert (await api.get("/api/webhooks?state=lost"))[1]["error"].startswith("state:")
    assert len((await api.get("/api/webhooks?limit=1"))[1]["webhooks"]) == 1

    runner, base = await serve(config(tmp_path), store, metrics_ttl=0)
    try:
        async with aiohttp.ClientSession() as session:
            samples = parse_metrics((await Api(session, base).get("/metrics"))[1].decode())
    finally:
        await runner.cleanup()
    assert samples['bounceproxy_webhook_outbox{state="pending"}'] == 2
    assert samples['bounceproxy_webhook_outbox{state="dead"}'] == 0
    assert abs(samples["bounceproxy_webhook_oldest_pending_timestamp_seconds"] - time.time()) < 60


# -- the description -----------------------------------------------------------------------------
async def test_openapi_describes_every_route_and_parameter(api):
    status, doc, _ = await api.get("/api/openapi.json")
    assert status == 200
    validate(doc)  # a valid OpenAPI 3.1 document
    paths = doc["paths"]
    for path, method in [("/api/bounces", "get"), ("/api/messages", "get"), ("/api/messages/{id}", "get"),
                         ("/api/messages/{id}/raw", "get"), ("/api/stats", "get"), ("/api/activity", "get"),
                         ("/api/inbound", "get"), ("/api/inbound/{id}/raw", "get"), ("/api/suppressions", "get"),
                         ("/api/suppressions", "post"), ("/api/suppressions/{address}", "delete"),
                         ("/api/suppressions/export", "get"), ("/api/suppressions/import", "post"),
                         ("/api/check/{address}", "get"), ("/api/identities/{identity}/resume", "post"),
                         ("/api/webhooks", "get"), ("/api/openapi.json", "get"), ("/metrics", "get"),
                         ("/healthz", "get")]:
        assert method in paths.get(path, {}), (path, method)
    # what is documented is accepted, and nothing else: the checks read the same declarations
    for path, item in paths.items():
        if "{" in path or "get" not in item or not path.startswith("/api/"):
            continue
        documented = [p["name"] for p in item["get"].get("parameters", []) if p["in"] == "query"]
        status, body, _ = await api.get(path + "?undocumented=1")
        assert status == 400 and f"known: {', '.join(documented) or 'none'}" in body["error"], (path, body)
    bounces = {p["name"]: p for p in paths["/api/bounces"]["get"]["parameters"]}
    assert set(bounces) == {"since", "recipient", "type", "reason", "source", "kind", "correlation", "message",
                            "limit", "cursor", "format"}
    assert bounces["type"]["schema"]["enum"] == ["hard", "soft", "undetermined"]
    assert "next_cursor" in json.dumps(paths["/api/messages"]["get"]["responses"]["200"])


# -- the running service -------------------------------------------------------------------------
async def send(svc: Service, sender: str, *recipients: str) -> None:
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    try:
        await smtp.sendmail(sender, list(recipients), f"From: {sender}\r\nSubject: parity\r\n\r\nhello\r\n".encode())
    except aiosmtplib.SMTPRecipientsRefused:
        pass
    finally:
        await smtp.quit()


async def test_the_running_service_relay_obeys_what_the_api_suppresses(tmp_path, upstream, store_url):
    cfg = make_config(tmp_path, upstream.port, store_url=store_url, suppression={"refresh_seconds": 0.1})
    async with Service(cfg) as svc, aiohttp.ClientSession() as session:
        api = Api(session, "http://%s:%s" % svc.api_address)
        await send(svc, "app@shop.example", "ok1@example.net", "unknown1@example.net")
        rows, _ = await pages(api, "/api/messages?limit=1", "messages")
        assert [m["recipients"] for m in rows] == [["ok1@example.net", "unknown1@example.net"]]
        status, body, _ = await api.get("/api/activity?since=1h&bucket=5m")
        assert sum(b["recipients"] for b in body["buckets"]) == 2 and sum(b["hard"] for b in body["buckets"]) == 1

        status, _, _ = await api.request("POST", "/api/suppressions", json={"address": "ok1@example.net"})
        assert status == 201
        deadline = time.monotonic() + 5
        while True:  # the relay's index picks the addition up within [suppression] refresh_seconds
            upstream.handler.messages.clear()
            await send(svc, "app@shop.example", "ok1@example.net", "ok2@example.net")
            if [r for _, rcpts, _ in upstream.handler.messages for r in rcpts] == ["ok2@example.net"]:
                break
            assert time.monotonic() < deadline, "the relay never refused what the API suppressed"
        status, body, _ = await api.get("/api/check/ok1%40example.net")
        assert body["suppressed"] is True
        assert (await api.request("DELETE", "/api/suppressions/ok1%40example.net"))[0] == 200
        upstream.handler.messages.clear()
        await send(svc, "app@shop.example", "ok1@example.net")
        assert [rcpts for _, rcpts, _ in upstream.handler.messages] == [["ok1@example.net"]]
