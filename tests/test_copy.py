"""`bounceproxy copy` and `bounceproxy migrate`: a real SQLite log, filled through the Store protocol, moved
to PostgreSQL; every record reads back equal through the protocol, a second copy adds nothing, and the
destination goes on issuing ids past the copied ones."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from proxy.model import (BounceEvent, BounceType, Correlation, InboundResult, Kind, MessageRecord, MessageStatus,
                         ParseState, RecipientRecord, RecipientStatus, Source, StatusSource, Suppression)
from proxy.store import EventFilter, InboundFilter, MessageFilter, SuppressionFilter, store_for_url
from proxy.store.copy import copy_store
from proxy.store.units import TABLES
from tests.conftest import BIN, ROOT

NOW = time.time()
DSN = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered\r\n\r\n<gone@example.org>: user unknown\r\n\xff\x00"
ARF = b"From: fbl@isp.example\r\nSubject: complaint\r\n\r\nabuse report\r\n"
MESSAGES = 25  # more than a page (--batch 10 below), so the copy pages by key


async def populate(url: str) -> None:
    """Messages with recipients and sync events, inbound mails with async events (one left pending),
    suppressions pointing at events, a paused identity and an outbox raw."""
    store = await store_for_url(url).open()
    try:
        for n in range(MESSAGES):
            m = MessageRecord(
                id=f"msg{n:03d}", created_at=NOW - 1000 + n + 0.125, client_peer="127.0.0.1:4000", client_user="app",
                sender=f"app{n % 3}@sender{n % 2}.example", header_from="App <app@example.com>",
                message_id=f"<{n}@relay.test>", subject=f"Hello {n} ünïcode", upstream_id=f"0100-{n}",
                verp_token=f"tok{n}", size=1000 + n, status=MessageStatus.PARTIAL if n % 5 == 0 else MessageStatus.SENT,
                upstream_reply=f"250 Ok 0100-{n}", content_sha256=f"{n:064x}",
                recipients=[RecipientRecord(f"ok{n}@example.org", RecipientStatus.ACCEPTED, "250 2.1.5 Ok")])
            events = []
            if n % 5 == 0:
                m.recipients.append(RecipientRecord(f"gone{n}@example.org", RecipientStatus.REJECTED, "550 5.1.1 unknown"))
                events.append(BounceEvent(
                    at=NOW - 900 + n, source=Source.SYNC, kind=Kind.BOUNCE, recipient=f"gone{n}@example.org",
                    bounce_type=BounceType.HARD, reason="userunknown", status="5.1.1", status_source=StatusSource.DSN,
                    smtp_code=550, diagnostic="550 5.1.1 unknown", relay_id=m.id, smtp_command="RCPT",
                    decided_by="status: 5.1.1"))
            await store.record_message(m, events, raw=b"Subject: kept\r\n\r\nbody\r\n" if n == 3 else None)
        for n in range(0, MESSAGES, 4):
            inbound_id = await store.store_inbound("192.0.2.7", "", [f"bounce+tok{n}@bounces.test"], DSN + str(n).encode())
            late = BounceEvent(at=NOW - 500 + n, source=Source.ASYNC, kind=Kind.BOUNCE, recipient=f"ok{n}@example.org",
                               bounce_type=BounceType.SOFT, reason="mailboxfull", status="4.2.2",
                               status_source=StatusSource.DSN, diagnostic="mailbox full", remote_mta="mx.example.org",
                               reporting_mta="dsn; mx.example.net", correlation=Correlation.VERP, relay_id=f"msg{n:03d}",
                               inbound_id=inbound_id, parser_version="1", action="failed")
            await store.record_inbound_result(inbound_id, InboundResult(ParseState.PARSED, "1", "bounce", "rfc3464",
                                                                        events=[late]))
        await store.store_inbound("192.0.2.8", "x@y.example", ["bounce@bounces.test"], ARF)  # left pending
        (first,) = await store.list_events(EventFilter(recipient="gone0@example.org"))
        await store.upsert_suppressions([
            Suppression("", "gone0@example.org", "userunknown", "hard", NOW - 800, source_event=first.event.id),
            Suppression("", "full@example.org", "mailboxfull", "soft", NOW - 700, expires_at=NOW + 86400),
            Suppression("sender0.example", "manual@example.org", "manual", "manual", NOW - 600),
        ])
        await store.pause_identity("sender1.example", NOW - 100, "hard bounce rate 20% over 10%")
    finally:
        await store.close()


async def snapshot(url: str) -> dict:
    """Everything the protocol reads back, for comparing two stores."""
    store = await store_for_url(url).open(readonly=True)
    try:
        messages = await store.list_messages(MessageFilter(limit=1000))
        inbound = await store.list_inbound(InboundFilter(limit=1000))
        return {
            "messages": messages,
            "stories": {m.id: (await store.get_message(m.id), await store.message_events(m.id),
                               await store.outbox_raw(m.id)) for m in messages},
            "events": await store.list_events(EventFilter(limit=1000)),
            "inbound": inbound,
            "inbound_raw": {r.id: await store.get_inbound(r.id) for r in inbound},
            "suppressions": await store.list_suppressions(SuppressionFilter(limit=None)),
            "suppression_keys": sorted(await store.suppressions_after(0)),
            "paused": await store.paused_identities(),
            "counts": {t: await store.count_rows(t) for t in TABLES},
        }
    finally:
        await store.close()


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")}
    return subprocess.run([str(BIN), *args], env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


async def test_sqlite_to_postgresql_reads_back_equal_and_twice_adds_nothing(tmp_path, pg_url):
    source = f"sqlite:///{tmp_path / 'bounceproxy.db'}"
    await populate(source)
    before = await snapshot(source)
    assert before["counts"]["events"] == 5 + 7 and before["counts"]["inbound"] == 8

    done = cli("copy", "--from", source, "--to", pg_url, "--batch", "10")  # the installed entry point
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [f"{t}: {n} in source, {n} in destination, {n} copied" for t, n in before["counts"].items()]
    after = await snapshot(pg_url)
    for key in before:
        assert after[key] == before[key], key
    assert after["inbound_raw"][after["inbound"][-1].id].raw == DSN + b"0"  # bytes, not text
    assert after["stories"]["msg003"][2] == b"Subject: kept\r\n\r\nbody\r\n"

    again = await copy_store(source, pg_url, batch=7)  # the second time, nothing is added
    assert [(t.table, t.source, t.destination, t.copied) for t in again] == [
        (t, n, n, 0) for t, n in before["counts"].items()]
    assert (await snapshot(pg_url))["counts"] == before["counts"]

    # the destination goes on: new ids come after the copied ones
    dest = await store_for_url(pg_url).open()
    try:
        old_inbound = max(r.id for r in after["inbound"])
        old_event = max(e.event.id for e in after["events"])
        new_id = await dest.store_inbound("192.0.2.9", "", ["bounce+new@bounces.test"], b"Subject: new\r\n\r\nx\r\n")
        assert new_id > old_inbound
        await dest.record_message(MessageRecord(id="fresh", created_at=time.time(), sender="a@sender0.example",
                                                status=MessageStatus.REJECTED,
                                                recipients=[RecipientRecord("x@example.org", RecipientStatus.REJECTED,
                                                                            "550 5.1.1 no")]),
                                  [BounceEvent(at=time.time(), source=Source.SYNC, kind=Kind.BOUNCE,
                                               recipient="x@example.org", bounce_type=BounceType.HARD,
                                               reason="userunknown", relay_id="fresh")])
        await dest.record_inbound_result(new_id, InboundResult(ParseState.PARSED, "1", "bounce", "rfc3464", events=[
            BounceEvent(at=time.time(), source=Source.ASYNC, kind=Kind.BOUNCE, recipient="y@example.org",
                        bounce_type=BounceType.HARD, reason="userunknown", inbound_id=new_id)]))
        new_events = [e.event.id for e in await dest.list_events(EventFilter(since=NOW))]
        assert len(new_events) == 2 and min(new_events) > old_event
        await dest.upsert_suppressions([Suppression("", "x@example.org", "userunknown", "hard", time.time())])
        assert max(seq for *_, seq in await dest.suppressions_after(0)) > max(s for *_, s in before["suppression_keys"])
    finally:
        await dest.close()


async def test_postgresql_back_to_sqlite(tmp_path, pg_url):
    """Either way round: what went to PostgreSQL comes back to a new SQLite file equal."""
    first = f"sqlite:///{tmp_path / 'first.db'}"
    back = f"sqlite:///{tmp_path / 'back.db'}"
    await populate(first)
    await copy_store(first, pg_url, batch=100)
    result = await copy_store(pg_url, back, batch=3)
    assert all(t.complete and t.copied == t.source for t in result)
    assert await snapshot(back) == await snapshot(first)
    store = await store_for_url(back).open()
    try:  # SQLite too issues ids past the copied ones
        assert await store.store_inbound("192.0.2.9", "", ["b@bounces.test"], b"x") > 8
    finally:
        await store.close()


def test_copy_failures_are_one_line(tmp_path):
    missing = cli("copy", "--from", f"sqlite:///{tmp_path / 'none.db'}", "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "none.db" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = cli("copy", "--from", "mysql://x/y", "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert bad.returncode == 1 and "sqlite:///" in bad.stderr and bad.stderr.count("\n") == 1
    usage = cli("copy", "--from", f"sqlite:///{tmp_path / 'x.db'}")
    assert usage.returncode == 2 and "--to" in usage.stderr


def test_copy_to_an_unreachable_postgresql_is_one_line_without_the_password(tmp_path):
    source = tmp_path / "bounceproxy.db"
    assert cli("migrate", "-c", str(_config(tmp_path, f'path = "{source}"'))).returncode == 0
    done = cli("copy", "--from", f"sqlite:///{source}", "--to", "postgresql://bounceproxy@127.0.0.1:1/nothing",
               "--password-env", "MY_PG_PASSWORD", env={"MY_PG_PASSWORD": "hunter2-secret"})
    assert done.returncode == 1 and done.stderr.startswith("bounceproxy: postgresql://bounceproxy@127.0.0.1:1/nothing: ")
    assert done.stderr.count("\n") == 1 and "hunter2" not in done.stderr + done.stdout and "Traceback" not in done.stderr


def _config(tmp_path, store_lines: str):
    path = tmp_path / "config.toml"
    path.write_text(f"[store]\n{store_lines}\n")
    return path


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrate_is_idempotent_on_either_backend(tmp_path, backend, request):
    if backend == "sqlite":
        config = _config(tmp_path, 'path = "log.db"')
    else:
        config = _config(tmp_path, f'backend = "postgresql"\nurl = "{request.getfixturevalue("pg_url")}"')
    first = cli("migrate", "-c", str(config))
    assert first.returncode == 0, first.stderr
    assert "schema version" in first.stdout and "(up to date)" in first.stdout
    second = cli("migrate", "-c", str(config))
    assert second.returncode == 0 and second.stdout == first.stdout
    if backend == "sqlite":
        assert (tmp_path / "log.db").exists()
        # and the read-only commands find it
        listed = cli("messages", "--json", "-c", str(config))
        assert listed.returncode == 0 and listed.stdout == ""


def test_read_commands_on_postgresql_without_a_server_say_so_in_one_line(tmp_path):
    config = _config(tmp_path, 'backend = "postgresql"\nurl = "postgresql://bounceproxy@127.0.0.1:1/log"')
    for args in (["bounces"], ["messages", "show", "x"], ["stats", "--json"], ["migrate"]):
        done = cli(*args, "-c", str(config), env={"BOUNCEPROXY_STORE_PASSWORD": "s3cret-pw"})
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.startswith("bounceproxy: postgresql://bounceproxy@127.0.0.1:1/log: "), done.stderr
        assert done.stderr.count("\n") == 1 and "s3cret" not in done.stderr and "Traceback" not in done.stderr


async def test_a_destination_left_short_is_reported(tmp_path):
    """A destination that ends with fewer rows than the source (here one that drops every other page)
    makes the table incomplete: the CLI exits 1 on that."""
    from proxy.store.copy import copy_tables

    await populate(f"sqlite:///{tmp_path / 'a.db'}")
    source = await store_for_url(f"sqlite:///{tmp_path / 'a.db'}").open(readonly=True)
    destination = await store_for_url(f"sqlite:///{tmp_path / 'b.db'}").open()
    pages = []
    real_insert = destination.insert_rows

    async def lossy(table, rows):
        pages.append(table)
        if len(pages) % 2 == 0:
            return 0
        return await real_insert(table, rows)

    destination.insert_rows = lossy
    try:
        result = {t.table: t for t in await copy_tables(source, destination, batch=4)}
    finally:
        await destination.close()
        await source.close()
    messages = result["messages"]
    assert not messages.complete and messages.destination < messages.source == MESSAGES
    assert messages.line() == (f"messages: {MESSAGES} in source, {messages.destination} in destination, "
                               f"{messages.copied} copied")
