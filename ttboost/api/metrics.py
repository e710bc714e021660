"""GET /metrics: Prometheus text format, for the addresses of [server] metrics_allow only (spec §10)."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import generate_latest
# 0.0.4: the text format every Prometheus release reads (the same text for our plain ASCII names).
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .. import keys
from ..errors import not_found
from ..openapi import Binary, docs
from ..ratelimit import in_networks, parse_networks

routes = web.RouteTableDef()

_PROXY_HEADERS: Final = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Proto", "X-Forwarded-Host", "Via")


@routes.get("/metrics")
@docs("Prometheus metrics (only for [server] metrics_allow; 404 for everyone else)", tags=["meta"], security=(),
      responses={200: Binary(CONTENT_TYPE_PLAIN_0_0_4, "Prometheus text exposition format"),
                 404: "not found: the client is not in [server] metrics_allow"})
async def metrics(request: web.Request) -> web.Response:
    app = request.app
    config = app[keys.CONFIG]
    client = app[keys.CLIENT_IP](request)
    # A forwarded request from a proxy that is not configured as trusted would pass as the proxy's own (often
    # loopback) address, opening /metrics to the world through it: refuse it instead.
    # Any of the headers a proxy adds counts: nginx set up with only X-Real-IP sends no X-Forwarded-For.
    forwarded = any(name in request.headers for name in _PROXY_HEADERS) and client == (request.remote or "")
    if forwarded or not in_networks(client, parse_networks(config.server.metrics_allow)):
        raise not_found()  # 404, not 403: the route is not there for strangers
    body = generate_latest(app[keys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "Cache-Control": "no-store"})
