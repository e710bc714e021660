"""Trigger endpoints under /v2/triggers/*: set (create or update), list, delete, update-enabled; 20/min per user."""

from __future__ import annotations

import logging

from aiohttp import web

from .. import keys, licenses
from ..errors import json_response
from ..openapi import docs
from ..trigger_schemas import TriggerEnabledSchema, TriggerIdSchema, TriggerSetSchema
from ..users import User
from .common import authenticate, limit_by_user, load_body
from .responses import USER_RATE_LIMITED, OkSchema, TriggerListSchema, TriggerResponseSchema

_LOGGER = logging.getLogger(__name__)

routes = web.RouteTableDef()


async def _user(request: web.Request) -> User:
    user = await authenticate(request)
    await limit_by_user(request, "triggers", user)
    return user


async def _max_triggers(request: web.Request, user: User) -> int:
    """The plan's max_triggers; without an active license no new trigger can be added (existing ones stay)."""
    plan = await licenses.plan_for_user(request.app[keys.DB], user.id)
    return request.app[keys.TRIGGERS].plan_max(plan.plan_id if plan.active else None)


@routes.post("/v2/triggers/set")
@docs("Create or update a trigger (upsert on event_type + condition; with id: update that one)", tags=["triggers"],
      body=TriggerSetSchema,
      description="action_params: for play_sound `{sound_filename, volume?}`, for tts `{text_template, voice_id?}` "
                  "with placeholders {user} {username} {message} {gift_name} {count} {diamonds} {likes}.",
      responses={200: TriggerResponseSchema, 403: "trigger limit reached (the plan's max_triggers)",
                 404: "not found (no such trigger id) | sound file not found",
                 409: "a trigger with this condition already exists (its id in `id`)", 429: USER_RATE_LIMITED})
async def set_trigger(request: web.Request) -> web.Response:
    user = await _user(request)
    body = await load_body(request, TriggerSetSchema(voice_known=request.app[keys.SETTINGS].voice_known))
    store = request.app[keys.TRIGGERS]
    trigger = await store.set(user.id, await _max_triggers(request, user), body)
    _LOGGER.info("trigger %d saved (user %d, %s/%s → %s)", trigger.id, user.id, trigger.event_type,
                 trigger.condition_key, trigger.action)
    return json_response({"status": "ok", "trigger": trigger.to_json()})


@routes.get("/v2/triggers/list")
@docs("The streamer's triggers", tags=["triggers"], responses={200: TriggerListSchema, 429: USER_RATE_LIMITED})
async def list_triggers(request: web.Request) -> web.Response:
    user = await _user(request)
    triggers = await request.app[keys.TRIGGERS].list(user.id)
    return json_response({"triggers": [t.to_json() for t in triggers]})


@routes.post("/v2/triggers/delete")
@docs("Delete a trigger", tags=["triggers"], body=TriggerIdSchema,
      responses={200: OkSchema, 404: "not found", 429: USER_RATE_LIMITED})
async def delete_trigger(request: web.Request) -> web.Response:
    user = await _user(request)
    body = await load_body(request, TriggerIdSchema())
    await request.app[keys.TRIGGERS].delete(user.id, body["id"])
    return json_response({"status": "ok"})


@routes.post("/v2/triggers/update-enabled")
@docs("Enable or disable a trigger", tags=["triggers"], body=TriggerEnabledSchema,
      responses={200: TriggerResponseSchema, 404: "not found", 429: USER_RATE_LIMITED})
async def update_enabled(request: web.Request) -> web.Response:
    user = await _user(request)
    body = await load_body(request, TriggerEnabledSchema())
    trigger = await request.app[keys.TRIGGERS].set_enabled(user.id, body["id"], body["enabled"])
    return json_response({"status": "ok", "trigger": trigger.to_json()})
