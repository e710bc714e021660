"""Logging: one format for the app and the libraries, and the request log line without secrets."""

from __future__ import annotations

import logging
import re
import time
from typing import Final

from aiohttp import web

from . import keys
from .errors import Handler

_ACCESS = logging.getLogger("ttboost.access")
# Tokens travel in query strings (WebSocket ?token=) and legacy paths (/ws/<token>): never log them.
_SECRET_QUERY: Final = re.compile(r"((?:^|[?&])(?:token|access_token|ws_token|key|license_key)=)[^&]*", re.I)
_WS_PATH: Final = re.compile(r"^/ws/[^/]+")


# Loggers that would print secrets: aiohttp's access log writes raw paths (/ws/<token>, ?token=), and
# aiosqlite at DEBUG prints SQL parameters (password hashes). Our own redacted access line replaces the first.
_QUIET: Final = {"aiohttp.access": logging.WARNING, "aiosqlite": logging.INFO}


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(floor)


def redact(path_qs: str) -> str:
    path_qs = _WS_PATH.sub("/ws/***", path_qs)
    return _SECRET_QUERY.sub(r"\1***", path_qs)


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        request.app[keys.METRICS].request_done(request, status, elapsed)
        _ACCESS.info("%s %s %s %d %.1fms user=%s", request.app[keys.CLIENT_IP](request), request.method, redact(request.path_qs),
                     status, elapsed * 1000, request.get(keys.USER_ID, "-"))
