#!/usr/bin/env python3
"""Soak: a long run at N concurrent sessions through the relay and the bounce MX together.

Starts `bounceproxy serve` (relaying to Postfix's smtp-sink), then keeps N sessions busy — most of
them sending mail through the relay, some delivering real DSNs to the bounce MX — for the given
duration, and samples the process every few seconds: RSS, open file descriptors, and the latency
of the SMTP transactions finished since the previous sample. It prints a table and a verdict on
the three bars of issue 7: RSS growth after warm-up under 10 %, no file-descriptor leak, no
growing latency (the last quarter's median within 1.5x of the first quarter's after warm-up).

    .venv/bin/python bench/soak.py --minutes 10 --sessions 50
    .venv/bin/python bench/soak.py --minutes 1            # a quick look
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, status_kb, wait_port  # noqa: E402
DSN = (ROOT / "tests" / "data" / "lhost-postfix-06.eml").read_bytes()
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def mail_session(port: int, stop: asyncio.Event, latencies: list[float], errors: list[str], n: int) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        body = f"From: soak@example.com\r\nSubject: soak {n}-{seq}\r\n\r\n".encode() + (b"x" * 76 + b"\r\n") * 26
        start = time.perf_counter()
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        try:
            await smtp.connect()
            await smtp.sendmail("soak@example.com", [f"user{n}-{seq % 50}@example.net"], body)
            await smtp.quit()
            latencies.append(time.perf_counter() - start)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            errors.append(type(exc).__name__)
            smtp.close()
            await asyncio.sleep(0.1)


async def dsn_session(port: int, stop: asyncio.Event, latencies: list[float], errors: list[str], n: int) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        raw = f"X-Soak: {n}-{seq}\r\n".encode() + DSN
        start = time.perf_counter()
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        try:
            await smtp.connect()
            await smtp.sendmail("", ["bounces@bounces.test"], raw)
            await smtp.quit()
            latencies.append(time.perf_counter() - start)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            errors.append(type(exc).__name__)
            smtp.close()
            await asyncio.sleep(0.1)


async def soak(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="bounceproxy-soak-"))
    sink_port, relay_port, mx_port = free_port(), free_port(), free_port()
    sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", f"127.0.0.1:{sink_port}", "512"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")},
           "PYTHONPATH": str(ROOT), "BOUNCEPROXY_VERP_KEY": "soak-key-0123456789abcdef",
           "BOUNCEPROXY_STORE__PATH": str(work / "soak.db"),
           "BOUNCEPROXY_RELAY__LISTEN": f"127.0.0.1:{relay_port}", "BOUNCEPROXY_INBOUND__LISTEN": f"127.0.0.1:{mx_port}",
           "BOUNCEPROXY_INBOUND__BOUNCE_DOMAINS": "bounces.test", "BOUNCEPROXY_INBOUND__PLAIN_ADDRESSES": "bounces@bounces.test",
           "BOUNCEPROXY_INBOUND__MAX_CONNECTIONS_PER_IP": "200", "BOUNCEPROXY_API__ENABLED": "false",
           "BOUNCEPROXY_UPSTREAM__PROFILE": "smtp", "BOUNCEPROXY_UPSTREAM__HOST": "127.0.0.1",
           "BOUNCEPROXY_UPSTREAM__PORT": str(sink_port), "BOUNCEPROXY_UPSTREAM__TLS": "none"}
    serve = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=env, cwd=work,
                             stdout=open(work / "serve.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_port(sink_port)
        wait_port(relay_port)
        wait_port(mx_port)
        idle_fds_before = fds(serve.pid)
        stop = asyncio.Event()
        mail_lat: list[float] = []
        dsn_lat: list[float] = []
        errors: list[str] = []
        dsn_sessions = max(1, args.sessions // 10)
        tasks = [asyncio.create_task(mail_session(relay_port, stop, mail_lat, errors, n))
                 for n in range(args.sessions - dsn_sessions)]
        tasks += [asyncio.create_task(dsn_session(mx_port, stop, dsn_lat, errors, n)) for n in range(dsn_sessions)]
        duration = args.minutes * 60
        start = time.time()
        samples = []
        seen = 0
        print(f"# soak: {args.sessions} sessions ({dsn_sessions} to the bounce MX) for {args.minutes} min; "
              f"serve pid {serve.pid}; work dir {work}")
        print(f"{'t':>6} {'RSS MB':>8} {'fds':>5} {'done':>8} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}")
        while time.time() - start < duration:
            await asyncio.sleep(args.interval)
            window = mail_lat[seen:]
            seen = len(mail_lat)
            window.sort()
            p50 = window[len(window) // 2] * 1000 if window else 0.0
            p95 = window[int(len(window) * 0.95)] * 1000 if window else 0.0
            sample = (time.time() - start, rss_kb(serve.pid) / 1024, fds(serve.pid), len(mail_lat) + len(dsn_lat), p50, p95)
            samples.append(sample)
            print(f"{sample[0]:6.0f} {sample[1]:8.1f} {sample[2]:5d} {sample[3]:8d} {p50:8.1f} {p95:8.1f} {len(errors):7d}",
                  flush=True)
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(3)  # sessions closed, pooled upstream connections still open
        idle_fds_after = fds(serve.pid)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        sink.kill()
    warm = [s for s in samples if s[0] >= duration * 0.2] or samples
    quarter = max(1, len(warm) // 4)
    rss_start, rss_end = warm[0][1], warm[-1][1]
    growth = (rss_end - rss_start) / rss_start if rss_start else 0.0
    fd_start, fd_end = idle_fds_before, idle_fds_after
    lat_first = statistics.median(s[4] for s in warm[:quarter])
    lat_last = statistics.median(s[4] for s in warm[-quarter:])
    print(f"\nmessages {len(mail_lat)}, DSNs {len(dsn_lat)}, errors {len(errors)} "
          f"({', '.join(sorted(set(errors))) or 'none'})")
    print(f"RSS after warm-up {rss_start:.1f} MB -> end {rss_end:.1f} MB: growth {growth:+.1%} (bar < 10 %)")
    print(f"open fds idle before the load {fd_start} -> idle after it {fd_end} (bar: no leak; the upstream pool "
          f"keeps up to its size open)")
    print(f"median latency first quarter {lat_first:.1f} ms -> last quarter {lat_last:.1f} ms (bar: no growth)")
    ok = growth < 0.10 and fd_end <= fd_start + 20 and lat_last <= max(lat_first * 1.5, lat_first + 5)
    print("verdict:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
