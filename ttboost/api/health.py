"""GET /health: liveness for monitors; GET /: what answers here. No secrets, no config."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from .. import __version__, keys
from ..cluster.wiring import health_block
from ..errors import json_response
from ..openapi import docs
from .responses import HealthSchema, ServiceSchema

_LOGGER = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.get("/")
@docs("What answers here: {status, service, version} (the original's tools probe it)", tags=["meta"],
      security=(), responses={200: ServiceSchema})
async def root(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "service": "ttboost", "version": __version__})


@routes.get("/health")
@docs("Liveness for monitors", tags=["meta"], security=(),
      responses={200: HealthSchema, 503: HealthSchema})
async def health(request: web.Request) -> web.Response:
    app = request.app
    try:
        await app[keys.DB].fetchval("SELECT 1")
        db_state = "ok"
    except Exception:  # health must answer even when the database does not
        _LOGGER.exception("health: database check failed")
        db_state = "error"
    body = {
        "status": "ok" if db_state == "ok" else "degraded",
        "version": __version__,
        "uptime_s": round(time.monotonic() - app[keys.STARTED_AT], 1),
        "db": db_state,
        "live_sessions": app[keys.LIVE].active_count(),
        "ws_clients": len(app[keys.SOCKETS]),
        "event_log": app[keys.BUS].log.health(),
    }
    cluster = await health_block(app)
    if cluster is not None:
        body["cluster"] = cluster
    return json_response(body, status=200 if db_state == "ok" else 503)
