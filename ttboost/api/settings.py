"""Settings endpoints: GET /v2/settings (also /v2/settings/get) and the partial POST /v2/settings/update."""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..errors import json_response
from .common import authenticate, load_body

routes = web.RouteTableDef()


@routes.get("/v2/settings")
@routes.get("/v2/settings/get")
async def get_settings(request: web.Request) -> web.Response:
    user = await authenticate(request)
    settings = await request.app[keys.SETTINGS].get(user.id)
    return json_response({"status": "ok", "settings": settings})


@routes.post("/v2/settings/update")
async def update_settings(request: web.Request) -> web.Response:
    user = await authenticate(request)
    store = request.app[keys.SETTINGS]
    changes = await load_body(request, store.schema())
    return json_response({"status": "ok", "settings": await store.update(user.id, changes)})
