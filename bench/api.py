#!/usr/bin/env python3
"""What telling the application costs, in one run (issue 14's figures):

  api       latency of GET /api/bounces?limit=100 (first page, a filtered page, a page by cursor) on a
            bounce log of --events events, SQLite and PostgreSQL, served by `bounceproxy serve`
  polling   relay throughput (smtp-source, 2 KB, 10 sessions) while the dashboard's requests and a
            Prometheus scraper poll every second, as a ratio to the relay alone in the same run
  webhooks  latency from an event (a synchronous bounce: the upstream refuses every recipient) to its
            signed POST at a loopback receiver, under that relay load

    bench/api.py --quick                  # 100,000 events, short relay runs
    bench/api.py                          # 1,000,000 events
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from relay import Bounceproxy, Sink, smtp_source, wait_port  # noqa: E402

from tests.pg import PG_SKIP_REASON, PostgresServer, find_postgres_bin  # noqa: E402
from tests.postfix import free_port  # noqa: E402

DASHBOARD = ["/", "/api/activity", "/api/stats", "/api/bounces?limit=100", "/api/messages?limit=100",
             "/api/suppressions", "/api/inbound?flagged=true"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# -- a big log, written through the Store protocol ----------------------------------------------------
async def fill(url: str, events: int, batch: int = 20_000) -> None:
    from proxy.store import store_for_url

    store = await store_for_url(url).open()
    messages = max(1, events // 10)
    now = time.time()
    try:
        for start in range(0, messages, batch):
            await store.insert_rows("messages", [
                {"id": f"m{i:08d}", "created_at": now - (messages - i), "sender": "app@bench.example.com",
                 "message_id": f"{i}@bench.example.com", "status": "sent", "upstream_id": f"up-{i}", "size": 2048,
                 "client_peer": "127.0.0.1:1", "upstream_reply": "250 Ok"}
                for i in range(start, min(messages, start + batch))])
        for start in range(0, events, batch):
            await store.insert_rows("events", [
                {"id": i + 1, "at": now - (events - i) * 0.1, "relay_id": f"m{i % messages:08d}",
                 "recipient": f"user{i % 50_000}@example.net", "source": "async" if i % 3 else "sync",
                 "kind": "bounce", "bounce_type": "hard" if i % 2 else "soft",
                 "reason": "userunknown" if i % 2 else "mailboxfull", "status": "5.1.1", "status_source": "dsn",
                 "smtp_code": 550, "diagnostic": "smtp; 550 5.1.1 user unknown", "correlation": "verp",
                 "evidence": "", "inbound_id": None}
                for i in range(start, min(events, start + batch))])
    finally:
        await store.close()


async def latencies(base: str, path: str, count: int) -> list[float]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            start = time.perf_counter()
            async with session.get(base + path) as response:
                body = await response.read()
                assert response.status == 200, (response.status, body[:200])
            out.append((time.perf_counter() - start) * 1000)
    return out


async def api_figures(base: str, count: int) -> dict[str, list[float]]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/api/bounces?limit=100") as response:
            cursor = (await response.json())["next_cursor"]
    return {
        "first page": await latencies(base, "/api/bounces?limit=100", count),
        "?recipient=": await latencies(base, "/api/bounces?limit=100&recipient=user7@example.net", count),
        "next page (cursor)": await latencies(base, f"/api/bounces?limit=100&cursor={cursor}", count),
    }


def serve_api(workdir: Path, sink_port: int, env: dict[str, str]) -> tuple[Bounceproxy, str]:
    api_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    bp = Bounceproxy(workdir, sink_port, 1, None, False,
                     extra_env={"BOUNCEPROXY_API__LISTEN": f"127.0.0.1:{api_port}", **env})
    wait_port(api_port, proc=bp.proc)
    return bp, f"http://127.0.0.1:{api_port}"


# -- the relay with and without pollers -----------------------------------------------------------------
class Poller(threading.Thread):
    """The dashboard's requests and a /metrics scrape, once a second each, until stopped."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.halt, self.requests, self.errors = base, threading.Event(), 0, 0

    def run(self) -> None:
        import urllib.request

        while not self.halt.is_set():
            tick = time.monotonic()
            for path in DASHBOARD + ["/metrics"]:
                try:
                    with urllib.request.urlopen(self.base + path, timeout=10) as response:
                        response.read()
                    self.requests += 1
                except OSError:
                    self.errors += 1
            self.halt.wait(max(0.0, 1.0 - (time.monotonic() - tick)))


# -- webhooks --------------------------------------------------------------------------------------------
class Receiver(threading.Thread):
    """A loopback aiohttp receiver that notes when each notification arrived and when its event happened."""

    def __init__(self):
        super().__init__(daemon=True)
        self.port, self.delays, self.ready = free_port(), [], threading.Event()
        self.ids: set[str] = set()

    def run(self) -> None:
        from aiohttp import web

        async def hook(request):
            body = json.loads(await request.read())
            arrived = time.time()
            ours = body["bounceproxy"]
            if ours["eventId"] not in self.ids:
                self.ids.add(ours["eventId"])
                queued = datetime.fromisoformat(ours["queuedAt"].replace("Z", "+00:00")).timestamp()
                self.delays.append((arrived - queued) * 1000)
            return web.Response(text="ok")

        async def main():
            app = web.Application()
            app.router.add_post("/hook", hook)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self.ready.set()
            await asyncio.Event().wait()
        asyncio.run(main())


class RefusingUpstream(threading.Thread):
    """An SMTP upstream that refuses every recipient at RCPT: each message makes a synchronous bounce."""

    def __init__(self):
        super().__init__(daemon=True)
        self.port, self.ready = free_port(), threading.Event()

    def run(self) -> None:
        from aiosmtpd.smtp import SMTP

        class Refuse:
            async def handle_RCPT(self, server, session, envelope, address, options):
                return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"

        async def main():
            loop = asyncio.get_running_loop()
            await loop.create_server(lambda: SMTP(Refuse(), hostname="refuse.bench"), "127.0.0.1", self.port)
            self.ready.set()
            await asyncio.Event().wait()
        asyncio.run(main())


async def send_refused(port: int, count: int, sessions: int) -> float:
    """`count` messages of 2 KB over `sessions` concurrent clients, a new connection each, every recipient
    refused (smtp-source gives up at the first refusal); returns messages per second."""
    import aiosmtplib

    body = b"From: app@bench.example.com\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"
    todo = iter(range(count))

    async def client() -> None:
        for i in todo:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
            await smtp.connect()
            try:
                await smtp.sendmail("app@bench.example.com", [f"gone{i}@bench.example.net"], body)
            except aiosmtplib.SMTPRecipientsRefused:
                pass
            await smtp.quit()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(sessions)))
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=300, help="requests per latency figure")
    ap.add_argument("--count", type=int, default=3000, help="messages per relay run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--webhook-concurrency", type=int, default=16, help="[webhooks] concurrency (default 16)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.requests, args.count, args.repeat = 100_000, 100, 1000, 1
    if find_postgres_bin() is None:
        print(PG_SKIP_REASON)
        return 2
    with tempfile.TemporaryDirectory(prefix="bp-api-bench-") as tmp, PostgresServer(durable=True) as pg:
        work = Path(tmp)
        sink = Sink(work)
        try:
            print(f"GET /api/bounces?limit=100 on {args.events:,} events, {args.requests} requests each (ms):")
            pg_url = pg.create_database_sync()
            stores = [("sqlite", {"BOUNCEPROXY_STORE__PATH": str(work / "big.db")}, f"sqlite://{work / 'big.db'}"),
                      ("postgresql", {"BOUNCEPROXY_STORE__BACKEND": "postgresql", "BOUNCEPROXY_STORE__URL": pg_url},
                       pg_url)]
            for name, env, url in stores:
                start = time.perf_counter()
                asyncio.run(fill(url, args.events))
                filled = time.perf_counter() - start
                bp, base = serve_api(work / f"api-{name}", sink.port, env)
                try:
                    figures = asyncio.run(api_figures(base, args.requests))
                finally:
                    bp.stop()
                for label, ms in figures.items():
                    print(f"  {name:10} {label:20} p50 {pct(ms, .5):7.2f}  p99 {pct(ms, .99):7.2f}   "
                          f"(log filled in {filled:.0f} s)")

            print(f"relay alone and with the dashboard + a scraper polling every second "
                  f"({args.count} × 2 KB, 10 sessions, median of {args.repeat}, msg/s):")
            alone, polled, requests = [], [], 0
            for r in range(args.repeat):
                for label in ("alone", "polled"):
                    bp, base = serve_api(work / f"relay-{label}-{r}", sink.port, {})
                    poller = Poller(base) if label == "polled" else None
                    try:
                        if poller:
                            poller.start()
                        result = smtp_source(bp.port, args.count, 2048, 10, 600)
                    finally:
                        if poller:
                            poller.halt.set()
                            poller.join()
                            requests += poller.requests
                        bp.stop()
                    (alone if label == "alone" else polled).append(result.rate)
            a, p = statistics.median(alone), statistics.median(polled)
            print(f"  alone {a:,.0f}   polled {p:,.0f}   ratio {p / a:.2f} (bar ≥ 0.95: {'met' if p / a >= 0.95 else 'NOT met'};"
                  f" {requests} poll requests answered)")

            receiver, refusing = Receiver(), RefusingUpstream()
            receiver.start(), refusing.start()
            receiver.ready.wait(10), refusing.ready.wait(10)
            (work / "hooks").mkdir()
            bp = Bounceproxy(work / "hooks", refusing.port, 1, None, False, extra_env={
                "BOUNCEPROXY_WEBHOOKS__URLS": f"http://127.0.0.1:{receiver.port}/hook",
                "BOUNCEPROXY_WEBHOOK_SECRET": "bench-secret-" + "s" * 20,
                "BOUNCEPROXY_SUPPRESSION__ENABLED": "false",  # every message bounces again, none is refused
                "BOUNCEPROXY_WEBHOOKS__CONCURRENCY": str(args.webhook_concurrency)})
            try:
                rate = asyncio.run(send_refused(bp.port, args.count, 10))
                deadline = time.monotonic() + 120
                while len(receiver.ids) < args.count and time.monotonic() < deadline:
                    time.sleep(0.2)
            finally:
                bp.stop()
            d = receiver.delays
            print(f"webhooks: {len(receiver.ids)} of {args.count} bounces notified while the relay ran at "
                  f"{rate:,.0f} msg/s; event to POST p50 {pct(d, .5):.0f} ms, p99 {pct(d, .99):.0f} ms")
        finally:
            sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
