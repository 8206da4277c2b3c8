#!/usr/bin/env python3
"""Relay throughput with a 1,000,000-entry suppression list and DNS preflight on, as a ratio to the
same relay with both off, in the same run; and the memory of the process with the list loaded.

smtp-source (10 sessions, 2 KB, a connection per message) sends through `bounceproxy serve` to
smtp-sink. The preflight resolver is a small authoritative DNS server on loopback (tests/dnsserver.py)
that holds the recipients' domain. Runs alternate between the two configurations (--repeat) and the
median of each is compared.

    .venv/bin/python bench/suppression.py                 # 1M entries, 2000 messages, 3 rounds
    .venv/bin/python bench/suppression.py --entries 100000 --repeat 1
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, status_kb, wait_port  # noqa: E402
sys.path.insert(0, str(ROOT))
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def start_dns() -> tuple[str, threading.Event]:
    """The test DNS server on its own thread and loop; returns its address."""
    from tests.dnsserver import ZONES, DNSServer

    ready: list[str] = []
    stop = threading.Event()

    def run() -> None:
        async def serve() -> None:
            async with DNSServer(ZONES) as dns:
                ready.append(dns.address)
                while not stop.is_set():
                    await asyncio.sleep(0.1)
        asyncio.run(serve())

    threading.Thread(target=run, daemon=True).start()
    while not ready:
        time.sleep(0.05)
    return ready[0], stop


def seed(db_path: Path, entries: int) -> float:
    """A bounce log holding `entries` suppressed addresses (through the real migrations)."""
    from proxy.store import SqliteStore

    async def create() -> None:
        store = await SqliteStore(str(db_path)).open()
        await store.close()

    asyncio.run(create())
    start = time.perf_counter()
    db = sqlite3.connect(db_path)
    now = time.time()
    db.executemany(
        "INSERT INTO suppressions (scope, address, reason, kind, created_at, seq) VALUES ('', ?, 'userunknown', 'hard', ?, ?)",
        ((f"user{n}@example{n % 1000}.com", now, n + 1) for n in range(entries)))
    db.commit()
    db.close()
    return time.perf_counter() - start


class Serve:
    def __init__(self, work: Path, name: str, sink_port: int, db: Path, extra: dict[str, str]):
        self.port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")},
               "PYTHONPATH": str(ROOT), "BOUNCEPROXY_STORE__PATH": str(db),
               "BOUNCEPROXY_RELAY__LISTEN": f"127.0.0.1:{self.port}", "BOUNCEPROXY_INBOUND__ENABLED": "false",
               "BOUNCEPROXY_API__ENABLED": "false", "BOUNCEPROXY_UPSTREAM__PROFILE": "smtp",
               "BOUNCEPROXY_UPSTREAM__HOST": "127.0.0.1", "BOUNCEPROXY_UPSTREAM__PORT": str(sink_port),
               "BOUNCEPROXY_UPSTREAM__TLS": "none", **extra}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=env, cwd=work,
                                     stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
        wait_port(self.port)
        self.start_seconds = time.perf_counter() - self.started

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def blast(port: int, count: int, sessions: int) -> float:
    start = time.perf_counter()
    subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-l", "2048", "-f", "app@example.com",
                    "-t", "someone@good.test", f"127.0.0.1:{port}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-suppression-"))
    dns_address, dns_stop = start_dns()
    seconds = seed(work / "on.db", args.entries)
    print(f"# seeded {args.entries:,} suppressions in {seconds:.1f}s; DNS at {dns_address}; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sink_port = free_port()
    sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", f"127.0.0.1:{sink_port}", "512"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(sink_port)
    off = Serve(work, "off", sink_port, work / "off.db",
                {"BOUNCEPROXY_SUPPRESSION__ENABLED": "false", "BOUNCEPROXY_PREFLIGHT__ENABLED": "false"})
    on = Serve(work, "on", sink_port, work / "on.db",
               {"BOUNCEPROXY_PREFLIGHT__ENABLED": "true", "BOUNCEPROXY_PREFLIGHT__RESOLVERS": dns_address})
    try:
        rss_loaded = status_kb(on.proc.pid, "VmRSS")
        rss_off = status_kb(off.proc.pid, "VmRSS")
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.repeat):
            rates["off"].append(blast(off.port, args.count, args.sessions))
            rates["on"].append(blast(on.port, args.count, args.sessions))
        hwm_on, hwm_off = status_kb(on.proc.pid, "VmHWM"), status_kb(off.proc.pid, "VmHWM")
    finally:
        on.stop()
        off.stop()
        sink.kill()
        dns_stop.set()
    med_off, med_on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"relay, suppression and preflight off: {med_off:7.0f} msg/s  (runs: {', '.join(f'{r:.0f}' for r in rates['off'])})")
    print(f"relay, {args.entries:,} suppressions + preflight on: {med_on:7.0f} msg/s  "
          f"(runs: {', '.join(f'{r:.0f}' for r in rates['on'])})")
    print(f"ratio on/off: {med_on / med_off:.2f} (bar >= 0.9)")
    print(f"memory: with the list loaded {rss_loaded / 1024:.1f} MiB RSS at start (peak {hwm_on / 1024:.1f} MiB); "
          f"without {rss_off / 1024:.1f} MiB (peak {hwm_off / 1024:.1f} MiB); start-up with the list {on.start_seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
