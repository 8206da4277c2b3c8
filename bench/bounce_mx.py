#!/usr/bin/env python3
"""Bounce MX throughput: DSNs per second accepted and stored, against smtp-sink in the same run.

Postfix's smtp-source sends a real DSN (tests/data/lhost-postfix-06.eml) N times over S sessions,
a new connection per message, first to smtp-sink (the machine's ceiling for the same traffic), then
to bounceproxy's bounce MX, which commits every raw mail to SQLite before its 250 and parses it
after. It prints both rates, their ratio, and how many mails the store holds (all must be there).

    .venv/bin/python bench/bounce_mx.py                 # 3000 DSNs, 10 sessions
    .venv/bin/python bench/bounce_mx.py --count 1000 --sessions 50
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, wait_port  # noqa: E402
DSN = ROOT / "tests" / "data" / "lhost-postfix-06.eml"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def blast(port: int, count: int, sessions: int, dsn: Path) -> float:
    start = time.perf_counter()
    subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-F", str(dsn), "-f", "mailer-daemon@peer.test",
                    "-t", "bounces@bounces.test", f"127.0.0.1:{port}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mx-"))
    dsn = work / "dsn.eml"
    dsn.write_bytes(DSN.read_bytes().replace(b"\r\n", b"\n"))  # smtp-source sends it line by line
    sink_port, mx_port = free_port(), free_port()
    sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", f"127.0.0.1:{sink_port}", "512"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")},
           "PYTHONPATH": str(ROOT), "BOUNCEPROXY_STORE__PATH": str(work / "mx.db"),
           "BOUNCEPROXY_RELAY__LISTEN": f"127.0.0.1:{free_port()}", "BOUNCEPROXY_INBOUND__LISTEN": f"127.0.0.1:{mx_port}",
           "BOUNCEPROXY_INBOUND__BOUNCE_DOMAINS": "bounces.test", "BOUNCEPROXY_INBOUND__PLAIN_ADDRESSES": "bounces@bounces.test",
           "BOUNCEPROXY_INBOUND__MAX_CONNECTIONS_PER_IP": "1000", "BOUNCEPROXY_API__ENABLED": "false",
           "BOUNCEPROXY_VERP_KEY": "bench-key-0123456789abcdef"}
    serve = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=env, cwd=work,
                             stdout=open(work / "serve.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_port(sink_port)
        wait_port(mx_port)
        print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        direct = blast(sink_port, args.count, args.sessions, dsn)
        mx = blast(mx_port, args.count, args.sessions, dsn)
        deadline = time.time() + 120
        while time.time() < deadline:
            with sqlite3.connect(work / "mx.db") as db:
                stored, pending = db.execute(
                    "SELECT COUNT(*), SUM(state = 'pending') FROM inbound").fetchone()
            if not pending:
                break
            time.sleep(0.5)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        sink.kill()
    print(f"DSNs of {dsn.stat().st_size} bytes, {args.count} messages, {args.sessions} sessions, a connection each")
    print(f"smtp-sink:        {direct:8.0f} msg/s")
    print(f"bounceproxy MX:   {mx:8.0f} DSN/s (committed before each 250)")
    print(f"ratio:            {mx / direct:8.2f}")
    print(f"stored {stored} of {args.count}; still pending after parsing: {pending or 0}")
    return 0 if stored == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
