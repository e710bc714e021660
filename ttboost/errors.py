"""ApiError and the one middleware that turns every failure into {"detail", "code"[, "fields"]}."""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web
from marshmallow import ValidationError

_LOGGER = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error the client should see, with its HTTP status, human detail and machine code."""

    def __init__(self, status: int, detail: str, code: str, *, fields: Mapping[str, list[str]] | None = None,
                 headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.fields = dict(fields) if fields else None
        self.headers = dict(headers) if headers else {}
        self.extra = dict(extra) if extra else {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"detail": self.detail, "code": self.code, **self.extra}
        if self.fields is not None:
            body["fields"] = self.fields
        return json_response(body, status=self.status, headers=self.headers)


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """JSON in UTF-8 with real characters (ensure_ascii=False), as the spec asks."""
    return web.Response(text=json.dumps(data, ensure_ascii=False), status=status,
                        content_type="application/json", headers=headers)


# Canonical errors whose texts the app matches on (spec §2).
def invalid_token() -> ApiError:
    return ApiError(401, "invalid token", "invalid_token", headers={"WWW-Authenticate": "Bearer"})


def not_found(detail: str = "not found", code: str = "not_found") -> ApiError:
    return ApiError(404, detail, code)


def validation_error(fields: Mapping[str, list[str]]) -> ApiError:
    return ApiError(422, "validation error", "validation_error", fields=fields)


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages → {"field" or "field.sub": [messages]}."""
    if isinstance(messages, list):
        return {prefix or "_schema": [str(m) for m in messages]}
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten_messages(value, name))
    else:
        out[prefix or "_schema"] = [str(messages)]
    return out


# aiohttp's own HTTP errors mapped onto the envelope; the status decides the code.
_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad request", "bad_request"),
    401: ("invalid token", "invalid_token"),
    403: ("forbidden", "forbidden"),
    404: ("not found", "not_found"),
    405: ("method not allowed", "method_not_allowed"),
    413: ("request body too large", "payload_too_large"),
    415: ("unsupported media type", "unsupported_media_type"),
    416: ("range not satisfiable", "range_not_satisfiable"),
    429: ("too many requests", "too_many_requests"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except ValidationError as exc:
        return validation_error(flatten_messages(exc.messages)).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail, code = _HTTP_CODES.get(exc.status, (exc.reason.lower(), exc.reason.lower().replace(" ", "_")))
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After", "Content-Range")}
        return json_response({"detail": detail, "code": code}, status=exc.status, headers=headers)
    except Exception:  # the one place that turns a bug into a 500; details go to the log only
        # The route's pattern, not the path: a path can hold a credential (/overlay/<key>, /ws/<token>); the
        # redacted access-log line that follows has the rest.
        resource = request.match_info.route.resource
        _LOGGER.exception("unhandled error in %s %s", request.method,
                          resource.canonical if resource is not None else "(no route)")
        return json_response({"detail": "internal server error", "code": "internal_error"}, status=500)
