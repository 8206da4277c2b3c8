"""`bounceproxy webhooks list|retry|test`: the outbox as an operator sees and mends it.

proxy/cli.py adds the group (`cli.add_command(webhooks)`); its helpers are imported when a command
runs, so that either module may be imported first.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime

import click

from proxy.cli_options import config_option

STATES = ["pending", "delivered", "dead"]


@click.group("webhooks", invoke_without_command=True)
@click.pass_context
def webhooks(ctx) -> None:
    """The webhooks' outbox: list (default), retry, test."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(webhooks_list)


@webhooks.command("list")
@config_option
@click.option("--state", type=click.Choice(STATES), help="Only entries in this state.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def webhooks_list(config_path=None, state=None, limit=100, as_json=False) -> None:
    """Outbox entries, newest first, and the count in each state."""
    from proxy.cli import _emit, _load, _run, _with_store
    from proxy.webhooks import OUTBOX_COLUMNS, outbox_rows

    config = _load(config_path)

    async def read(store):
        return await outbox_rows(store, state, limit), await store.webhook_counts()

    rows, counts = _run(_with_store(config, read))
    if as_json:
        _emit(rows, OUTBOX_COLUMNS, "json")
        return
    _emit([{**r, "next_at": _when(r["next_at"])} for r in rows], OUTBOX_COLUMNS, "table")
    click.echo("; ".join(f"{s} {counts[s][0]}" for s in STATES if s in counts) or "the outbox is empty")


@webhooks.command("retry")
@config_option
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
def webhooks_retry(config_path, ids) -> None:
    """Send given-up entries again (these IDS, or every dead one), due now, with a fresh count of tries."""
    from proxy.cli import _load, _run, _with_writer

    config = _load(config_path)
    count = _run(_with_writer(config, lambda store: store.retry_webhooks(list(ids) or None)))
    click.echo(f"{count} webhook(s) due again")
    if ids and count < len(ids):
        from proxy.cli import Failure

        raise Failure(f"{len(ids) - count} of the ids are delivered or unknown: nothing to retry")


@webhooks.command("test")
@config_option
@click.argument("url")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
              help="Seconds to wait (default: [webhooks] timeout_seconds).")
def webhooks_test(config_path, url, timeout) -> None:
    """POST one signed sample bounce notification to URL now; exit 1 unless it answers 2xx."""
    import asyncio
    from urllib.parse import urlsplit

    from proxy.cli import Failure, _load
    from proxy.webhooks import webhook_secret
    from proxy.webhooks.dispatcher import new_session, post, safe_url

    config = _load(config_path)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="URL")
    secret = webhook_secret(config)
    key, body = sample(time.time())

    async def send():
        async with new_session(timeout or config.webhooks.timeout_seconds, 1) as session:
            return await post(session, url, body, key, secret)

    status, error = asyncio.run(send())
    click.echo(f"{safe_url(url)}: {f'HTTP {status}' if status is not None else error} (event id {key})")
    if error:
        raise Failure(f"the receiver did not accept the sample: {error}")


def sample(now: float) -> tuple[str, bytes]:
    """A bounce from SES's mailbox simulator, as a real entry would be told (its own event id)."""
    import secrets

    from proxy.model import (
        BounceEvent, BounceType, Correlation, Kind, MessageRecord, NotificationType, OutboxEntry, RecipientRecord,
        RecipientStatus, Source,
    )
    from proxy.webhooks import body

    key = f"test-{secrets.token_hex(8)}"
    recipient = "bounce@simulator.amazonses.com"
    message = MessageRecord(id="test", created_at=now, sender="sender@example.com", header_from="sender@example.com",
                            message_id="<test@bounceproxy.invalid>", subject="bounceproxy webhooks test",
                            recipients=[RecipientRecord(recipient, RecipientStatus.ACCEPTED)])
    event = BounceEvent(at=now, source=Source.ASYNC, kind=Kind.BOUNCE, recipient=recipient,
                        bounce_type=BounceType.HARD, reason="userunknown", status="5.1.1", smtp_code=550,
                        diagnostic="smtp; 550 5.1.1 user unknown", correlation=Correlation.VERP, relay_id="test")
    entry = OutboxEntry(id=0, key=key, url="", type=NotificationType.BOUNCE, address=recipient, created_at=now,
                        state="pending", relay_id="test")
    return key, body(entry, event, message)


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") + (" (due)" if ts <= time.time() else "")


__all__ = ["webhooks", "sample"]
