"""Webhooks: signed POSTs telling an application of bounces, complaints, delays, send failures and
suppression changes, from the store's durable outbox (README, Webhooks).

The store queues an outbox row in the transaction of what it tells, for each `[webhooks]` URL that
wants it (`store.webhook_targets`); `WebhookDispatcher` sends them. So nothing the log accepted is
lost to a crash, and nothing a receiver does can slow the relay or the bounce MX.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from proxy.errors import ConfigError
from proxy.webhooks.dispatcher import WebhookDispatcher, safe_url
from proxy.webhooks.payload import EVENT_TYPES, PayloadError, body, notification
from proxy.webhooks.signature import HEADER, sign, verify

__all__ = ["WebhookDispatcher", "start_webhooks", "webhook_secret", "body", "notification", "sign", "verify",
           "HEADER", "EVENT_TYPES", "PayloadError", "safe_url", "outbox_rows", "OUTBOX_COLUMNS"]


def webhook_secret(config, environ: Mapping[str, str] | None = None) -> bytes:
    """The signing secret from the environment variable `[webhooks] secret_env` names, or ConfigError
    naming that variable: unsigned notifications are never sent."""
    hooks = config.webhooks
    value = (os.environ if environ is None else environ).get(hooks.secret_env, "") if hooks.secret_env else ""
    if not value:
        raise ConfigError(f"{config.source}: [webhooks] urls are set but the environment variable "
                          f"{hooks.secret_env or '(none: set [webhooks] secret_env)'} holding the signing secret is "
                          "unset or empty")
    return value.encode()


async def start_webhooks(config, store, dispatch: bool = True) -> WebhookDispatcher | None:
    """Queue what `[webhooks]` wants with every later write of `store` and, with `dispatch`, start
    sending; None when no URL is configured. Refuses (ConfigError) without the secret."""
    hooks = config.webhooks
    if not hooks.urls:
        return None
    secret = webhook_secret(config)
    store.webhook_targets = hooks.targets()
    if not dispatch:
        return None
    dispatcher = WebhookDispatcher(hooks, store, secret)
    store.on_queued = dispatcher.notify  # what this process queues is sent at once, not at the next poll
    await dispatcher.start()
    return dispatcher


# -- what `webhooks list` (and the API) show ----------------------------------------------------------
OUTBOX_COLUMNS = ["id", "state", "type", "address", "attempts", "next_at", "url", "key", "last_error"]


async def outbox_rows(store, state: str | None = None, limit: int = 100) -> list[dict]:
    """Outbox entries, newest first, as plain rows (times as unix seconds)."""
    rows = []
    for entry in await store.list_webhooks(state, limit):
        row = dataclasses.asdict(entry)
        row["type"] = entry.type.value
        if entry.state != "pending":
            row["next_at"] = None
        rows.append(row)
    return rows
