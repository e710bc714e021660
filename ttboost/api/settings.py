"""Settings endpoints: GET /v2/settings (also /v2/settings/get) and the partial POST /v2/settings/update."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import keys
from ..errors import json_response
from ..openapi import docs
from ..settings import SettingsUpdateSchema
from .common import authenticate, load_body
from .responses import SettingsResponseSchema

routes = web.RouteTableDef()

_LIVE_SETTINGS = frozenset({"tiktok_username", "auto_connect"})  # what a running watch follows at once


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
    if _LIVE_SETTINGS.intersection(changes):  # where the user's watch runs (a worker of the cluster, or here)
        await request.app[keys.HOME].run(user.id, "settings_changed", {"changes": changes})
    return json_response({"status": "ok", "settings": settings})
