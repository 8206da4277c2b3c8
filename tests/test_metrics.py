"""/metrics of a real running service, written by prometheus_client: promtool's checks pass, counters
end in _total and gauges do not, every family has HELP, process and Python metrics, the upstream's
state and failures by kind, and the bounce MX's parse queue; on SQLite and on PostgreSQL."""
from __future__ import annotations

import asyncio
import shutil

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import Service
from tests.conftest import make_config

PROMTOOL = shutil.which("promtool")


async def scrape(svc: Service) -> str:
    host, port = svc.api_address
    async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await r.text()


async def traffic(svc: Service) -> None:
    """A delivery, a refusal at RCPT and a dead upstream: every family has something to say."""
    host, port = svc.relay_address
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
    await smtp.connect()
    await smtp.sendmail("app@example.com", ["someone@example.org"], b"Subject: m\r\n\r\nbody\r\n")
    try:
        await smtp.sendmail("app@example.com", ["unknown1@example.org"], b"Subject: m\r\n\r\nbody\r\n")
    except aiosmtplib.SMTPRecipientsRefused:
        pass
    await smtp.quit()


@pytest.fixture
async def text(tmp_path, upstream, store_url):
    """/metrics after some traffic, on each backend in turn (the store's figures come from either)."""
    async with Service(make_config(tmp_path, upstream.port, store_url=store_url, upstream={"probe_interval": 0})) as svc:
        await traffic(svc)
        upstream.server.close()  # the upstream goes away: the next client attempt fails
        await upstream.server.wait_closed()
        for conn in list(getattr(svc.upstream, "_idle", [])):
            conn.close()
        host, port = svc.relay_address
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
        await smtp.connect()
        try:
            await smtp.sendmail("app@example.com", ["x@example.org"], b"Subject: m\r\n\r\nbody\r\n")
        except aiosmtplib.SMTPException:
            pass
        smtp.close()
        await asyncio.sleep(0.1)
        yield await scrape(svc)


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_conventions_hold_family_by_family(text):
    found = families(text)
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    assert set(types) == helps  # every family has HELP
    for name, kind in types.items():
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"
    # Process and Python metrics, from the library's own collectors.
    assert "process_resident_memory_bytes" in types and "process_open_fds" in types and "python_info" in types
    sample = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in found.values() for s in f.samples}
    assert sample[("bounceproxy_messages", (("status", "sent"),))] == 1
    assert sample[("bounceproxy_events", (("bounce_type", "hard"), ("kind", "bounce"), ("source", "sync")))] == 1
    assert sample[("bounceproxy_inbound_queue", ())] == 0  # the bounce MX's parse queue
    assert found["bounceproxy_inbound_queue"].type == "gauge"
    assert sample[("bounceproxy_upstream_up", ())] == 0
    failures = {dict(s.labels)["reason"]: s.value for s in found["bounceproxy_upstream_failures"].samples}
    assert set(failures) >= {"connect", "timeout", "tls", "closed", "auth", "busy", "lost_during_data", "other"}
    assert sum(failures.values()) >= 1 and found["bounceproxy_upstream_failures"].type == "counter"
    assert found["bounceproxy_store_commits"].type == "counter" and sample[("bounceproxy_store_up", ())] == 1
    for old in ("bounceproxy_messages_total", "bounceproxy_recipients_total", "bounceproxy_events_total",
                "bounceproxy_inbound_total"):
        assert old not in types  # gauges renamed, README lists them


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; .ci/run installs it)")
async def test_promtool_check_metrics_passes(text):
    proc = await asyncio.create_subprocess_exec(PROMTOOL, "check", "metrics", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(text.encode())
    assert proc.returncode == 0 and out == b"" and err == b"", (out + err).decode()
