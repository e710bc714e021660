"""Logging: one format for the app and the libraries, and the request log line without secrets."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Final
from urllib.parse import unquote_plus

from aiohttp import web

from . import keys
from .errors import Handler

_ACCESS = logging.getLogger("ttboost.access")
# Tokens travel in query strings (WebSocket ?token=) and legacy paths (/ws/<token>): never log them, in whatever
# shape a client (or an attacker probing the log) spells them: ;token=, %74oken=, //ws/<T>, /x/../ws/<T>.
_SECRET_NAMES: Final = frozenset({"token", "access_token", "ws_token", "key", "license_key", "authorization"})
_QUERY_SPLIT: Final = re.compile(r"([&;])")
_WS_SEGMENT: Final = re.compile(r"((?:/|%2f)ws(?:/|%2f)+)[^/?#]+", re.I)
# /overlay/<overlay key> likewise; /v2/overlay/ws and /v2/overlay/key are routes, not keys.
_OVERLAY_SEGMENT: Final = re.compile(r"((?:/|%2f)overlay(?:/|%2f)+)(?!(?:ws|key)(?:[/?#]|$))[^/?#]+", re.I)
# Anything shaped like a JWT (header.payload.signature, base64url), wherever it appears in a log line.
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


CLIENT_CLOSED: Final = 499  # logged status of a request whose client went away first

# Loggers that would print secrets: aiohttp's access log writes raw paths (/ws/<token>, ?token=), and
# aiosqlite at DEBUG prints SQL parameters (password hashes). Our own redacted access line replaces the first.
_QUIET: Final = {"aiohttp.access": logging.WARNING, "aiosqlite": logging.INFO}


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(floor)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def redact(path_qs: str) -> str:
    """A request target fit for the log: /ws/<token>, /overlay/<key> segments and secret query values become ***."""
    path, sep, query = path_qs.partition("?")
    path = _OVERLAY_SEGMENT.sub(r"\1***", _WS_SEGMENT.sub(r"\1***", path))
    if sep:
        parts = _QUERY_SPLIT.split(query)
        for i in range(0, len(parts), 2):  # odd items are the separators themselves
            name, eq, _value = parts[i].partition("=")
            if eq and unquote_plus(name).strip().lower() in _SECRET_NAMES:
                parts[i] = f"{name}=***"
        query = "".join(parts)
    return redact_text(path + sep + query)


def redact_text(text: str) -> str:
    return _JWT.sub("***", text)


class RedactingFilter(logging.Filter):
    """On the log handlers: no token in any record, the libraries' own too (aiohttp's parser errors quote the
    request line; a traceback may quote a URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        # The client went away and aiohttp cancelled the handler (every WebSocket ends this way when the peer
        # closes): not a server error. 499 as nginx logs it.
        status = CLIENT_CLOSED
        raise
    finally:
        elapsed = time.perf_counter() - started
        request.app[keys.METRICS].request_done(request, status, elapsed)
        _ACCESS.info("%s %s %s %d %.1fms user=%s", request.app[keys.CLIENT_IP](request), request.method, redact(request.path_qs),
                     status, elapsed * 1000, request.get(keys.USER_ID, "-"))
