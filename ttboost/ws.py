"""The app's WebSocket endpoints (spec §6): auth before the upgrade, replay, the client protocol."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from aiohttp import WSMsgType, web
from marshmallow import Schema, fields

from . import keys
from .api.common import bearer_token, user_for_token
from .bodies import InvalidJSON, parse_json
from .errors import ApiError, validation_error
from .accounts import normalize_username
from .licenses import has_active_license
from .messages import pick_language, text
from .openapi import BEARER, QUERY_TOKEN, docs
from .pipeline.demo import run_demo
from .revocation import close_for_license
from .sockets import Connection
from .users import User

_LOGGER = logging.getLogger(__name__)

CLOSE_INTERNAL: Final = 1011  # a bug while serving: the socket closes as a WebSocket, never with HTTP bytes
SEQ_MAX: Final = 2**63 - 1  # seq is a signed 64-bit integer in storage
CLOSE_TIMEOUT: Final = 5.0  # seconds to wait for the client's close reply
MAX_CLIENT_MESSAGE: Final = 64 * 1024  # bytes; client messages are tiny JSON commands

routes = web.RouteTableDef()


class WsQuerySchema(Schema):
    """Query of GET /v2/ws (docs only: the handler reads the three values itself)."""

    token = fields.String(metadata={"description": "access token (or send Authorization: Bearer)"})
    since = fields.Integer(metadata={"description": "replay the buffered events after this seq", "minimum": 0,
                                     "maximum": SEQ_MAX})
    demo = fields.String(metadata={"description": "1 or true: random chat/gift events instead of LIVE"})
    timing = fields.String(metadata={"description": "1 or true: event frames carry timing {tiktok_ms, "
                                                    "received_ms, sent_ms} (Unix ms)"})


_WS_DESCRIPTION: Final = ("A WebSocket upgrade: frames as in spec §6. One connection per user; a newer one "
                          "closes the older with 4001 `replaced`. Close codes: 4003 license_expired, 1008 too "
                          "slow, 1001 server shutdown.")
_WS_RESPONSES: Final = {101: "Switching Protocols: the WebSocket is open",
                        400: "not a WebSocket handshake (no Upgrade header)"}


def _since(raw: Any) -> int | None:
    """A seq from the query (digits) or a message (a JSON integer); ValueError for anything else."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        value = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:  # 1.5, true, "1e3", lists…: not a seq
        raise ValueError("since")
    if not 0 <= value <= SEQ_MAX:
        raise ValueError("since")
    return value


@routes.get("/v2/ws")
@docs("The app's WebSocket: LIVE events, status and replay", tags=["websocket"], security=(BEARER, QUERY_TOKEN),
      query=WsQuerySchema, description=_WS_DESCRIPTION, responses=_WS_RESPONSES)
async def ws_v2(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token") or bearer_token(request)
    user = await user_for_token(request, token)  # refused with 401 before the upgrade
    try:
        since = _since(request.query.get("since"))
    except ValueError:
        raise validation_error({"since": ["must be a whole number ≥ 0"]}) from None
    return await _serve(request, user, demo=_flag(request, "demo"), since=since, timing=_flag(request, "timing"))


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name) in ("1", "true")


@routes.get("/ws/{token}")
@docs("Legacy WebSocket of the first mobile build (demo events when no TikTok username is set)",
      tags=["websocket", "legacy"], security=(), path={"token": "the ws_token from POST /auth/login"},
      description=_WS_DESCRIPTION,
      responses={**_WS_RESPONSES, 401: "invalid token (refused before the upgrade)"})
async def ws_legacy(request: web.Request) -> web.StreamResponse:
    user = await user_for_token(request, request.match_info["token"])
    settings = await request.app[keys.SETTINGS].get(user.id)
    return await _serve(request, user, demo=not settings.get("tiktok_username"), since=None)


async def _serve(request: web.Request, user: User, *, demo: bool, since: int | None,
                 timing: bool = False) -> web.WebSocketResponse:
    app = request.app
    config = app[keys.CONFIG]
    dispatcher, bus, live, registry = app[keys.DISPATCHER], app[keys.BUS], app[keys.LIVE], app[keys.SOCKETS]
    await dispatcher.prepare(user.id)
    active = await has_active_license(app[keys.DB], user.id)
    channel = bus.get(user.id)
    assert channel is not None
    # Frames published from here on belong to this socket, even those sent while the upgrade completes.
    mark = channel.seq if since is None else since
    ws = web.WebSocketResponse(heartbeat=config.limits.ws_heartbeat_seconds, timeout=CLOSE_TIMEOUT,
                               max_msg_size=MAX_CLIENT_MESSAGE)
    await ws.prepare(request)
    language = pick_language(request.headers.get("Accept-Language"), config.server.language)
    channel.language = language
    conn = Connection(ws, user, config.limits.ws_send_queue, language, timing=timing, metrics=app[keys.METRICS],
                      read_timeout=config.limits.ws_read_timeout_seconds)
    registry.add(conn)
    live.app_connected(user.id)
    try:
        if not active:
            close_for_license(conn)
        else:
            await _start_stream(app, conn, since=mark, demo=demo)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await _handle(app, conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                conn.send_local("error", code="bad_request", message=text("bad_request", language))
            await conn.backpressure()
    except Exception:
        # After the upgrade the error middleware's 500 would be HTTP bytes on a WebSocket: close as one instead.
        _LOGGER.exception("ws user=%s: error while serving the socket", user.id)
        conn.close(CLOSE_INTERNAL, "internal error")
    finally:
        bus.detach(user.id, conn)
        registry.remove(conn)
        live.app_disconnected(user.id)
        await conn.release()
    return ws


async def _start_stream(app: web.Application, conn: Connection, *, since: int, demo: bool) -> None:
    """Replays what the app missed (the socket joins the live stream once the replay has caught up), then
    starts the LIVE watch (where the user's home is) or the demo."""
    user_id = conn.user.id
    _replay(app, conn, since)
    await _on_home(app, conn, "app_opened", {"demo": demo, "language": conn.language})
    if demo:
        limits = app[keys.CONFIG].limits
        conn.demo = asyncio.create_task(run_demo(app[keys.DISPATCHER], user_id, limits.demo_min_seconds,
                                                 limits.demo_max_seconds), name=f"demo-{user_id}")


async def _on_home(app: web.Application, conn: Connection, op: str, args: dict[str, Any]) -> None:
    """Runs the operation where the user's session lives. Its refusal (cluster mode: `busy`, no home could be
    reached in time) is an error frame and the socket stays open for the app to ask again, not a close 1011."""
    try:
        await app[keys.HOME].run(conn.user.id, op, args)
    except ApiError as exc:
        conn.send_local("error", code=exc.code, message=text(exc.code, conn.language))


def _replay(app: web.Application, conn: Connection, since: int) -> None:
    bus = app[keys.BUS]
    channel = bus.get(conn.user.id)
    assert channel is not None
    oldest = bus.oldest(conn.user.id)
    # The current state always reaches a new socket, once, with its original seq, before newer frames: when
    # the replay does not carry it (already seen, or trimmed out of the buffer).
    first = None
    if channel.last_status is not None and (channel.last_status[0] <= since or channel.last_status[0] < oldest):
        first = channel.last_status[1]
    conn.replay(bus, since, first)


async def _handle(app: web.Application, conn: Connection, data: str) -> None:
    language = conn.language
    try:
        message = parse_json(data)
        action = message.get("action") if isinstance(message, dict) else None
    except InvalidJSON:  # also nesting past 32 levels, NaN/Infinity and 1e309
        action = None
    if action == "ping":
        conn.send_local("pong")
    elif action == "resume":
        try:
            since = _since(message.get("since", 0))
        except ValueError:
            since = None
        if since is None:
            conn.send_local("error", code="bad_request", message=text("bad_request", language))
        else:
            conn.replay(app[keys.BUS], since)
    elif action == "connect_tiktok":
        await _connect_tiktok(app, conn, message.get("username"))
    elif action == "disconnect_tiktok":
        await _on_home(app, conn, "disconnect", {})
    else:
        conn.send_local("error", code="bad_request", message=text("bad_request", language))


async def _connect_tiktok(app: web.Application, conn: Connection, raw_username: Any) -> None:
    user_id, language = conn.user.id, conn.language
    if raw_username is not None:
        try:
            username = normalize_username(raw_username) if isinstance(raw_username, str) else None
        except ValueError:
            username = None
        if not username:
            conn.send_local("error", code="bad_request", message=text("bad_request", language))
            return
    else:
        username = (await app[keys.SETTINGS].get(user_id)).get("tiktok_username")
        if not username:
            conn.send_local("error", code="tiktok_username_missing",
                            message=text("tiktok_username_missing", language))
            return
    if not await has_active_license(app[keys.DB], user_id):
        conn.send_local("error", code="license_expired", message=text("license_expired", language))
        return
    await _on_home(app, conn, "connect", {"username": username})
