"""Settings endpoints: GET /v2/settings (also /v2/settings/get) and the partial POST /v2/settings/update."""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..errors import json_response
from ..openapi import docs
from ..settings import SettingsUpdateSchema
from .common import authenticate, load_body
from .responses import SettingsResponseSchema

routes = web.RouteTableDef()


@routes.get("/v2/settings")
@routes.get("/v2/settings/get")
@docs("The streamer's settings (also at /v2/settings/get)", tags=["settings"],
      responses={200: SettingsResponseSchema})
async def get_settings(request: web.Request) -> web.Response:
    user = await authenticate(request)
    settings = await request.app[keys.SETTINGS].get(user.id)
    return json_response({"status": "ok", "settings": settings})


@routes.post("/v2/settings/update")
@docs("Change any subset of the settings", tags=["settings"], body=SettingsUpdateSchema,
      responses={200: SettingsResponseSchema})
async def update_settings(request: web.Request) -> web.Response:
    user = await authenticate(request)
    store = request.app[keys.SETTINGS]
    changes = await load_body(request, store.schema())
    settings = await store.update(user.id, changes)
    # A running watch follows a new TikTok username at once: the streamer just fixed a typo, most likely.
    session = request.app[keys.LIVE].session(user.id)
    name = settings.get("tiktok_username")
    if "tiktok_username" in changes and session is not None and session.running and name \
            and name != session.tiktok_username:
        await request.app[keys.LIVE].start(user.id, name)
    return json_response({"status": "ok", "settings": settings})
