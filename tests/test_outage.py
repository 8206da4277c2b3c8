"""An upstream outage is visible (issue 10 §6): a real upstream goes away and comes back while real
clients send and real HTTP requests read /healthz and /metrics."""
from __future__ import annotations

import asyncio
import os
import sqlite3  # only to hold SQLite's write lock (the last test): the store's own failure mode, provoked
import sys
from pathlib import Path

import aiohttp
import aiosmtplib
from aiosmtpd.smtp import SMTP

from proxy.app import Service
from proxy.model import MessageRecord
from proxy.store import MessageFilter
from tests.conftest import ROOT, ScriptedUpstream, make_config
from tests.test_api import parse_metrics


async def messages(svc: Service, **flt) -> list[MessageRecord]:
    """The logged messages, oldest first, read through the Store."""
    return list(reversed(await svc.store.list_messages(MessageFilter(limit=10**6, **flt))))

BODY = b"From: app@example.com\r\nSubject: outage\r\n\r\nhello\r\n"


class Upstream:
    """A scripted upstream that can really go away (listener closed, every connection cut) and come back
    on the same port."""

    def __init__(self):
        self.handler = ScriptedUpstream()
        self.protocols: list[SMTP] = []
        self.server = None
        self.port = 0

    async def start(self) -> None:
        def factory():
            proto = SMTP(self.handler, hostname="upstream.test")
            self.protocols.append(proto)
            return proto

        self.server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", self.port,
                                                                     reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        for proto in self.protocols:
            if proto.transport is not None:
                proto.transport.abort()
        self.protocols.clear()


async def send(svc: Service):
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False, timeout=10)
    await smtp.connect()
    try:
        await smtp.sendmail("app@example.com", ["user@example.net"], BODY)
        return None
    except aiosmtplib.SMTPException as exc:
        return exc
    finally:
        if smtp.is_connected:
            await smtp.quit()


async def get(session: aiohttp.ClientSession, svc: Service, path: str):
    async with session.get(f"http://127.0.0.1:{svc.api_address[1]}{path}") as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def until(check, what: str, limit: float = 20.0):
    """Poll until `check()` is true (an upper bound for a background probe, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        assert loop.time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def test_outage_is_recorded_counted_and_reported_then_recovery(tmp_path):
    up = Upstream()
    await up.start()
    config = make_config(tmp_path, up.port, upstream={"probe_interval": 0})  # traffic alone tells the state
    async with Service(config) as svc, aiohttp.ClientSession() as http:
        assert await get(http, svc, "/healthz") == (200, {"status": "ok"})
        assert await send(svc) is None
        metrics = parse_metrics((await get(http, svc, "/metrics"))[1])
        assert metrics["bounceproxy_upstream_up"] == 1
        assert metrics['bounceproxy_upstream_failures_total{reason="connect"}'] == 0  # the series exist from the start

        await up.stop()
        refused = [await send(svc) for _ in range(2)]
        assert all(isinstance(r, aiosmtplib.SMTPSenderRefused) and r.code == 451 for r in refused)
        assert refused[0].message.startswith("4.4.1 Upstream unavailable: cannot connect to the upstream")
        # each refused attempt is on record, with the 451 the client got and why
        failed = await messages(svc, status="failed")
        assert len(failed) == 2
        assert all(m.upstream_reply.startswith("451 4.4.1 Upstream unavailable") for m in failed)
        assert all(m.send_failure == "upstream unavailable: cannot connect to the upstream" for m in failed)
        assert failed[0].sender == "app@example.com"

        status, body = await get(http, svc, "/healthz")
        assert status == 503 and body["status"] == "degraded"
        assert body["reason"] == f"upstream 127.0.0.1:{up.port} unavailable: cannot connect to the upstream"
        metrics = parse_metrics((await get(http, svc, "/metrics"))[1])
        assert metrics["bounceproxy_upstream_up"] == 0
        assert metrics['bounceproxy_upstream_failures_total{reason="connect"}'] == 2

        await up.start()  # back, on the same port
        assert await send(svc) is None
        assert await get(http, svc, "/healthz") == (200, {"status": "ok"})
        metrics = parse_metrics((await get(http, svc, "/metrics"))[1])
        assert metrics["bounceproxy_upstream_up"] == 1
        assert metrics['bounceproxy_upstream_failures_total{reason="connect"}'] == 2  # a counter: it stays
        assert [m.status for m in await messages(svc)] == [
            "sent", "failed", "failed", "sent"]
    await up.stop()


async def test_probe_sees_the_outage_and_the_recovery_without_clients(tmp_path):
    up = Upstream()
    await up.start()
    config = make_config(tmp_path, up.port, upstream={"probe_interval": 0.2})
    async with Service(config) as svc, aiohttp.ClientSession() as http:
        assert (await get(http, svc, "/healthz"))[0] == 200
        await up.stop()

        async def degraded():
            status, body = await get(http, svc, "/healthz")
            return status == 503 and "unavailable" in body["reason"]

        await until(degraded, "/healthz degraded while the upstream is gone")
        await up.start()

        async def healthy():
            return await get(http, svc, "/healthz") == (200, {"status": "ok"})

        await until(healthy, "/healthz ok again after the upstream came back")
        # the probe's attempts were no client's: nothing recorded, nothing counted
        assert await messages(svc) == [] and await svc.store.count_rows("messages") == 0
        metrics = parse_metrics((await get(http, svc, "/metrics"))[1])
        assert metrics["bounceproxy_upstream_up"] == 1
        assert sum(v for k, v in metrics.items() if k.startswith("bounceproxy_upstream_failures_total")) == 0
    await up.stop()


async def test_unreachable_at_start_is_degraded_from_the_first_request(tmp_path):
    up = Upstream()
    await up.start()
    port = up.port
    await up.stop()
    async with Service(make_config(tmp_path, port, upstream={"probe_interval": 0})) as svc, \
            aiohttp.ClientSession() as http:
        status, body = await get(http, svc, "/healthz")
        assert status == 503 and body == {"status": "degraded",
                                          "reason": f"upstream 127.0.0.1:{port} unavailable: cannot connect to the upstream"}


def dockerfile_healthcheck() -> str:
    """The HEALTHCHECK's shell command, as Docker runs it (`/bin/sh -c`)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(l for l in text.splitlines() if l.startswith("HEALTHCHECK"))
    return line.split(" CMD ", 1)[1].strip()


async def test_docker_healthcheck_follows_healthz(tmp_path):
    """The image's HEALTHCHECK command, run as Docker would, against a real API: 0 while ok, 1 when degraded."""
    command = dockerfile_healthcheck()
    assert "/healthz" in command
    up = Upstream()
    await up.start()
    async with Service(make_config(tmp_path, up.port, upstream={"probe_interval": 0})) as svc:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               "BOUNCEPROXY_API__LISTEN": f"0.0.0.0:{svc.api_address[1]}"}  # as in a container: any address

        async def check() -> int:
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command, env=env,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            return await proc.wait()

        assert await check() == 0
        await up.stop()
        assert isinstance(await send(svc), aiosmtplib.SMTPSenderRefused)
        assert await check() == 1
        await up.start()
        assert await send(svc) is None
        assert await check() == 0
    await up.stop()


async def test_bounce_log_refusing_writes_is_degraded_and_nothing_goes_upstream(tmp_path):
    """With the bounce log locked by another process the in-flight record cannot be committed: the client
    gets 451 4.3.0 before anything goes upstream, and /healthz says why until a write succeeds again."""
    up = Upstream()
    await up.start()
    config = make_config(tmp_path, up.port, store={"busy_timeout_ms": 200}, upstream={"probe_interval": 0})
    async with Service(config) as svc, aiohttp.ClientSession() as http:
        # SQLite's own failure mode, provoked: another process holds the write lock (nothing is read this way)
        blocker = sqlite3.connect(config.store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            refused = await send(svc)
            assert isinstance(refused, aiosmtplib.SMTPDataError) and refused.code == 451
            assert refused.message.startswith("4.3.0 ")
            assert up.handler.messages == []  # the upstream never got the end of data: no unlogged delivery
            assert await get(http, svc, "/healthz") == (503, {
                "status": "degraded", "reason": "the bounce log refuses writes (clients get 451 4.3.0)"})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await send(svc) is None
        assert await get(http, svc, "/healthz") == (200, {"status": "ok"})
        assert len(up.handler.messages) == 1
    await up.stop()
