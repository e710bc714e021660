"""OBS overlay routes (spec §9): the key (issue/rotate, revoke), the page, and its read-only WebSocket."""

from __future__ import annotations

import json
import logging

from aiohttp import WSMsgType, web
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates

from .. import keys
from ..errors import json_response, not_found
from ..licenses import has_active_license
from ..messages import pick_language, text
from ..openapi import Binary, docs
from ..overlay import store
from ..overlay.page import ALERT_TYPES, DEFAULT_EVENTS, HOLD_RANGE
from ..sockets import Connection
from ..users import get_user
from ..revocation import CLOSE_KEY_REVOKED, close_for_license
from ..ws import CLOSE_TIMEOUT, MAX_CLIENT_MESSAGE
from .common import authenticate
from .responses import OkSchema

_LOGGER = logging.getLogger(__name__)


routes = web.RouteTableDef()


class OverlayKeySchema(Schema):
    """The overlay key and the page's URL (shown once: only its hash is stored)."""

    key = fields.String(required=True, metadata={"description": "32 characters; the page's only credential"})
    overlay_url = fields.String(required=True, metadata={"description": "<public_url>/overlay/<key>: add it to "
                                                                        "OBS as a browser source (1920×1080)"})


class OverlayPageQuerySchema(Schema):
    """Options of the overlay page (the page reads them itself; the server checks them first)."""

    class Meta:
        unknown = EXCLUDE  # OBS users add cache-busters and the like

    events = fields.String(load_default=",".join(DEFAULT_EVENTS), metadata={
        "description": f"comma-separated alert types: {', '.join(ALERT_TYPES)}"})
    chat = fields.String(load_default="0", validate=validate.OneOf(("0", "1")),
                         metadata={"description": "1: show chat lines (and read their speech)"})
    audio = fields.String(load_default="1", validate=validate.OneOf(("0", "1")),
                          metadata={"description": "0: no sound at all"})
    rehearsal = fields.String(load_default="0", validate=validate.OneOf(("0", "1")),
                              metadata={"description": "1: also show a rehearsal's frames (POST /v2/streams/{id}/"
                                                       "rehearse); by default they stay off the stream"})
    hold = fields.Integer(load_default=5, validate=validate.Range(*HOLD_RANGE), metadata={
        "description": "seconds an alert stays at least; a longer sound keeps it up until it ends"})
    lang = fields.String(validate=validate.OneOf(("ru", "en")),
                         metadata={"description": "alert texts; default [server] language"})

    @validates("events")
    def _known_events(self, value: str, **_kwargs: object) -> None:
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in ALERT_TYPES]
        if unknown or not names:
            raise ValidationError(f"each of: {', '.join(ALERT_TYPES)}")


class OverlayWsQuerySchema(Schema):
    key = fields.String(required=True, metadata={"description": "the overlay key"})


@routes.post("/v2/overlay/key")
@docs("Create the OBS overlay key, or rotate it (the old URL and its open sockets stop at once)",
      tags=["overlay"], responses={200: OverlayKeySchema})
async def issue_key(request: web.Request) -> web.Response:
    user = await authenticate(request)
    app = request.app
    key = await store.issue(app[keys.DB], user.id)
    app[keys.SOCKETS].close_overlays(user.id, CLOSE_KEY_REVOKED, "key_revoked")
    return json_response({"key": key, "overlay_url": f"{app[keys.CONFIG].public_url}/overlay/{key}"})


@routes.delete("/v2/overlay/key")
@docs("Revoke the OBS overlay key (its page and open sockets stop; no new key)", tags=["overlay"],
      responses={200: OkSchema})
async def revoke_key(request: web.Request) -> web.Response:
    user = await authenticate(request)
    await store.revoke(request.app[keys.DB], user.id)  # idempotent: no key is fine
    request.app[keys.SOCKETS].close_overlays(user.id, CLOSE_KEY_REVOKED, "key_revoked")
    return json_response({"status": "ok"})


@routes.get("/overlay/{key}")
@docs("The OBS overlay page (self-contained HTML; no external request)", tags=["overlay"], security=(),
      path={"key": "the overlay key"}, query=OverlayPageQuerySchema,
      responses={200: Binary("text/html", "the page"), 404: "not found: unknown, rotated or revoked key"})
async def overlay_page(request: web.Request) -> web.Response:
    app = request.app
    if await store.owner(app[keys.DB], request.match_info["key"]) is None:
        raise not_found()
    OverlayPageQuerySchema().load(dict(request.query))  # 422 with the bad option named
    return await app[keys.OVERLAY_PAGE].response(language=app[keys.CONFIG].server.language)


@routes.get("/v2/overlay/ws")
@docs("The overlay's WebSocket: the app's event frames, read-only", tags=["websocket", "overlay"], security=(),
      query=OverlayWsQuerySchema,
      description="Any number at once; never replaces or counts as the app's socket. Client messages: only "
                  "`{\"action\": \"ping\"}` (anything else gets a `bad_request` error frame). Close codes: 4002 "
                  "`key_revoked` (rotated or revoked: stop), 4003 `license_expired`, 1008 too slow, 1001 shutdown.",
      responses={101: "Switching Protocols: the WebSocket is open", 400: "not a WebSocket handshake",
                 404: "not found: unknown, rotated or revoked key"})
async def overlay_ws(request: web.Request) -> web.StreamResponse:
    app = request.app
    db, key = app[keys.DB], request.query.get("key", "")
    user_id = await store.owner(db, key)
    user = await get_user(db, user_id) if user_id is not None else None
    if user is None:
        raise not_found()  # refused before the upgrade
    config = app[keys.CONFIG]
    active = await has_active_license(db, user.id)
    await app[keys.DISPATCHER].prepare(user.id)
    ws = web.WebSocketResponse(heartbeat=config.limits.ws_heartbeat_seconds, timeout=CLOSE_TIMEOUT,
                               max_msg_size=MAX_CLIENT_MESSAGE)
    await ws.prepare(request)
    language = pick_language(request.headers.get("Accept-Language"), config.server.language)
    conn = Connection(ws, user, config.limits.ws_send_queue, language, kind="overlay", metrics=app[keys.METRICS],
                      read_timeout=config.limits.ws_read_timeout_seconds)
    bus, registry = app[keys.BUS], app[keys.SOCKETS]
    registry.add_overlay(conn, store.digest(key))
    try:
        # Attached before any await: the page may see the handshake answered and an event published right after.
        if active:
            bus.attach_overlay(user.id, conn)
        else:
            close_for_license(conn)
        if await store.owner(db, key) != user.id:  # rotated while this socket was opening: it missed the close
            conn.close(CLOSE_KEY_REVOKED, "key_revoked")
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and _is_ping(msg.data):
                conn.send_local("pong")
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                conn.send_local("error", code="bad_request", message=text("bad_request", language))
            await conn.backpressure()
    finally:
        bus.detach_overlay(user.id, conn)
        registry.remove_overlay(conn)
        await conn.release()
    return ws


def _is_ping(data: str) -> bool:
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("action") == "ping"
