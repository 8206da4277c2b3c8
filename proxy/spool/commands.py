"""`bounceproxy queue list|show|retry|delete|hold|release`: the spool as an operator sees and mends it.

proxy/cli.py adds the group (`cli.add_command(queue)`); its helpers are imported when a command runs, so that
either module may be imported first. Changes are safe beside a running server: each is one transaction, and a
message a worker holds keeps going (hold and delete take effect from its next attempt).
"""
from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import click

from proxy.cli_options import config_option

COLUMNS = ["relay_id", "state", "age", "attempts", "next_at", "sender", "pending", "last_error"]


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") + (" (due)" if ts <= time.time() else "")


def _stamp(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _row(entry, now: float) -> dict:
    return {"relay_id": entry.relay_id, "state": entry.state.value, "age": f"{(now - entry.created_at) / 60:.1f}m",
            "attempts": entry.attempts, "next_at": entry.next_at, "sender": entry.sender,
            "pending": [r.address for r in entry.pending], "last_error": entry.held_reason or entry.last_error,
            "created_at": entry.created_at, "expires_at": entry.expires_at, "size": entry.size,
            "lease_owner": entry.lease_owner if entry.lease_until and entry.lease_until >= now else None}


@click.group("queue", invoke_without_command=True)
@click.pass_context
def queue(ctx) -> None:
    """The spool (spool mode): list (default), show, retry, delete, hold, release."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(queue_list)


@queue.command("list")
@config_option
@click.option("--state", type=click.Choice(["queued", "held"]), help="Only messages in this state.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def queue_list(config_path=None, state=None, limit=100, as_json=False) -> None:
    """Spooled messages, oldest first, and the spool's depth and age."""
    from proxy.cli import _emit, _load, _run, _with_store
    from proxy.spool import queue_summary

    config = _load(config_path)

    async def read(store):
        return await store.list_spool(state, limit), await queue_summary(store)

    entries, summary = _run(_with_store(config, read))
    now = time.time()
    rows = [_row(e, now) for e in entries]
    if as_json:
        _emit(rows, COLUMNS + ["created_at", "expires_at", "size", "lease_owner"], "json")
        return
    _emit([{**r, "next_at": _when(r["next_at"])} for r in rows], COLUMNS, "table")
    age = summary["oldest_age_seconds"]
    click.echo(f"queued {summary['queued']}, held {summary['held']}, recipients pending {summary['recipients']}, "
               f"due {summary['due']}, in flight {summary['in_flight']}"
               + (f", oldest {age / 60:.1f} minutes" if age is not None else ""))


@queue.command("show")
@config_option
@click.argument("relay_id")
@click.option("--raw", is_flag=True, help="Write the message as it goes upstream (prepended lines included).")
@click.option("--json", "as_json", is_flag=True)
def queue_show(config_path, relay_id, raw=False, as_json=False) -> None:
    """One spooled message: envelope, each recipient's state and last reply, attempts, lease, hold."""
    from proxy.cli import Failure, _emit, _load, _run, _with_store

    config = _load(config_path)
    entry = _run(_with_store(config, lambda store: store.get_spool(relay_id)))
    if entry is None:
        raise Failure(f"{relay_id}: not in the spool (`bounceproxy messages show {relay_id}` tells what became of it)")
    if raw:
        sys.stdout.buffer.write(entry.body or b"")
        return
    now = time.time()
    row = _row(entry, now)
    row["recipients"] = [f"{r.address} {r.state.value} attempts={r.attempts} {r.last_reply or ''}".strip()
                         for r in entry.recipients]
    if as_json:
        _emit([row], list(row), "json")
        return
    for key in ("relay_id", "state", "sender", "created_at", "expires_at", "attempts", "next_at", "size",
                "lease_owner", "last_error"):
        value = (_when(row[key]) if key == "next_at" else _stamp(row[key]) if key in ("created_at", "expires_at")
                 else row[key])
        click.echo(f"{key:12} {value if value is not None else '-'}")
    for line in row["recipients"]:
        click.echo(f"recipient    {line}")


def _act(action: str, ids, everything: bool, why: str = "") -> None:
    from proxy.cli import Failure, _load, _run, _with_writer

    if not ids and not everything:
        raise click.UsageError("name message ids, or --all")
    config = _load(_act.config_path)
    count = _run(_with_writer(config, lambda store: store.spool_control(action, list(ids) or None, why)))
    click.echo(f"{count} message(s) {dict(retry='due now', hold='held', release='released', delete='deleted')[action]}")
    if ids and count < len(ids):
        raise Failure(f"{len(ids) - count} of the ids are not in the spool in a state this applies to")


def _action(name: str, doc: str, all_ok: bool = True):
    @queue.command(name, help=doc)
    @config_option
    @click.argument("ids", nargs=-1)
    @click.option("--all", "everything", is_flag=True, hidden=not all_ok, help="Every message this applies to.")
    def command(config_path, ids, everything=False) -> None:
        if everything and not all_ok:
            raise click.UsageError(f"{name} needs message ids")
        _act.config_path = config_path
        _act(name, ids, everything, "held by the operator" if name == "hold" else
             "deleted by the operator" if name == "delete" else "")
    return command


queue_retry = _action("retry", "Queued messages (IDS, or --all) due now, without waiting for their backoff.")
queue_hold = _action("hold", "Keep queued messages (IDS, or --all) back until `queue release`.")
queue_release = _action("release", "Queue held messages (IDS, or --all) again, due now.")
queue_delete = _action("delete", "Remove messages (IDS) from the spool: their pending recipients are never sent "
                       "(recorded on the message as deleted, no bounce).", all_ok=False)

__all__ = ["queue"]
