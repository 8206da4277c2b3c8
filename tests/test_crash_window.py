"""The crash window (issue 10 §7), made deterministic: a real `bounceproxy serve` is killed with
SIGKILL while the upstream holds the message and its answer to the end of data. The in-flight row is
already committed; the next start marks it possibly_sent; the client's retry is a visible duplicate."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiosmtplib

from proxy.model import MessageRecord, MessageStatus, RecipientRecord, RecipientStatus
from proxy.app import Service
from tests.conftest import make_config, start_upstream
from tests.test_durability import Serve
from tests.test_message_status import HeldUpstream

BODY = (b"From: app@example.com\r\nTo: a@example.net\r\nMessage-ID: <crash-1@example.com>\r\n"
        b"Subject: receipt\r\n\r\nhello\r\n")


async def send(port: int):
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    await smtp.connect()
    try:
        await smtp.sendmail("app@example.com", ["a@example.net"], BODY)
        await smtp.quit()
        return None
    except (aiosmtplib.SMTPException, OSError) as exc:
        return exc


def cli(serve: Serve, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "proxy", *args], env=serve.env, capture_output=True, text=True,
                         timeout=60, cwd=serve.db.parent)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_kill_between_end_of_data_and_commit_leaves_a_possibly_sent_row_and_the_retry_is_a_duplicate(tmp_path):
    up = await start_upstream(HeldUpstream())
    serve = Serve(tmp_path, up.port)
    try:
        await asyncio.to_thread(serve.start)
        first = asyncio.create_task(send(serve.relay_port))
        await asyncio.wait_for(up.handler.arrived.wait(), 20)  # the upstream has the whole message
        serve.kill()
        assert isinstance(await first, (aiosmtplib.SMTPException, OSError))  # the client never got 250

        await asyncio.to_thread(serve.start)
        (row,) = [json.loads(line) for line in cli(serve, "messages", "--json").splitlines()]
        assert row["status"] == "possibly_sent" and row["message_id"] == "crash-1@example.com"
        assert row["recipients"] == "a@example.net" and "may have accepted it" in row["upstream_reply"]
        story = cli(serve, "messages", "show", row["id"], "--json")
        assert json.loads(story)["verp_token"].startswith("bounce")  # a later bounce still finds it

        up.handler.release.set()  # the upstream answers again: the client's retry goes through
        up.handler.arrived.clear()
        assert await send(serve.relay_port) is None
        assert len(up.handler.received) == 2  # the upstream read the whole message twice

        stats = json.loads(cli(serve, "stats", "--json"))
        assert stats["by_status"] == {"possibly_sent": 1, "sent": 1} and stats["duplicates"] == 1
        dupes = [json.loads(line) for line in cli(serve, "messages", "--duplicates", "--json").splitlines()]
        assert sorted(d["status"] for d in dupes) == ["possibly_sent", "sent"]
        assert all(d["duplicate"] == 1 and d["message_id"] == "crash-1@example.com" for d in dupes)
        text = cli(serve, "stats")
        assert "duplicates 1" in text
    finally:
        up.handler.release.set()
        serve.stop()
        up.server.close()
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "1 message(s) were in flight when bounceproxy last stopped: marked possibly_sent" in log


async def test_recovery_marks_only_what_a_previous_run_left(any_store):
    """Relay workers start one after another: leftovers are rows older than this start, never a row
    another worker has in flight now."""
    store = any_store
    await store.record_message(MessageRecord(id="old", created_at=100.0, message_id="x@y",
                                             recipients=[RecipientRecord("a@x", RecipientStatus.ACCEPTED)]))
    await store.record_message(MessageRecord(id="now", created_at=200.0))
    await store.record_message(MessageRecord(id="done", created_at=100.0, status=MessageStatus.SENT,
                                             upstream_reply="250 Ok"))
    assert await store.mark_possibly_sent(before=150.0) == 1
    status = {i: (await store.get_message(i)).status for i in ("old", "now", "done")}
    assert status == {"old": "possibly_sent", "now": "pending", "done": "sent"}
    assert "may have accepted it" in (await store.get_message("old")).upstream_reply


async def test_a_relay_starting_on_a_shared_store_leaves_other_relays_transfers_in_flight(tmp_path, upstream, pg_url):
    """Several relays on one PostgreSQL: a start marks only rows pending for longer than any live transfer
    lasts (2 x command_timeout, 600 s at least), never another relay's message going upstream now; the
    periodic sweep marks the rest once they are that old."""
    now = time.time()
    config = make_config(tmp_path, upstream.port, store_url=pg_url)
    async with Service(config) as first:  # creates the schema
        await first.store.record_message(MessageRecord(id="stale", created_at=now - 700))
        await first.store.record_message(MessageRecord(id="live", created_at=now - 5))
    async with Service(config) as second:
        status = {i: (await second.store.get_message(i)).status for i in ("stale", "live")}
        assert status == {"stale": "possibly_sent", "live": "pending"}
        assert second._sweeper is not None  # and the sweep runs on
        assert await second._sweep_in_flight(now + 600) == 1  # the live one, once older than the bound
        assert (await second.store.get_message("live")).status == "possibly_sent"


async def test_a_relay_starting_on_sqlite_marks_every_earlier_in_flight_row(tmp_path, upstream):
    now = time.time()
    config = make_config(tmp_path, upstream.port)
    async with Service(config) as first:
        await first.store.record_message(MessageRecord(id="earlier", created_at=now - 5))
    async with Service(config) as second:
        assert (await second.store.get_message("earlier")).status == "possibly_sent"
        assert second._sweeper is None
