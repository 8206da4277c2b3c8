"""The API's routes declared once: what each takes and answers. The handlers' parameter checks and
`/api/openapi.json` both read these declarations, so the published description cannot drift from
what the server accepts (an undeclared parameter is a 400)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proxy.queries import EVENT_FIELDS, MESSAGE_FIELDS, SUPPRESSION_COLUMNS

JSON = "application/json"


@dataclass(frozen=True)
class Param:
    name: str
    doc: str
    schema: dict = field(default_factory=lambda: {"type": "string"})
    where: str = "query"  # or "path"


@dataclass(frozen=True)
class Body:
    content_type: str
    schema: dict
    doc: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[..., Awaitable]
    summary: str
    tag: str
    params: tuple[Param, ...] = ()
    body: Body | None = None
    responses: dict = field(default_factory=dict)  # status -> (description, content type, schema or None)

    @property
    def query(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.where == "query")


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def page_of(item: str, key: str) -> dict:
    return {"type": "object", "required": [key, "next_cursor"], "properties": {
        key: {"type": "array", "items": ref(item)},
        "next_cursor": {"type": ["string", "null"],
                        "description": "Pass as `cursor` for the next page; null on the last page."}}}


_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_NSTR, _NINT = {"type": ["string", "null"]}, {"type": ["integer", "null"]}
_TIME = {"type": "string", "description": "ISO 8601 UTC, e.g. 2025-12-05T16:00:00Z"}
_NTIME = {"type": ["string", "null"], "description": "ISO 8601 UTC or null"}
_RATE = {"type": ["number", "null"], "description": "A fraction (0.05 = 5 %); null when nothing was sent"}


def _fields(names, types: dict) -> dict:
    return {n: types.get(n, _NSTR) for n in names}


SCHEMAS: dict[str, dict] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "string", "description": "One line; a bad parameter's name comes first (`limit: ...`)."}}},
    "Event": {"type": "object", "properties": {
        **_fields(EVENT_FIELDS, {"id": _INT, "at": _TIME, "smtp_code": _NINT, "inbound_id": _NINT}),
        "message_sender": _NSTR, "message_id": _NSTR, "upstream_id": _NSTR, "subject": _NSTR}},
    "Message": {"type": "object", "properties": {
        **_fields(MESSAGE_FIELDS, {"id": _STR, "created_at": _TIME, "size": _NINT, "status": _STR}),
        "recipients": {"type": "array", "items": _STR}, "recipient_count": _INT, "duplicate": _BOOL}},
    "MessageStory": {"type": "object", "properties": {
        **_fields(MESSAGE_FIELDS, {"id": _STR, "created_at": _TIME, "size": _NINT, "status": _STR}),
        "recipients": {"type": "array", "items": {"type": "object", "properties": {
            "address": _STR, "status": _STR, "reply": _NSTR}}},
        "events": {"type": "array", "items": ref("Event")}}},
    "Inbound": {"type": "object", "properties": {
        "id": _INT, "received_at": _TIME, "peer": _STR, "mail_from": _STR, "rcpt_tos": {"type": "array", "items": _STR},
        "size": _INT, "sha256": _STR, "state": _STR, "parser_version": _NSTR, "kind": _NSTR, "format": _NSTR,
        "error": _NSTR, "foreign_recipients": _INT, "flag": _NSTR, "truncated": _NSTR}},
    "Suppression": {"type": "object", "properties": {
        **_fields(SUPPRESSION_COLUMNS, {"address": _STR, "scope": _STR, "kind": _STR, "reason": _STR,
                                        "created_at": _TIME, "expires_at": _NTIME, "source_event": _NINT}),
        "seq": _INT}},
    "SesNotification": {"type": "object", "description": "As SES publishes it (notificationType, bounce or "
                        "complaint, mail).", "additionalProperties": True},
    "Stats": {"type": "object", "properties": {
        "since": _TIME, "messages": _INT, "by_status": {"type": "object", "additionalProperties": _INT},
        "recipients": _INT, "bounces": _INT, "hard_bounces": _INT, "complaints": _INT, "bounce_rate": _NUM,
        "hard_bounce_rate": _NUM, "complaint_rate": _NUM, "by_reason": {"type": "array", "items": {"type": "object"}},
        "by_correlation": {"type": "object", "additionalProperties": _INT}, "foreign_recipients": _INT,
        "duplicates": _INT, "identities": {"type": "array", "items": {"type": "object", "properties": {
            "identity": _STR, "recipients": _INT, "hard_bounces": _INT, "complaints": _INT,
            "hard_bounce_rate": _NUM, "complaint_rate": _NUM, "paused": _NSTR}}}}},
    "Activity": {"type": "object", "properties": {
        "since": _TIME, "bucket_seconds": _INT,
        "thresholds": {"type": "object", "description": "SES's review and pause lines per rate",
                       "additionalProperties": {"type": "object", "properties": {"review": _NUM, "pause": _NUM}}},
        "buckets": {"type": "array", "items": {"type": "object", "properties": {
            "start": _TIME, "messages": _INT, "recipients": _INT, "hard": _INT, "soft": _INT, "undetermined": _INT,
            "complaints": _INT, "bounce_rate": _RATE, "hard_bounce_rate": _RATE, "complaint_rate": _RATE}}}}},
    "Check": {"type": "object", "properties": {
        "address": _STR, "suppressed": _BOOL, "suppression": {"oneOf": [ref("Suppression"), {"type": "null"}]},
        "dns": {"type": "string", "description": "only with dns=true"}, "dns_detail": _STR}},
    "Webhooks": {"type": "object", "properties": {
        "webhooks": {"type": "array", "items": {"type": "object", "properties": {
            "id": _INT, "key": _STR, "url": _STR, "type": _STR, "address": _STR, "created_at": _TIME, "state": _STR,
            "attempts": _INT, "next_at": _NTIME, "relay_id": _NSTR, "event_id": _NINT, "last_error": _NSTR,
            "delivered_at": _NTIME, "snapshot": {"type": ["object", "null"]}}}},
        "counts": {"type": "object", "additionalProperties": {"type": "object", "properties": {
            "count": _INT, "oldest": _NTIME}}}}},
    "SuppressionsAdd": {"type": "object", "additionalProperties": False, "properties": {
        "addresses": {"type": "array", "items": _STR, "minItems": 1, "maxItems": 10000},
        "address": {"type": "string", "description": "one address (instead of addresses)"},
        "reason": {"type": "string", "default": "manual", "maxLength": 200},
        "days": {"type": "number", "minimum": 0, "maximum": 36500, "default": 0,
                 "description": "expire after this many days (0: never)"},
        "sender_domain": {"type": "string", "description": "add to this sender domain's list "
                                                           "([suppression] scope = sender_domain)"}}},
}


def openapi(routes: list[Route], version: str, extra_paths: dict | None = None) -> dict:
    """The OpenAPI 3.1 document of these routes (plus `extra_paths`, written out by their owner)."""
    paths: dict[str, dict] = {}
    for r in routes:
        op: dict = {"summary": r.summary, "tags": [r.tag], "operationId": r.handler.__name__}
        if r.params:
            op["parameters"] = [{"name": p.name, "in": p.where, "required": p.where == "path",
                                 "description": p.doc, "schema": p.schema} for p in r.params]
        if r.body is not None:
            op["requestBody"] = {"required": True, "description": r.body.doc,
                                 "content": {r.body.content_type: {"schema": r.body.schema}}}
        responses = {}
        for status, (doc, ctype, schema) in sorted(r.responses.items()):
            responses[str(status)] = {"description": doc}
            if ctype:
                responses[str(status)]["content"] = {ctype: {"schema": schema} if schema else {}}
        if r.path.startswith("/api/"):
            responses.setdefault("400", {"description": "A bad parameter, named first in `error`",
                                         "content": {JSON: {"schema": ref("Error")}}})
        responses.setdefault("401", {"description": "Beyond loopback without `Authorization: Bearer <token>`",
                                     "content": {JSON: {"schema": ref("Error")}}})
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method.lower()] = op
    for path, item in (extra_paths or {}).items():
        paths.setdefault(path, {}).update(item)
    return {
        "openapi": "3.1.0",
        "info": {"title": "bounceproxy", "version": version,
                 "description": "The bounce log as JSON: the same data and filters as the command line. Lists are "
                                "newest first and continue by `cursor` (the `next_cursor` of the page before). "
                                "Errors are JSON objects `{\"error\": ...}` naming the parameter."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "Needed beyond loopback ([api] token_env)"}}},
        "security": [{}, {"bearer": []}],
    }
