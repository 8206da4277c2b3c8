"""kill -9 under load: whatever a client or a peer was told `250` for is in the store, once, and
whatever reached the upstream is in the store too (sent, or possibly_sent when the crash fell between
the upstream's answer and the commit: issue 10 §7).

A real `bounceproxy serve` process relays to Postfix's smtp-sink (which dumps every message it gets)
while ten tracked client sessions (and smtp-source beside them) send mail and two peers deliver DSNs
to the bounce MX. The process is killed with SIGKILL several times and restarted; a tracked client
retries a message it got no 250 for, as an MTA does, so a crash after the upstream took the message
makes a duplicate: it must be counted (`stats` duplicates) and retried by the client, never silent.
"""
from __future__ import annotations

import asyncio
import collections
import os
import re
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
import pytest

from proxy.store import EventFilter, MessageFilter, store_for_url
from tests.conftest import ROOT
from tests.postfix import free_port

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
pytestmark = pytest.mark.skipif(not (os.path.exists(SMTP_SINK) and os.path.exists(SMTP_SOURCE)),
                                reason="Postfix's smtp-sink/smtp-source are not installed (Debian package postfix)")
DSN = (ROOT / "tests" / "data" / "lhost-postfix-06.eml").read_bytes()
KILLS = 3


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


class Serve:
    def __init__(self, tmp: Path, sink_port: int):
        self.relay_port, self.mx_port = free_port(), free_port()
        self.db = tmp / "bounceproxy.db"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")},
            "PYTHONPATH": str(ROOT), "BOUNCEPROXY_VERP_KEY": "durability-key-0123456789",
            "BOUNCEPROXY_STORE__PATH": str(self.db),
            "BOUNCEPROXY_RELAY__LISTEN": f"127.0.0.1:{self.relay_port}",
            "BOUNCEPROXY_INBOUND__LISTEN": f"127.0.0.1:{self.mx_port}",
            "BOUNCEPROXY_INBOUND__BOUNCE_DOMAINS": "bounces.test",
            "BOUNCEPROXY_INBOUND__PLAIN_ADDRESSES": "bounces@bounces.test",
            "BOUNCEPROXY_API__ENABLED": "false",
            "BOUNCEPROXY_UPSTREAM__PROFILE": "smtp", "BOUNCEPROXY_UPSTREAM__HOST": "127.0.0.1",
            "BOUNCEPROXY_UPSTREAM__PORT": str(sink_port), "BOUNCEPROXY_UPSTREAM__TLS": "none",
        }
        self.log = open(tmp / "serve.log", "ab")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=self.env, stdout=self.log,
                                     stderr=self.log)
        wait_port(self.relay_port)
        wait_port(self.mx_port)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def client(port_of, acked: set[str], tried: collections.Counter, stop: asyncio.Event, worker: int) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        msgid = f"w{worker}-{n}@durability.test"
        body = f"Message-ID: <{msgid}>\r\nFrom: app@example.com\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()
        while msgid not in acked and not stop.is_set():  # retried until a 250, like an MTA's queue
            tried[msgid] += 1
            try:
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(), start_tls=False, timeout=5)
                await smtp.connect()
                await smtp.sendmail("app@example.com", [f"user{worker}@example.net"], body)
                acked.add(msgid)  # the client has seen the final 250
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)


async def peer(port_of, acked: set[str], stop: asyncio.Event, worker: int) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        marker = f"p{worker}-{n}"
        raw = f"X-Durability-Seq: {marker}\r\n".encode() + DSN
        try:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(), start_tls=False, timeout=5)
            await smtp.connect()
            await smtp.sendmail("", ["bounces@bounces.test"], raw)
            acked.add(marker)
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)


async def log_view(path: Path, read):
    """What `read(store)` finds in the log a running (or killed) serve writes, through the Store protocol."""
    store = await store_for_url(f"sqlite:///{path}").open(readonly=True)
    try:
        return await read(store)
    finally:
        await store.close()


async def test_kill_9_under_load_loses_and_duplicates_nothing(tmp_path):
    sink_port = free_port()
    dumps = Path(tempfile.mkdtemp(prefix="bp-sink-"))  # outside pytest's 0700 tree: smtp-sink writes as nobody
    dumps.chmod(0o777)
    sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", "-d", f"{dumps}/m.", f"127.0.0.1:{sink_port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(sink_port)
    serve = Serve(tmp_path, sink_port)
    serve.start()
    acked_mail: set[str] = set()
    tried_mail: collections.Counter = collections.Counter()
    acked_dsn: set[str] = set()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client(lambda: serve.relay_port, acked_mail, tried_mail, stop, w)) for w in range(10)]
    tasks += [asyncio.create_task(peer(lambda: serve.mx_port, acked_dsn, stop, w)) for w in range(2)]
    sources = []
    kills = 0
    try:
        for _ in range(KILLS):
            sources.append(subprocess.Popen(
                [SMTP_SOURCE, "-s", "10", "-m", "300", "-l", "2048", "-f", "load@example.com", "-t", "load@example.net",
                 f"127.0.0.1:{serve.relay_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            await asyncio.sleep(random.uniform(1.0, 2.0))
            serve.kill()
            kills += 1
            await asyncio.sleep(0.2)
            await asyncio.to_thread(serve.start)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*tasks)
        deadline = time.time() + 30
        while time.time() < deadline:  # the restarted process parses what the killed one stored
            if not await log_view(serve.db, lambda store: store.inbound_ids(["pending"])):
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        serve.stop()
        for proc in sources:
            if proc.poll() is None:
                proc.kill()
        sink.kill()

    store = await store_for_url(f"sqlite:///{serve.db}").open(readonly=True)
    try:
        messages = await store.list_messages(MessageFilter(limit=10**7))
        inbound = [await store.get_inbound(i) for i in await store.inbound_ids()]
        async_events = await store.list_events(EventFilter(source="async", limit=10**7))
        counted = (await store.stats(0)).duplicates
    finally:
        await store.close()
    stored = collections.Counter(m.message_id for m in messages
                                 if m.message_id and m.message_id.endswith("@durability.test") and m.status == "sent")
    lost = acked_mail - set(stored)
    went_out = collections.Counter(m.message_id for m in messages if m.status in ("sent", "partial", "possibly_sent"))
    possibly_sent = sum(1 for m in messages if m.status == "possibly_sent")
    pending_left = sum(1 for m in messages if m.status == "pending")
    rows_total = len(messages)
    # what the upstream got: every Message-ID in smtp-sink's dumps (the relay adds one when a client has none)
    at_sink: collections.Counter = collections.Counter()
    for dump in dumps.iterdir():
        m = re.search(rb"^Message-I[dD]: <([^>\r\n]+)>", dump.read_bytes(), re.M)
        if m:
            at_sink[m.group(1).decode()] += 1
    shutil.rmtree(dumps, ignore_errors=True)
    missing_upstream = set(at_sink) - set(went_out)
    duplicates = {m: n for m, n in went_out.items() if n > 1}
    raws = {}
    for row in inbound:
        marker = row.raw.split(b"\r\n", 1)[0].split(b": ", 1)[1].decode()
        raws.setdefault(marker, []).append((row.id, row.state))
    events_by_inbound = collections.Counter(e.event.inbound_id for e in async_events)
    lost_dsn = acked_dsn - set(raws)
    pending = [r for rows in raws.values() for r in rows if r[1] != "parsed"]
    wrong_events = [rid for rows in raws.values() for rid, _ in rows if events_by_inbound.get(rid) != 1]
    print(f"kills {kills}; tracked messages acknowledged {len(acked_mail)} of {len(tried_mail)} tried "
          f"({sum(tried_mail.values())} attempts), stored as sent {len(stored)}; all messages: {rows_total} rows, "
          f"delivered upstream {len(at_sink)} distinct ({sum(at_sink.values())} at the sink), "
          f"possibly_sent {possibly_sent}, possible duplicates {counted} (received twice at the sink: "
          f"{sum(n - 1 for n in at_sink.values())}); DSNs acknowledged {len(acked_dsn)}, "
          f"stored {len(raws)}; lost {len(lost)}+{len(lost_dsn)}, upstream deliveries missing from the log "
          f"{len(missing_upstream)}")
    assert kills == KILLS and len(acked_mail) > 50 and len(acked_dsn) > 10
    assert not lost and not lost_dsn
    assert not missing_upstream  # every message the upstream got is in `messages`: sent or possibly_sent
    assert pending_left == 0  # the last start marked every leftover
    # a duplicate is a client's retry of a message that had gone out, and `stats` counts every one
    assert all(tried_mail[m] > 1 for m in duplicates if m.endswith("@durability.test"))
    assert counted == sum(n - 1 for n in duplicates.values())
    assert {m for m, n in at_sink.items() if n > 1} <= set(duplicates)  # every real repeat is among them
    assert not pending and not wrong_events  # every stored DSN parsed, each into exactly one event
    assert all(len(rows) == 1 for rows in raws.values())  # no DSN stored twice
    assert set(stored) <= set(tried_mail)
