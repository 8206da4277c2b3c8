"""The HTTP side: JSON API under /api/ (same data and filters as the CLI), the dashboard at /,
Prometheus text at /metrics and /healthz.

Every error is a JSON object `{"error": "..."}` with the right status (400 naming the parameter,
401, 403, 404, 405, 413, 415, 500): never a traceback. Beyond loopback every request but /healthz and
the dashboard's page and static files (which hold no data; its script asks for the token) needs
`Authorization: Bearer <token>`, the token read from the environment variable `[api] token_env`.
Routes are declared once (proxy.api.spec): their parameter checks and /api/openapi.json read the
same declarations.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import time
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from proxy.api.dashboard import CSP as DASHBOARD_CSP
from proxy.api.dashboard import PAGE as DASHBOARD_PAGE
from proxy.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.api.metrics import LiveMetrics, MetricsCollector
from proxy.api.spec import JSON, Body, Param, Route, openapi, page_of, ref
from proxy.config import Config, ConfigError
from proxy import queries
from proxy.model import REASONS, BounceType, Correlation, Kind, MessageStatus, ParseState, Source
from proxy.queries import iso
from proxy.store import EventFilter, InboundFilter, MessageFilter, StoreError, SuppressionFilter, parse_since

log = logging.getLogger(__name__)

STORE = web.AppKey("store", object)
METRICS = web.AppKey("metrics", MetricsCollector)
HEALTH = web.AppKey("health", object)  # () -> None when healthy, else the reason (proxy.app.Service._health)
CONFIG = web.AppKey("config", Config)
SPEC = web.AppKey("openapi", dict)
# request key: the answer's headers are sent (RequestKey since aiohttp 3.12; a plain string before)
STREAMING = web.RequestKey("streaming", bool) if hasattr(web, "RequestKey") else "bounceproxy.streaming"

STATIC = Path(__file__).with_name("static")
MAX_LIMIT = 1_000_000
DEFAULT_LIMIT = 100
MAX_ADD = 10_000  # addresses in one POST /api/suppressions
MAX_IMPORT_BYTES = 64 * 1024 * 1024  # a CSV import (about two million addresses)
MAX_BUCKETS = 2000
# Paths answered without a token beyond loopback: liveness, and the dashboard's page and static files (no data).
PUBLIC_PATHS = frozenset({"/healthz", "/"})
PUBLIC_PREFIXES = ("/static/",)

BOUNCE_TYPES = [t.value for t in BounceType]
SOURCES = [s.value for s in Source]
KINDS = [k.value for k in Kind]
CORRELATIONS = [c.value for c in Correlation]
MESSAGE_STATUSES = [s.value for s in MessageStatus]
PARSE_STATES = [s.value for s in ParseState]
WEBHOOK_STATES = ["pending", "delivered", "dead"]
_DIGITS = re.compile(r"^[0-9]+$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_BUCKET = re.compile(r"^(\d{1,7})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _dumps(data) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


def _json(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def _short(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[:size] + "…"


# -- query parameters ---------------------------------------------------------------------------
def _params(request: web.Request, known: tuple[str, ...]) -> dict[str, str | None]:
    """The query string as {name: value or None}; unknown or repeated parameters are a 400.
    An empty value (`recipient=`) means the filter is not set."""
    query = request.query
    for key in query.keys():
        if key not in known:
            raise ApiError(400, f"unknown parameter {_short(key)!r} (known: {', '.join(known) or 'none'})")
        if len(query.getall(key)) > 1:
            raise ApiError(400, f"{key}: given more than once")
    return {k: (query.get(k) or "").strip() or None for k in known}


def _since(value: str | None, name: str = "since") -> float | None:
    if value is None:
        return None
    try:
        since = parse_since(value)
        iso(since)  # representable as a date (the summary prints it)
        return since
    except (ValueError, OverflowError, OSError):
        raise ApiError(400, f"{name}: {_short(value)!r} is not a duration like 30m, 1h, 7d or an ISO date") from None


def _choice(name: str, value: str | None, choices) -> str | None:
    if value is not None and value not in choices:
        listed = ", ".join(sorted(choices)) if len(choices) <= 12 else "see the documentation"
        raise ApiError(400, f"{name}: {_short(value)!r} is not one of {listed}")
    return value


def _flag(name: str, value: str | None) -> bool:
    return _choice(name, value, ("true", "false")) == "true"


def _limit(value: str | None, default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT) -> int:
    if value is None:
        return default
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= most:
        raise ApiError(400, f"limit: {_short(value)!r} is not an integer from 1 to {most}")
    return int(value)


def _cursor(kind: str, value: str | None):
    if value is None:
        return None
    try:
        return queries.decode_cursor(kind, value)
    except queries.QueryError as exc:
        raise ApiError(400, str(exc)) from None


def _int_id(value: str) -> int:
    if not _DIGITS.fullmatch(value) or len(value) > 18:
        raise ApiError(400, f"id: {_short(value)!r} is not an inbound mail id (an integer)")
    return int(value)


def _address(name: str, value, normalize=True) -> str:
    from proxy.suppression import normalize_address

    if not isinstance(value, str) or not value.strip() or len(value) > 320:
        raise ApiError(400, f"{name}: expected an email address (a string up to 320 characters)")
    address = normalize_address(value) if normalize else value.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() or ord(c) < 32 for c in address):
        raise ApiError(400, f"{name}: {_short(value)!r} is not an email address")
    return address


def _scope(request: web.Request, value: str | None) -> str:
    """`sender_domain` -> the suppression list's scope ('' for the one global list)."""
    if value is None:
        return ""
    if request.app[CONFIG].suppression.scope != "sender_domain":
        raise ApiError(400, 'sender_domain: needs [suppression] scope = "sender_domain" (this list is global)')
    domain = value.lower().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    if not _DOMAIN.fullmatch(domain):
        raise ApiError(400, f"sender_domain: {_short(value)!r} is not a domain")
    return domain


# -- the routes ---------------------------------------------------------------------------------
ROUTES: list[Route] = []
_ERR = (JSON, ref("Error"))


def route(method: str, path: str, summary: str, tag: str, params: tuple[Param, ...] = (), body: Body | None = None,
          responses: dict | None = None, checked: bool = True):
    """Declare a route: its handler gets the request and its checked query parameters (unchecked: the
    dashboard's page, whose own script reads the query string)."""
    def register(fn):
        declared = Route(method, path, fn, summary, tag, params, body, responses or {})

        async def handler(request: web.Request) -> web.StreamResponse:
            return await fn(request, _params(request, declared.query) if checked else {})

        handler.__name__ = fn.__name__
        ROUTES.append(Route(method, path, handler, summary, tag, params, body, responses or {}))
        return fn
    return register


# parameters shared by several routes
P_SINCE = Param("since", "Only what is newer: a duration (30m, 1h, 7d) or an ISO date/time (UTC unless it says).")
P_LIMIT = Param("limit", f"At most this many rows (1 to {MAX_LIMIT}; default {DEFAULT_LIMIT}).",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT})
P_CURSOR = Param("cursor", "Continue a list: the `next_cursor` of its page before (opaque).")
P_SENDER_DOMAIN = Param("sender_domain", "This sender domain's list ([suppression] scope = sender_domain); "
                                         "default: the global list.")


def _enum(values, doc: str) -> dict:
    return {"type": "string", "enum": sorted(values), "description": doc}


@route("GET", "/healthz", "Liveness: 200 ok, or 503 degraded with the reason", "service",
       responses={200: ("Healthy", JSON, {"type": "object"}), 503: ("Degraded: the reason", JSON, {"type": "object"})})
async def healthz(request: web.Request, p) -> web.Response:
    """200 ok, or 503 degraded with the reason while the upstream is down or the bounce log refuses writes:
    the relay is up but answers 451 (Docker's HEALTHCHECK and load balancers read the status code)."""
    check = request.app.get(HEALTH)
    reason = check() if check is not None else None
    if reason:
        return _json({"status": "degraded", "reason": reason}, 503)
    return _json({"status": "ok"})


@route("GET", "/api/bounces", "Bounces, complaints, delays and auto-replies, newest first (`bounceproxy bounces`)",
       "log", (P_SINCE, Param("recipient", "This recipient (any case)."),
               Param("type", "Bounce type.", _enum(BOUNCE_TYPES, "")),
               Param("reason", "Reason (Sisimai's vocabulary).", _enum(REASONS, "")),
               Param("source", "Where the event came from.", _enum(SOURCES, "")),
               Param("kind", "Kind of event.", _enum(KINDS, "")),
               Param("correlation", "The evidence that tied it to its message.", _enum(CORRELATIONS, "")),
               Param("message", "This message's events (its relay_id)."), P_LIMIT, P_CURSOR,
               Param("format", "`ses`: each bounce and complaint as the JSON notification SES would publish "
                               "(a page may then hold fewer than `limit`).", _enum(["json", "ses"], ""))),
       responses={200: ("A page of events (or `notifications` with format=ses)", JSON, {"oneOf": [
           page_of("Event", "events"), page_of("SesNotification", "notifications")]})})
async def bounces(request: web.Request, p) -> web.Response:
    flt = EventFilter(
        since=_since(p["since"]), recipient=p["recipient"],
        bounce_type=_choice("type", p["type"], BOUNCE_TYPES), reason=_choice("reason", p["reason"], REASONS),
        source=_choice("source", p["source"], SOURCES), kind=_choice("kind", p["kind"], KINDS),
        correlation=_choice("correlation", p["correlation"], CORRELATIONS), relay_id=p["message"],
        limit=_limit(p["limit"]), before=_cursor("events", p["cursor"]),
    )
    if _choice("format", p["format"], ("json", "ses")) == "ses":
        rows, cursor = await queries.ses_notifications_page(request.app[STORE], flt)
        return _json({"notifications": rows, "next_cursor": cursor})
    rows, cursor = await queries.events_page(request.app[STORE], flt)
    return _json({"events": rows, "next_cursor": cursor})


@route("GET", "/api/messages", "Relayed messages, newest first (`bounceproxy messages`)", "log",
       (P_SINCE, Param("recipient", "Sent to this address (any case)."),
        Param("status", "Final status.", _enum(MESSAGE_STATUSES, "")), Param("sender", "Envelope sender (any case)."),
        Param("duplicates", "`true`: only messages that may have reached someone twice.", _enum(["true", "false"], "")),
        P_LIMIT, P_CURSOR),
       responses={200: ("A page of messages", JSON, page_of("Message", "messages"))})
async def messages(request: web.Request, p) -> web.Response:
    flt = MessageFilter(
        since=_since(p["since"]), recipient=p["recipient"], status=_choice("status", p["status"], MESSAGE_STATUSES),
        sender=p["sender"], limit=_limit(p["limit"]), duplicates=_flag("duplicates", p["duplicates"]),
        before=_cursor("messages", p["cursor"]),
    )
    rows, cursor = await queries.messages_page(request.app[STORE], flt)
    return _json({"messages": rows, "next_cursor": cursor})


P_ID = Param("id", "The relay's id of the message (relay_id).", where="path")


@route("GET", "/api/messages/{id}", "One message's story: recipients, replies, every DSN and complaint since",
       "log", (P_ID,), responses={200: ("The story", JSON, ref("MessageStory")), 404: ("No such message", *_ERR)})
async def message_show(request: web.Request, p) -> web.Response:
    story = await queries.message_story(request.app[STORE], request.match_info["id"])
    story.pop("raw_kept", None)
    return _json(story)


@route("GET", "/api/messages/{id}/raw", "The message's bytes (kept by the simulator only)", "log", (P_ID,),
       responses={200: ("The message", "message/rfc822", None), 404: ("Not kept, or no such message", *_ERR)})
async def message_raw(request: web.Request, p) -> web.Response:
    relay_id = request.match_info["id"]
    return _raw(await queries.message_raw(request.app[STORE], relay_id), f"message-{relay_id}.eml")


@route("GET", "/api/stats", "Bounce and complaint rates, per sending identity too (`bounceproxy stats --json`)",
       "log", (Param("since", "The window: a duration or an ISO date (default 24h)."),),
       responses={200: ("The summary", JSON, ref("Stats"))})
async def stats(request: web.Request, p) -> web.Response:
    return _json(await queries.stats_summary(request.app[STORE], _since(p["since"] or "24h")))


@route("GET", "/api/activity", "Counts and rates per time bucket, with SES's review and pause lines (the charts)",
       "log", (Param("since", "The window: a duration or an ISO date (default 24h)."),
               Param("bucket", f"Bucket size: 1 to 9999999 of s, m, h or d, at least 60 s (default 1h); at most "
                               f"{MAX_BUCKETS} buckets in the window.", {"type": "string", "default": "1h"})),
       responses={200: ("Buckets, oldest first, empty ones included", JSON, ref("Activity"))})
async def activity(request: web.Request, p) -> web.Response:
    since = _since(p["since"] or "24h")
    bucket = p["bucket"] or "1h"
    m = _BUCKET.fullmatch(bucket)
    seconds = int(m.group(1)) * _UNITS[m.group(2)] if m else 0
    if seconds < 60:
        raise ApiError(400, f"bucket: {_short(bucket)!r} is not a duration of at least 60s, like 5m, 1h or 1d")
    if (time.time() - since) / seconds > MAX_BUCKETS:
        raise ApiError(400, f"bucket: {bucket} makes more than {MAX_BUCKETS} buckets since {iso(since)}; take a larger one")
    return _json(await queries.activity(request.app[STORE], since, seconds))


@route("GET", "/api/inbound", "What the bounce MX received, newest first (`bounceproxy inbound`)", "log",
       (Param("state", "Parse state (`failed`: parse failures to look at).", _enum(PARSE_STATES, "")), P_SINCE,
        P_LIMIT, Param("flagged", "`true`: only mails that named addresses their message never went to "
                                  "(foreign recipients) or that a parse limit cut.", _enum(["true", "false"], "")),
        P_CURSOR),
       responses={200: ("A page of inbound mails (never their bytes)", JSON, page_of("Inbound", "inbound"))})
async def inbound(request: web.Request, p) -> web.Response:
    flt = InboundFilter(state=_choice("state", p["state"], PARSE_STATES), since=_since(p["since"]),
                        limit=_limit(p["limit"]), flagged=_flag("flagged", p["flagged"]),
                        before=_cursor("inbound", p["cursor"]))
    rows, cursor = await queries.inbound_page(request.app[STORE], flt)
    return _json({"inbound": rows, "next_cursor": cursor})


@route("GET", "/api/inbound/{id}/raw", "An inbound mail's bytes as received", "log",
       (Param("id", "The inbound mail's id (an integer).", {"type": "integer"}, where="path"),),
       responses={200: ("The mail", "message/rfc822", None), 404: ("No such mail", *_ERR)})
async def inbound_raw(request: web.Request, p) -> web.Response:
    inbound_id = _int_id(request.match_info["id"])
    return _raw(await queries.inbound_raw(request.app[STORE], inbound_id), f"inbound-{inbound_id}.eml")


def _raw(raw: bytes, filename: str) -> web.Response:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return web.Response(body=bytes(raw), headers={
        "Content-Type": "message/rfc822", "Content-Disposition": f'attachment; filename="{safe}"',
    })


# -- the suppression list -----------------------------------------------------------------------
@route("GET", "/api/suppressions", "The suppression list, newest first (`bounceproxy suppressions list`)",
       "suppressions", (Param("address", "Only this address."), Param("search", "Addresses containing this text."),
                        Param("sender_domain", "Only this sender domain's list; default: every list."),
                        P_LIMIT, P_CURSOR),
       responses={200: ("A page of suppressions", JSON, page_of("Suppression", "suppressions"))})
async def suppressions(request: web.Request, p) -> web.Response:
    search = p["search"]
    if search is not None and len(search) > 320:
        raise ApiError(400, "search: longer than 320 characters")
    flt = SuppressionFilter(address=_address("address", p["address"]) if p["address"] else None,
                            scope=_scope(request, p["sender_domain"]) if p["sender_domain"] else None,
                            search=search, limit=_limit(p["limit"]), before=_cursor("suppressions", p["cursor"]))
    rows, cursor = await queries.suppressions_page(request.app[STORE], flt)
    return _json({"suppressions": rows, "next_cursor": cursor})


async def _json_body(request: web.Request) -> dict:
    if request.content_type != JSON:
        raise ApiError(415, f"body: send Content-Type: {JSON}")
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body: not a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body: not a JSON object")
    return data


@route("POST", "/api/suppressions", "Suppress addresses by hand (`bounceproxy suppressions add`)", "suppressions",
       body=Body(JSON, ref("SuppressionsAdd"), "`addresses` (or one `address`), optional `reason`, `days`, "
                                               "`sender_domain`"),
       responses={201: ("Added (or updated)", JSON, {"type": "object", "properties": {
           "added": {"type": "integer"}, "addresses": {"type": "array", "items": {"type": "string"}},
           "scope": {"type": "string"}}}), 415: ("Not JSON", *_ERR)})
async def suppressions_add(request: web.Request, p) -> web.Response:
    data = await _json_body(request)
    known = ("addresses", "address", "reason", "days", "sender_domain")
    for key in data:
        if key not in known:
            raise ApiError(400, f"unknown field {_short(str(key))!r} (known: {', '.join(known)})")
    if ("addresses" in data) == ("address" in data):
        raise ApiError(400, "addresses: give `addresses` (a list) or `address` (one), not both or neither")
    given = data["addresses"] if "addresses" in data else [data["address"]]
    name = "addresses" if "addresses" in data else "address"
    if not isinstance(given, list) or not 1 <= len(given) <= MAX_ADD:
        raise ApiError(400, f"addresses: expected a list of 1 to {MAX_ADD} addresses")
    addresses = [_address(name, a) for a in given]
    reason = data.get("reason", "manual")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
        raise ApiError(400, "reason: expected a word or a short text (up to 200 characters)")
    days = data.get("days", 0)
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days) or not 0 <= days <= 36500:
        raise ApiError(400, "days: expected a number of days from 0 (never expires) to 36500")
    sender_domain = data.get("sender_domain")
    if sender_domain is not None and not isinstance(sender_domain, str):
        raise ApiError(400, "sender_domain: expected a domain")
    scope = _scope(request, sender_domain.strip() or None if sender_domain else None)
    count = await queries.add_suppressions(request.app[STORE], scope, addresses, reason.strip(), float(days))
    return _json({"added": count, "addresses": addresses, "scope": scope}, 201)


@route("DELETE", "/api/suppressions/{address}", "Take an address off the list (`bounceproxy suppressions remove`)",
       "suppressions", (Param("address", "The address (URL-encoded).", where="path"), P_SENDER_DOMAIN),
       responses={200: ("Removed", JSON, {"type": "object", "properties": {"removed": {"type": "string"},
                                                                            "scope": {"type": "string"}}}),
                  404: ("Not on the list", *_ERR)})
async def suppressions_remove(request: web.Request, p) -> web.Response:
    address = _address("address", request.match_info["address"])
    scope = _scope(request, p["sender_domain"])
    if await queries.remove_suppressions(request.app[STORE], scope, [address]):
        raise ApiError(404, f"address: {_short(address)} is not on the {'list of ' + scope if scope else 'list'}")
    return _json({"removed": address, "scope": scope})


@route("GET", "/api/suppressions/export", "The list as SES exports it: CSV EmailAddress,Reason,LastUpdateTime",
       "suppressions", (P_SENDER_DOMAIN,), responses={200: ("CSV, header first", "text/csv", {"type": "string"})})
async def suppressions_export(request: web.Request, p) -> web.StreamResponse:
    scope = _scope(request, p["sender_domain"])
    chunks = queries.suppressions_csv_chunks(request.app[STORE], scope)
    first, _ = await anext(chunks)  # a failing store is still a JSON error, before anything is sent
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="suppressions{"-" + scope if scope else ""}.csv"'})
    await response.prepare(request)
    request[STREAMING] = True  # from here a failure can only cut the transfer short, never answer JSON
    await response.write(first.encode())
    async for chunk, _ in chunks:
        await response.write(chunk.encode())
    await response.write_eof()
    return response


@route("POST", "/api/suppressions/import", "Import SES's CSV (EmailAddress,Reason[,LastUpdateTime]; BOUNCE or "
       "COMPLAINT) (`bounceproxy suppressions import`)", "suppressions", (P_SENDER_DOMAIN,),
       body=Body("text/csv", {"type": "string"}, f"The CSV, UTF-8, up to {MAX_IMPORT_BYTES // 2**20} MiB"),
       responses={200: ("Imported", JSON, {"type": "object", "properties": {"imported": {"type": "integer"},
                                                                             "scope": {"type": "string"}}}),
                  413: ("Too large", *_ERR), 415: ("Not text/csv", *_ERR)})
async def suppressions_import(request: web.Request, p) -> web.Response:
    scope = _scope(request, p["sender_domain"])
    if request.content_type != "text/csv":
        raise ApiError(415, "body: send Content-Type: text/csv")
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > MAX_IMPORT_BYTES:
            raise ApiError(413, f"body: larger than {MAX_IMPORT_BYTES // 2**20} MiB; split the file")
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "body: not UTF-8 text") from None
    rows = queries.parse_suppressions_csv(text, "body", scope)  # a bad row: 400 naming body:line
    count = await queries.import_suppressions(request.app[STORE], rows)
    return _json({"imported": count, "scope": scope})


@route("GET", "/api/check/{address}", "Is this address suppressed, and why? (`bounceproxy check`)", "suppressions",
       (Param("address", "The address (URL-encoded).", where="path"),
        Param("sender", "Envelope sender, for per-sender-domain lists."),
        Param("dns", "`true`: also what DNS says of its domain (looked up now).", _enum(["true", "false"], ""))),
       responses={200: ("The answer", JSON, ref("Check"))})
async def check(request: web.Request, p) -> web.Response:
    from proxy.suppression import sender_scope

    address = _address("address", request.match_info["address"])
    sender = _address("sender", p["sender"]) if p["sender"] else ""
    config = request.app[CONFIG]
    result = await queries.check_address(request.app[STORE], address, sender_scope(sender, config.suppression.scope))
    if _flag("dns", p["dns"]):
        result.update(await queries.check_dns(config.preflight, address.rpartition("@")[2]))
    return _json(result)


@route("POST", "/api/identities/{identity}/resume", "Lift a reputation-guard pause (`bounceproxy resume`)",
       "suppressions", (Param("identity", "The paused sending identity (sender domain).", where="path"),),
       responses={200: ("Resumed", JSON, {"type": "object", "properties": {"resumed": {"type": "string"}}}),
                  404: ("Not paused", *_ERR)})
async def resume(request: web.Request, p) -> web.Response:
    identity = request.match_info["identity"]
    if len(identity) > 253:
        raise ApiError(400, "identity: longer than a domain can be")
    return _json({"resumed": await queries.resume_identity(request.app[STORE], identity)})


@route("GET", "/api/webhooks", "The webhooks' outbox, newest first, with counts per state "
       "(`bounceproxy webhooks list`)", "webhooks",
       (Param("state", "Entries in this state.", _enum(WEBHOOK_STATES, "")),
        Param("limit", "At most this many entries (1 to 10000; default 100).",
              {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100})),
       responses={200: ("Entries and counts", JSON, ref("Webhooks"))})
async def webhooks(request: web.Request, p) -> web.Response:
    return _json(await queries.webhook_outbox(request.app[STORE], _choice("state", p["state"], WEBHOOK_STATES),
                                              _limit(p["limit"], 100, 10_000)))


@route("GET", "/api/openapi.json", "This description (OpenAPI 3.1)", "service",
       responses={200: ("The document", JSON, {"type": "object"})})
async def openapi_json(request: web.Request, p) -> web.Response:
    return _json(request.app[SPEC])


@route("GET", "/metrics", "Prometheus text", "service",
       responses={200: ("Text exposition format 0.0.4", "text/plain", {"type": "string"})})
async def metrics(request: web.Request, p) -> web.Response:
    text = await request.app[METRICS].render()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


@route("GET", "/", "The dashboard (a page without data: its script reads /api/*)", "service",
       responses={200: ("HTML", "text/html", {"type": "string"})}, checked=False)
async def dashboard(request: web.Request, p) -> web.Response:
    return web.Response(body=DASHBOARD_PAGE.encode(), headers={
        "Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": DASHBOARD_CSP,
        "Cache-Control": "no-cache",
    })


# -- middlewares --------------------------------------------------------------------------------
@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    """Every failure becomes a JSON error; security headers on every answer."""
    try:
        _same_origin(request)
        response = await handler(request)
    except ApiError as exc:
        response = _json({"error": exc.message}, exc.status, exc.headers)
    except queries.NotFound as exc:
        response = _json({"error": _short(str(exc), 200)}, 404)
    except queries.QueryError as exc:
        response = _json({"error": _short(str(exc), 200)}, 400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        if exc.status == 404:
            message = f"not found: {_short(request.path)} (see /api/openapi.json)"
        elif exc.status == 405:
            message = f"method {request.method} not allowed on {_short(request.path)} (allowed: {headers.get('Allow', '')})"
        elif exc.status == 413:
            message = "body: too large"
        else:
            message = exc.reason or "bad request"
        response = _json({"error": message}, exc.status, headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - logged here, never shown to the client
        if request.get(STREAMING):  # the headers are out: the transfer can only be cut short
            log.exception("api: %s %s failed while streaming", request.method, request.path)
            raise
        if isinstance(exc, StoreError):
            log.error("api: %s %s: %s", request.method, request.path, exc)
            response = _json({"error": "the bounce log is unavailable"}, 503)
        else:
            log.exception("api: %s %s failed", request.method, request.path)
            response = _json({"error": "internal error"}, 500)
    if not response.prepared:  # a streamed export has sent its headers already
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _same_origin(request: web.Request) -> None:
    """A browser's write from another site is refused: the API has no CORS, but a cross-site form can still
    POST. Browsers name the page's origin on every cross-origin write; programs send none."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    origin = request.headers.get("Origin")
    if origin is None:
        return
    parts = urlsplit(origin) if origin != "null" else None
    if parts is None or parts.netloc.lower() != request.host.lower():
        raise ApiError(403, f"Origin: {_short(origin)} is not this server; writes come from its own dashboard")


def _bearer(token: str, public: frozenset[str] = PUBLIC_PATHS):
    expected = token.encode("utf-8")

    @web.middleware
    async def auth(request: web.Request, handler) -> web.StreamResponse:
        if request.path not in public and not request.path.startswith(PUBLIC_PREFIXES):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            given_bytes = given.strip().encode("utf-8", "surrogateescape")
            # compare_digest even on a wrong scheme, so the timing says nothing
            if not (hmac.compare_digest(given_bytes, expected) and scheme.lower() == "bearer"):
                raise ApiError(401, "this API needs the header Authorization: Bearer <token>",
                               {"WWW-Authenticate": 'Bearer realm="bounceproxy"'})
        return await handler(request)

    return auth


# -- building and starting ----------------------------------------------------------------------
def api_token(config: Config) -> str | None:
    """The bearer token, or None on loopback; beyond loopback without one: ConfigError."""
    api = config.api
    if api.listen.is_loopback:
        return None
    token = (config.secret(api.token_env) or "").strip()
    if not token:
        raise ConfigError(
            f"{config.source}: [api] listen {api.listen} is beyond loopback: set a bearer token in the "
            f"environment variable {api.token_env or '(none named: set [api] token_env)'}"
        )
    return token


def _version() -> str:
    try:
        return metadata.version("bounceproxy")
    except metadata.PackageNotFoundError:
        return "0"


def create_api(config: Config, store, live_metrics: LiveMetrics | None = None,
               metrics_ttl: float = 5.0, health=None, on_events=None) -> web.Application:
    """The aiohttp application; raises ConfigError when it would listen beyond loopback without a token.
    `on_events` hears of the events SES notifications recorded (the suppressor acts on them)."""
    from proxy.sns import sns_routes

    token = api_token(config)
    sns = sns_routes(config, store, on_events=on_events)
    middlewares: list = [_errors]
    if token is not None:
        # SNS cannot send a bearer token: its path is guarded by SNS's signature (and basic auth if set)
        middlewares.append(_bearer(token, PUBLIC_PATHS | ({config.sns.path} if sns else set())))
    # SNS messages reach 256 KiB; the intake itself refuses more than 1 MiB
    app = web.Application(middlewares=middlewares, client_max_size=1024 * 1024 + 4096)
    app.add_routes(sns)
    app[STORE] = store
    app[CONFIG] = config
    app[METRICS] = MetricsCollector(store, live_metrics, ttl=metrics_ttl)
    if health is not None:
        app[HEALTH] = health
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    app.router.add_static("/static/", STATIC, append_version=False)
    extra = {config.sns.path: {"post": {
        "summary": "SES notifications over SNS (signed by SNS; no bearer token)", "tags": ["sns"],
        "operationId": "sns_intake", "security": [{}],
        "responses": {"200": {"description": "Recorded, or confirmed"},
                      "403": {"description": "Not a verified SNS message of a configured topic"}}}}} if sns else {}
    app[SPEC] = openapi(ROUTES, _version(), extra)
    return app


async def start_api(config: Config, store, live_metrics: LiveMetrics | None = None,
                    metrics_ttl: float = 5.0, health=None, on_events=None) -> tuple[web.AppRunner, tuple[str, int]]:
    """Listen on `[api] listen` (port 0: an ephemeral port). Returns the runner (`await
    runner.cleanup()` to stop) and the address actually bound."""
    app = create_api(config, store, live_metrics, metrics_ttl, health, on_events)
    listen = config.api.listen
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0,
                           access_log=logging.getLogger("bounceproxy.api.access"))
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{config.source}: [api] listen {listen}: cannot listen ({exc.strerror or exc})") from None
    host, port = runner.addresses[0][:2]
    return runner, (host, port)
