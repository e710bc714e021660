"""POST /v2/events/simulate: a fake event through the real pipeline (the app's "test this trigger" button)."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web
from marshmallow import fields, validate

from .. import keys
from ..bodies import BodySchema
from ..errors import json_response
from ..licenses import require_active_license
from ..openapi import docs
from ..pipeline.events import TRIGGER_EVENT_TYPES, LiveEvent
from .common import authenticate, limit_by_user, load_body
from .responses import LICENSE_ERRORS, USER_RATE_LIMITED, SimulatedSchema

SIMULATED_USER_ID: Final = "0"  # TikTok ids are never 0: simulated viewers cannot collide with real ones

routes = web.RouteTableDef()


class SimulateSchema(BodySchema):
    type = fields.String(required=True, validate=validate.OneOf(TRIGGER_EVENT_TYPES),
                         metadata={"description": "event type to simulate; viewer_first_message sends a chat "
                                                  "from a viewer new to the stream"})
    user = fields.String(load_default="Test Viewer", validate=validate.Length(1, 64),
                         metadata={"description": "viewer handle (also used as the nickname)"})
    message = fields.String(load_default="", validate=validate.Length(max=500))
    gift_name = fields.String(load_default="Rose", validate=validate.Length(1, 64))
    gift_id = fields.Integer(load_default=5655, strict=True, validate=validate.Range(0, 2**31 - 1))
    count = fields.Integer(load_default=1, strict=True, validate=validate.Range(1, 10_000))
    diamond_count = fields.Integer(load_default=1, strict=True, validate=validate.Range(0, 1_000_000))
    likes = fields.Integer(load_default=1, strict=True, validate=validate.Range(1, 10_000))


def simulated_event(data: dict[str, Any]) -> LiveEvent:
    name = data["user"]
    handle = name.strip().lstrip("@").lower().replace(" ", "_")
    # A first message is a chat message: the chat frame goes out, its viewer_first_message frame follows.
    type_ = "chat" if data["type"] == "viewer_first_message" else data["type"]
    event = LiveEvent(type_, user=name, username=handle, user_id=f"{SIMULATED_USER_ID}:{handle}")
    if event.type == "chat":
        event.message = data["message"] or "привет!"
    elif event.type == "gift":  # a simulated gift is a finished combo: it goes out at once
        event.gift_id, event.gift_name = data["gift_id"], data["gift_name"]
        event.count, event.diamond_count = data["count"], data["diamond_count"]
    elif event.type == "like":
        event.count = data["likes"]
    elif event.type == "subscribe":
        event.sub_month = 1
    return event


@routes.post("/v2/events/simulate")
@docs("Run a fake LIVE event through the real pipeline (the app's \"test this trigger\")", tags=["events"],
      body=SimulateSchema, responses={200: SimulatedSchema, 403: LICENSE_ERRORS[403], 429: USER_RATE_LIMITED})
async def simulate(request: web.Request) -> web.Response:
    user = await authenticate(request)
    await limit_by_user(request, "simulate", user)
    data = await load_body(request, SimulateSchema())
    await require_active_license(request.app[keys.DB], user.id)  # it reaches the socket and may speak
    body = await request.app[keys.HOME].run(user.id, "simulate", data)  # where the user's frames are numbered
    return json_response(body)
