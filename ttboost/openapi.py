"""GET /v2/openapi.json: built by walking the router, from each handler's @docs and the schemas load_body uses."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Final, Mapping, TypeVar

from aiohttp import hdrs, web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from marshmallow import INCLUDE, Schema, fields

from . import __version__, keys

OPENAPI_VERSION: Final = "3.0.3"
DOCS_ATTR: Final = "__ttboost_docs__"
BEARER: Final = "bearer"  # security scheme names, as they appear in the document
WEB_API_KEY: Final = "webApiKey"
QUERY_TOKEN: Final = "queryToken"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
SchemaClass = type[Schema]


class ErrorSchema(Schema):
    """The one error envelope (spec §2); some errors add context keys, e.g. trigger_ids on 409 sound in use."""

    class Meta:
        unknown = INCLUDE  # documents additionalProperties: the extra context keys

    detail = fields.String(required=True, metadata={"description": "human message; the texts of spec §2 are "
                                                                   "stable and the app may match on them"})
    code = fields.String(required=True, metadata={"description": "machine code, e.g. invalid_token"})
    fields_ = fields.Dict(data_key="fields", keys=fields.String(), values=fields.List(fields.String()),
                          metadata={"description": "422 only: messages per field (nested fields as a.b)"})


@dataclass(frozen=True, slots=True)
class Binary:
    """A non-JSON success body, e.g. audio."""

    content_type: str
    description: str


@dataclass(frozen=True, slots=True)
class Docs:
    summary: str
    tags: tuple[str, ...]
    security: tuple[str, ...]
    responses: Mapping[int, SchemaClass | Binary | str]
    body: SchemaClass | None = None  # the JSON body schema; load_body refuses any other
    form: SchemaClass | None = None  # a multipart/form-data body (docs only: uploads stream their parts)
    query: SchemaClass | None = None
    path: Mapping[str, str] = field(default_factory=dict)  # path parameter → description
    description: str = ""


def docs(summary: str, *, tags: tuple[str, ...] | list[str], responses: Mapping[int, SchemaClass | Binary | str],
         security: tuple[str, ...] = (BEARER,), body: SchemaClass | None = None, form: SchemaClass | None = None,
         query: SchemaClass | None = None, path: Mapping[str, str] | None = None,
         description: str = "") -> Callable[[H], H]:
    """Attaches a handler's OpenAPI description to it; the handler itself is returned unchanged.

    responses: status → a response schema class (JSON), Binary, or a text; a 4xx/5xx text is a description
    of the error envelope. The errors every route of a kind shares are added by the builder: 401 with a
    Bearer scheme, 400/413/422 with a JSON body, 422 with a query schema.
    """

    def attach(handler: H) -> H:
        setattr(handler, DOCS_ATTR, Docs(summary=summary, tags=tuple(tags), security=tuple(security),
                                         responses=dict(responses), body=body, form=form, query=query,
                                         path=dict(path or {}), description=description))
        return handler

    return attach


def docs_of(handler: Any) -> Docs | None:
    return getattr(handler, DOCS_ATTR, None)


class UndocumentedRouteError(RuntimeError):
    """A route has no @docs: the document would silently leave it out."""


_PATH_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
_SHARED_ERRORS: Final = {
    "bearer": {401: "invalid token (missing, bad, expired, or revoked by a password change)"},
    "body": {400: "invalid JSON (not JSON, NaN/Infinity, or nested deeper than 32 levels)",
             413: "request body too large (over 64 KiB)",
             422: "validation error: `fields` names each bad field (wrong type, out of range, NUL in a text, a "
                  "boolean other than true/false); unknown fields are ignored"},
    "query": {422: "validation error in a query parameter"},
}


def _skipped(route: web.AbstractRoute) -> bool:
    """aiohttp's automatic HEAD twin of a GET, and aiohttp-cors' preflight handlers, are not API operations."""
    if route.method == hdrs.METH_HEAD:
        return any(r.method == hdrs.METH_GET and r.handler is route.handler for r in route.resource or ())
    return route.method == hdrs.METH_OPTIONS and getattr(route.handler, "__module__", "").startswith("aiohttp_cors")


def documented_routes(app: web.Application) -> list[tuple[str, str, Handler, Docs]]:
    """(method, path, handler, docs) of every API route; UndocumentedRouteError names every route lacking docs."""
    found, missing = [], []
    for route in app.router.routes():
        if route.resource is None or _skipped(route):
            continue
        path = route.resource.canonical
        info = docs_of(route.handler)
        if info is None:
            missing.append(f"{route.method} {path}")
        else:
            found.append((route.method, path, route.handler, info))
    if missing:
        raise UndocumentedRouteError("routes without @docs (ttboost.openapi.docs): " + ", ".join(sorted(missing)))
    return found


def _response(status: int, value: SchemaClass | Binary | str) -> dict[str, Any]:
    if isinstance(value, Binary):
        return {"description": value.description,
                "content": {value.content_type: {"schema": {"type": "string", "format": "binary"}}}}
    if isinstance(value, str):
        if status < 400:
            return {"description": value}
        return {"description": value, "content": {"application/json": {"schema": ErrorSchema}}}
    summary = (value.__doc__ or "").strip().splitlines()
    return {"description": summary[0] if summary else "OK", "content": {"application/json": {"schema": value}}}


def _operation(path: str, info: Docs, op_id: str) -> dict[str, Any]:
    errors: dict[int, str] = {}
    if BEARER in info.security:
        errors.update(_SHARED_ERRORS["bearer"])
    if info.body is not None:
        errors.update(_SHARED_ERRORS["body"])
    if info.query is not None:
        errors.update(_SHARED_ERRORS["query"])
    responses = {**{status: _response(status, text) for status, text in errors.items()},
                 **{status: _response(status, value) for status, value in info.responses.items()}}
    op: dict[str, Any] = {"operationId": op_id, "summary": info.summary, "tags": list(info.tags),
                          "responses": {str(status): responses[status] for status in sorted(responses)}}
    if info.description:
        op["description"] = info.description
    op["security"] = [{name: []} for name in info.security]  # [] marks a public route explicitly
    params: list[dict[str, Any]] = [
        {"in": "path", "name": name, "required": True, "schema": {"type": "string"},
         **({"description": info.path[name]} if name in info.path else {})}
        for name in _PATH_PARAM.findall(path)]
    if info.query is not None:
        params.append({"in": "query", "schema": info.query})  # the plugin expands it, one parameter a field
    if params:
        op["parameters"] = params
    if info.body is not None:
        # load_body reads an empty body as {}: it is missing only if the schema requires a field.
        required = any(f.required for f in info.body._declared_fields.values())
        op["requestBody"] = {"required": required, "content": {"application/json": {"schema": info.body}}}
    elif info.form is not None:
        op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": info.form}}}
    return op


def schema_name(schema: SchemaClass | Schema) -> str:
    """The component name a schema gets: the class name without 'Schema' (apispec's default)."""
    cls = resolve_schema_cls(schema)
    name = cls.__name__
    return name[:-len("Schema")] if name.endswith("Schema") and name != "Schema" else name


# What JSON Schema cannot say, said once for every body: schemathesis' "schema-valid request rejected" (ST202)
# finds exactly these, and each answers 422 with the field named in `fields`.
_API_DESCRIPTION: Final = (
    "Self-hosted TikTok LIVE companion server. Every error is `{detail, code[, fields]}` (ErrorSchema).\n\n"
    "Request bodies: unknown fields are ignored (never stored). Known fields are checked beyond their JSON "
    "Schema, each failure a 422 naming the field: no NUL character in any text; `plan` must be a plan of this "
    "server's config; `voice_id` a voice of GET /v2/voices; `tiktok_username` and `username` a TikTok handle "
    "(2-24 of a-z 0-9 . _ after trimming, '@' and case); `action_params` the shape its `action` needs "
    "(`sound_filename` for play_sound, `text_template` for tts); an uploaded `file` must parse as MP3, WAV, OGG or "
    "M4A audio of 0.1-30 s. A body that is not JSON, nests deeper than 32 levels or spells NaN/Infinity is 400.")


def build_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3 document of every route of app; UndocumentedRouteError if any route lacks @docs."""
    config = app[keys.CONFIG]
    spec = APISpec(title="TTBoost API", version=__version__, openapi_version=OPENAPI_VERSION,
                   plugins=[MarshmallowPlugin(schema_name_resolver=schema_name)],
                   info={"description": _API_DESCRIPTION},
                   servers=[{"url": config.public_url}])
    spec.components.security_scheme(BEARER, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.components.security_scheme(WEB_API_KEY, {"type": "apiKey", "in": "header", "name": "Web-Api-Key"})
    spec.components.security_scheme(QUERY_TOKEN, {"type": "apiKey", "in": "query", "name": "token"})
    spec.components.schema(schema_name(ErrorSchema), schema=ErrorSchema)
    routes = documented_routes(app)
    by_path: dict[str, dict[str, Any]] = {}
    names = [handler.__name__ for _m, _p, handler, _d in routes]
    for method, path, handler, info in routes:
        op_id = handler.__name__
        if names.count(op_id) > 1:  # one handler on several paths (aliases): the path tells them apart
            op_id += "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
        by_path.setdefault(path, {})[method.lower()] = _operation(path, info, op_id)
    for path in sorted(by_path):
        spec.path(path=path, operations=by_path[path])
    return spec.to_dict()


class OpenApiDocument:
    """One app's document as JSON text: built on the first request, off the loop, then kept.

    apispec takes ~15 ms of CPU; building it lazily spares every test app, and the thread spares the loop.
    """

    def __init__(self) -> None:
        self._text: str | None = None
        self._lock = asyncio.Lock()

    async def text(self, app: web.Application) -> str:
        if self._text is None:
            async with self._lock:
                if self._text is None:
                    self._text = await asyncio.to_thread(
                        lambda: json.dumps(build_document(app), ensure_ascii=False))
        return self._text


async def check_on_startup(app: web.Application) -> None:
    """on_startup: every route (CORS included) exists by now; one without @docs stops the server here."""
    documented_routes(app)
