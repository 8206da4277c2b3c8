"""The HTTP side: JSON API under /api/ (same data and filters as the CLI), the dashboard at /,
Prometheus text at /metrics and /healthz.

Every error is a JSON object `{"error": "..."}` with the right status (400 naming the parameter,
401, 404, 405, 500): never a traceback. Beyond loopback every request but /healthz and the
dashboard's static page (which holds no data; its script asks for the token) needs
`Authorization: Bearer <token>`, the token read from the environment variable `[api] token_env`.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re

from aiohttp import web

from proxy.api.dashboard import CSP as DASHBOARD_CSP
from proxy.api.dashboard import PAGE as DASHBOARD_PAGE
from proxy.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.api.metrics import LiveMetrics, MetricsCollector
from proxy.config import Config, ConfigError
from proxy import queries
from proxy.model import REASONS, BounceType, Correlation, Kind, MessageStatus, ParseState, Source
from proxy.queries import iso
from proxy.store import EventFilter, InboundFilter, MessageFilter, StoreError, parse_since

log = logging.getLogger(__name__)

STORE = web.AppKey("store", object)
METRICS = web.AppKey("metrics", MetricsCollector)
HEALTH = web.AppKey("health", object)  # () -> None when healthy, else the reason (proxy.app.Service._health)

MAX_LIMIT = 1_000_000
DEFAULT_LIMIT = 100
# Paths answered without a token beyond loopback: liveness, and the dashboard's page (static, no data).
PUBLIC_PATHS = frozenset({"/healthz", "/"})

BOUNCE_TYPES = [t.value for t in BounceType]
SOURCES = [s.value for s in Source]
KINDS = [k.value for k in Kind]
CORRELATIONS = [c.value for c in Correlation]
MESSAGE_STATUSES = [s.value for s in MessageStatus]
PARSE_STATES = [s.value for s in ParseState]
_DIGITS = re.compile(r"^[0-9]+$")


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
            raise ApiError(400, f"unknown parameter {_short(key)!r} (known: {', '.join(known)})")
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


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
        raise ApiError(400, f"limit: {_short(value)!r} is not an integer from 1 to {MAX_LIMIT}")
    return int(value)


def _int_id(value: str) -> int:
    if not _DIGITS.fullmatch(value) or len(value) > 18:
        raise ApiError(400, f"id: {_short(value)!r} is not an inbound mail id (an integer)")
    return int(value)


# -- handlers -----------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    """200 ok, or 503 degraded with the reason while the upstream is down or the bounce log refuses writes:
    the relay is up but answers 451 (Docker's HEALTHCHECK and load balancers read the status code)."""
    check = request.app.get(HEALTH)
    reason = check() if check is not None else None
    if reason:
        return _json({"status": "degraded", "reason": reason}, 503)
    return _json({"status": "ok"})


async def bounces(request: web.Request) -> web.Response:
    p = _params(request, ("since", "recipient", "type", "reason", "source", "kind", "correlation", "message", "limit"))
    flt = EventFilter(
        since=_since(p["since"]), recipient=p["recipient"],
        bounce_type=_choice("type", p["type"], BOUNCE_TYPES), reason=_choice("reason", p["reason"], REASONS),
        source=_choice("source", p["source"], SOURCES), kind=_choice("kind", p["kind"], KINDS),
        correlation=_choice("correlation", p["correlation"], CORRELATIONS), relay_id=p["message"],
        limit=_limit(p["limit"]),
    )
    return _json({"events": await queries.list_events(request.app[STORE], flt)})


async def messages(request: web.Request) -> web.Response:
    p = _params(request, ("since", "recipient", "status", "sender", "duplicates", "limit"))
    flt = MessageFilter(
        since=_since(p["since"]), recipient=p["recipient"], status=_choice("status", p["status"], MESSAGE_STATUSES),
        sender=p["sender"], limit=_limit(p["limit"]),
        duplicates=_choice("duplicates", p["duplicates"], ("true", "false")) == "true",
    )
    return _json({"messages": await queries.list_messages(request.app[STORE], flt)})


async def message_show(request: web.Request) -> web.Response:
    _params(request, ())
    story = await queries.message_story(request.app[STORE], request.match_info["id"])
    story.pop("raw_kept", None)
    return _json(story)


async def message_raw(request: web.Request) -> web.Response:
    _params(request, ())
    relay_id = request.match_info["id"]
    return _raw(await queries.message_raw(request.app[STORE], relay_id), f"message-{relay_id}.eml")


async def stats(request: web.Request) -> web.Response:
    p = _params(request, ("since",))
    return _json(await queries.stats_summary(request.app[STORE], _since(p["since"] or "24h")))


async def inbound(request: web.Request) -> web.Response:
    p = _params(request, ("state", "since", "limit", "flagged"))
    flt = InboundFilter(state=_choice("state", p["state"], PARSE_STATES), since=_since(p["since"]),
                        limit=_limit(p["limit"]),
                        flagged=_choice("flagged", p["flagged"], ("true", "false")) == "true")
    return _json({"inbound": await queries.list_inbound(request.app[STORE], flt)})


async def inbound_raw(request: web.Request) -> web.Response:
    _params(request, ())
    inbound_id = _int_id(request.match_info["id"])
    return _raw(await queries.inbound_raw(request.app[STORE], inbound_id), f"inbound-{inbound_id}.eml")


def _raw(raw: bytes, filename: str) -> web.Response:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return web.Response(body=bytes(raw), headers={
        "Content-Type": "message/rfc822", "Content-Disposition": f'attachment; filename="{safe}"',
    })


async def metrics(request: web.Request) -> web.Response:
    _params(request, ())
    text = await request.app[METRICS].render()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=DASHBOARD_PAGE.encode(), headers={
        "Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": DASHBOARD_CSP,
        "Cache-Control": "no-cache",
    })


# -- middlewares --------------------------------------------------------------------------------
@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    """Every failure becomes a JSON error; security headers on every answer."""
    try:
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
            message = f"not found: {_short(request.path)} (see /api/bounces, /api/messages, /api/stats, /api/inbound, /metrics)"
        elif exc.status == 405:
            message = f"method {request.method} not allowed on {_short(request.path)} (allowed: {headers.get('Allow', '')})"
        else:
            message = exc.reason or "bad request"
        response = _json({"error": message}, exc.status, headers)
    except asyncio.CancelledError:
        raise
    except StoreError as exc:
        log.error("api: %s %s: %s", request.method, request.path, exc)
        response = _json({"error": "the bounce log is unavailable"}, 503)
    except Exception:  # noqa: BLE001 - logged here, never shown to the client
        log.exception("api: %s %s failed", request.method, request.path)
        response = _json({"error": "internal error"}, 500)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _bearer(token: str, public: frozenset[str] = PUBLIC_PATHS):
    expected = token.encode("utf-8")

    @web.middleware
    async def auth(request: web.Request, handler) -> web.StreamResponse:
        if request.path not in public:
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
    app[METRICS] = MetricsCollector(store, live_metrics, ttl=metrics_ttl)
    if health is not None:
        app[HEALTH] = health
    app.router.add_get("/", dashboard)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/bounces", bounces)
    app.router.add_get("/api/messages", messages)
    app.router.add_get("/api/messages/{id}", message_show)
    app.router.add_get("/api/messages/{id}/raw", message_raw)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/inbound", inbound)
    app.router.add_get("/api/inbound/{id}/raw", inbound_raw)
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
