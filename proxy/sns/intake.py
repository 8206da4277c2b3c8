"""POST [sns] path: SNS delivers SES's notifications here; each one is verified, then recorded once.

Every request is hostile until proven SNS's: its topic must be configured, its timestamp fresh, its
certificate URL on SNS's own hosts and its signature good, in that order, so that a forgery costs
no outbound request at all. Only then is a subscription confirmed (a GET of a SubscribeURL that
must itself be on SNS's hosts: no request ever goes elsewhere) or a notification recorded.

Answers: 200 recorded, replayed or ignored; 400 a body that is not an SNS message; 401 basic auth
missing or wrong; 403 not authentic; 413 too large; 502/503 something SNS should retry.
Every error is `{"error": "..."}` in words of our own, never an exception's text.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509

from proxy.config import Config, ConfigError
from proxy.inbound.correlate import Match
from proxy.model import BounceEvent, Correlation, MessageRecord
from proxy.sns.ses import SesNotice, read_notice
from proxy.sns.verify import (
    SUBSCRIBE, UNSUBSCRIBE, Refused, SnsMessage, certificate_key, check_cert_url, check_fresh,
    check_signature, check_topic, parse_certificate, read_message, signature_scheme,
)
from proxy.store import StoreError

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # SNS messages are at most 256 KB, escaped once more in the envelope
MAX_CERT = 64 * 1024
CERT_CACHE = 32  # certificates kept, by URL: SNS uses a handful at a time
HTTP_TIMEOUT = 10.0

# (url, most bytes to read) -> (HTTP status, body); raises OSError, aiohttp.ClientError or TimeoutError
HttpGet = Callable[[str, int], Awaitable[tuple[int, bytes]]]
OnEvents = Callable[[list[BounceEvent]], Any]


class Unavailable(Exception):
    """Something SNS should retry (a certificate host or the bounce log unreachable): 5xx."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def aiohttp_get(url: str, limit: int) -> tuple[int, bytes]:
    """One GET with a timeout, no redirect followed, no proxy from the environment, at most `limit` bytes."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url, allow_redirects=False) as response:
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise aiohttp.ClientPayloadError(f"more than {limit} bytes")
            return response.status, bytes(body)


class SnsIntake:
    """The handler and what it keeps between requests (the certificate cache)."""

    def __init__(self, config: Config, store, *, http_get: HttpGet | None = None,
                 on_events: OnEvents | None = None, clock: Callable[[], float] = time.time):
        sns = config.sns
        self.store = store
        self.topics = frozenset(sns.topic_arns)
        self.cert_url = re.compile(sns.cert_url_pattern)
        self.subscribe_url = re.compile(sns.subscribe_url_pattern)
        self.max_age = sns.max_age_seconds
        self.credentials = basic_auth_credentials(config)
        self.http_get = http_get or aiohttp_get
        self.on_events = on_events
        self.clock = clock
        self.certs: OrderedDict[str, x509.Certificate] = OrderedDict()

    async def handle(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _error(401, "this endpoint needs HTTP basic auth (user:password in the subscription URL)",
                          {"WWW-Authenticate": 'Basic realm="bounceproxy-sns"'})
        try:
            msg = await self.authentic_message(request)
            if msg.type == SUBSCRIBE:
                return await self.confirm(msg)
            if msg.type == UNSUBSCRIBE:
                log.info("sns: unsubscribed topic=%s message_id=%s", msg.topic_arn, msg.message_id)
                return web.json_response({"unsubscribed": True})
            return await self.record(msg)
        except Refused as exc:
            log.warning("sns: refused a request from %s: %s", request.remote, exc.reason)
            return _error(exc.status, exc.reason)
        except Unavailable as exc:
            log.error("sns: %s", exc.reason)
            return _error(exc.status, exc.reason)

    # -- the steps ---------------------------------------------------------------------------------
    def authorized(self, request: web.Request) -> bool:
        """Basic auth when [sns] basic_auth_env names credentials; compared in constant time."""
        if self.credentials is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(given.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        return hmac.compare_digest(decoded, self.credentials) and scheme.lower() == "basic"

    async def authentic_message(self, request: web.Request) -> SnsMessage:
        """The request's SNS message once every check holds; cheap checks before any fetch."""
        msg = read_message(_json(await _body(request)))
        announced = request.headers.get("x-amz-sns-message-type")
        if announced is not None and announced != msg.type:
            raise Refused(400, "x-amz-sns-message-type does not match Type")
        check_topic(msg, self.topics)
        check_fresh(msg, self.clock(), self.max_age)
        signature_scheme(msg)
        check_cert_url(msg, self.cert_url)
        cert = await self.certificate(msg.signing_cert_url)
        check_signature(msg, certificate_key(cert, self.clock()))
        return msg

    async def certificate(self, url: str) -> x509.Certificate:
        """The certificate at an already checked URL, from the bounded cache or fetched once."""
        cert = self.certs.get(url)
        if cert is not None:
            self.certs.move_to_end(url)
            return cert
        status, body = await self.fetch(url, MAX_CERT, "the signing certificate")
        if status >= 500:
            raise Unavailable(503, f"the signing certificate URL answered HTTP {status}")
        if status != 200:
            raise Refused(403, f"the signing certificate URL answered HTTP {status}")
        cert = parse_certificate(body)
        self.certs[url] = cert
        while len(self.certs) > CERT_CACHE:
            self.certs.popitem(last=False)
        return cert

    async def confirm(self, msg: SnsMessage) -> web.Response:
        """Visit the SubscribeURL of a verified confirmation, when it is on SNS's own hosts."""
        url = msg.subscribe_url or ""
        if not self.subscribe_url.fullmatch(url):
            raise Refused(403, "SubscribeURL is not an SNS confirmation URL (see [sns] subscribe_url_pattern)")
        status, _ = await self.fetch(url, MAX_BODY, "the subscription confirmation")
        if status != 200:
            raise Unavailable(502, f"SNS answered HTTP {status} to the subscription confirmation")
        log.info("sns: subscription confirmed topic=%s message_id=%s", msg.topic_arn, msg.message_id)
        return web.json_response({"confirmed": True})

    async def record(self, msg: SnsMessage) -> web.Response:
        """Record a verified notification's events once, then hand them to on_events."""
        notice = read_notice(msg.message, self.clock())
        if notice is None or not notice.events:
            what = notice.event_type if notice else "not an SES notification"
            log.info("sns: acknowledged, nothing to record (%s) message_id=%s", what, msg.message_id)
            return web.json_response({"recorded": 0})
        keys = [f"sns:{msg.message_id}"] + [f"ses:{f}" for f in notice.feedback_ids]
        try:
            events = await correlate(self.store, notice)
            recorded = await self.store.record_notification(keys, events)
        except StoreError as exc:
            log.error("sns: recording message_id=%s failed: %s", msg.message_id, exc)
            raise Unavailable(503, "the bounce log is unavailable") from None
        log.info("sns: %s message_id=%s upstream_id=%s events=%d %s", notice.event_type, msg.message_id,
                 notice.upstream_id, len(events), "recorded" if recorded else "replay: nothing added")
        if recorded:
            await self.hand_over(events)
        return web.json_response({"recorded": len(events) if recorded else 0, "replay": not recorded})

    async def hand_over(self, events: list[BounceEvent]) -> None:
        """on_events (the suppressor's `consider`) sees committed events; its failure is logged, since
        the events are recorded and SNS must not send them again."""
        if self.on_events is None:
            return
        try:
            result = self.on_events(events)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged; the answer to SNS stays 200
            log.exception("sns: on_events failed")

    async def fetch(self, url: str, limit: int, what: str) -> tuple[int, bytes]:
        try:
            return await self.http_get(url, limit)
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            log.error("sns: fetching %s failed: %s", what, type(exc).__name__)
            raise Unavailable(503, f"{what} could not be fetched") from None


async def correlate(store, notice: SesNotice) -> list[BounceEvent]:
    """Tie the events to the message SES names: its own id (our upstream_id), else the Message-ID
    header. The message vouches only for its accepted recipients; anyone else is foreign."""
    message, correlation = await find_message(store, notice)
    if message is None:
        return notice.events
    match = Match.identified(correlation, message)  # the bounce MX's own trust rule
    for event in notice.events:
        event.relay_id = message.id
        event.correlation = correlation if match.vouches_for(event.recipient) else Correlation.FOREIGN_RECIPIENT
    return notice.events


async def find_message(store, notice: SesNotice) -> tuple[MessageRecord | None, Correlation]:
    if notice.upstream_id:
        message = await store.find_message_by_upstream_id(notice.upstream_id)
        if message is not None:
            return message, Correlation.UPSTREAM_ID
    if notice.header_message_id:
        message = await store.find_message_by_message_id(notice.header_message_id)
        if message is not None:
            return message, Correlation.MESSAGE_ID
    return None, Correlation.NONE


def basic_auth_credentials(config: Config) -> bytes | None:
    """`user:password` from the environment variable [sns] basic_auth_env names, or None when it names none."""
    env = config.sns.basic_auth_env
    if not env:
        return None
    value = (config.secret(env) or "").strip()
    if ":" not in value:
        raise ConfigError(f"{config.source}: [sns] basic_auth_env names {env}, which must hold user:password")
    return value.encode("utf-8")


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Refused(413, "the body is larger than 1 MiB")
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refused(413, "the body is larger than 1 MiB")
    return bytes(body)


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Refused(400, "the body is not JSON") from None


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def sns_routes(config: Config, store, *, http_get: HttpGet | None = None,
               on_events: OnEvents | None = None) -> list[web.RouteDef]:
    """The routes to mount on the API's application: none when [sns] enabled is false."""
    if not config.sns.enabled:
        return []
    intake = SnsIntake(config, store, http_get=http_get, on_events=on_events)
    return [web.post(config.sns.path, intake.handle)]
