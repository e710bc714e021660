"""Settings endpoints: GET /v2/settings (also /v2/settings/get) and the partial POST /v2/settings/update."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import keys
from ..errors import json_response
from ..licenses import has_active_license
from ..openapi import docs
from ..settings import SettingsUpdateSchema
from ..ws import auto_connect
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
    await _follow_live_settings(request.app, user.id, changes, settings)
    return json_response({"status": "ok", "settings": settings})


async def _follow_live_settings(app: web.Application, user_id: int, changes: dict[str, Any],
                                settings: dict[str, Any]) -> None:
    """A running watch follows the settings at once, so that nothing a streamer just changed waits for the
    next app connection to take effect."""
    live = app[keys.LIVE]
    session = live.session(user_id)
    running = session is not None and session.running
    name = settings.get("tiktok_username")
    # A new TikTok username: the streamer just fixed a typo, most likely.
    if "tiktok_username" in changes and session is not None and running and name \
            and name != session.tiktok_username:
        await live.start(user_id, name, auto=live.auto_started(user_id))
    # auto_connect off undoes what auto_connect did: a watch it started stops (a watch the streamer started
    # with connect_tiktok keeps running). On again, with the app connected, it starts as on a connection.
    if changes.get("auto_connect") is False and running and live.auto_started(user_id):
        await live.stop(user_id)
    elif changes.get("auto_connect") is True:
        conn = app[keys.SOCKETS].current(user_id)
        if conn is not None and conn.demo is None and await has_active_license(app[keys.DB], user_id):
            await auto_connect(app, user_id)
