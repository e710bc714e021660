"""FakeTikTok: local aiohttp stand-ins for tiktok.com, webcast, the sign server and the push socket."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import betterproto2
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestServer
from TikTokLive.events import (
    CommentEvent, ControlEvent, GiftEvent, JoinEvent, LikeEvent, RoomUserSeqEvent, SocialEvent,
    SubNotifyEvent,
)
from TikTokLive.proto import (
    BaseProtoMessage, CommonMessageData, ControlAction, ExtendedGift, ExtendedUser,
    ProtoMessageFetchResult, PushHeader, WebcastPushFrame,
)
from TikTokLiveProto.v3.webcast.model.message.common import Text

from ttboost.config import TikTokConfig

_LOGGER = logging.getLogger(__name__)

FakeUser = tuple[str, str, int]  # (nickname, handle, numeric id)
_WAIT: Final = 5.0  # seconds any wait_* helper allows before failing the test
_PUSH_PATH: Final = "/webcast/im/push/v2/"
# Display keys TikTok puts on a WebcastSocialMessage; the library picks Follow/ShareEvent by them.
_FOLLOW_KEY: Final = "pm_main_follow_message_viewer_2"
_SHARE_KEY: Final = "pm_mt_guidance_share"


@dataclass(slots=True)
class _Streamer:
    unique_id: str
    exists: bool
    live: bool
    room_id: int


class FakeTikTok:
    """Two local servers: "tiktok" (pages, webcast API, push WebSocket) and the sign server.

    Use `async with FakeTikTok() as fake`, register streamers with `set_user`, point a TikTokAdapter at
    `fake.config()`, then script the LIVE with `send_*`, `drop`, `end_live`.
    """

    def __init__(self) -> None:
        self._streamers: dict[str, _Streamer] = {}
        self._tiktok = TestServer(self._tiktok_app(), host="127.0.0.1")
        self._sign = TestServer(self._sign_app(), host="127.0.0.1")
        self._ws: web.WebSocketResponse | None = None
        self._ws_room: int = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self._entered = asyncio.Event()  # the client sent im_enter_room on the current socket
        self._closed = asyncio.Event()  # a push socket finished
        self._rate_limit: float | None = None
        self._blocked = False
        self._next_id = 7_000_000_000
        # Observable counters for tests.
        self.sign_calls = 0
        self.sign_api_keys: list[str | None] = []  # X-Api-Key of each sign call
        self.page_requests: list[str] = []  # paths of tiktok.com / webcast API requests
        self.connections = 0  # push sockets accepted
        self.client_frames: list[str] = []  # payload_type of every frame the client sent
        self.close_codes: list[int | None] = []  # close code of every finished push socket
        self.room_sockets: dict[int, web.WebSocketResponse] = {}  # the open push socket of each room (load tests)
        self.create_times: dict[int, int] = {}  # msg_id -> common.create_time (Unix ms) of each message sent

    async def __aenter__(self) -> FakeTikTok:
        await self._tiktok.start_server()
        await self._sign.start_server()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Close open sockets first: otherwise server shutdown waits for their handlers.
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY) for ws in list(self._sockets)))
        await self._tiktok.close()
        await self._sign.close()

    # Set-up ------------------------------------------------------------------------------------

    @property
    def tiktok_url(self) -> str:
        return str(self._tiktok.make_url("")).rstrip("/")

    @property
    def sign_url(self) -> str:
        return str(self._sign.make_url("")).rstrip("/")

    def config(self, **overrides: Any) -> TikTokConfig:
        """A TikTokConfig with every TikTok URL pointing at this fake."""
        values: dict[str, Any] = {
            "sign_api_key": "fake-key", "sign_api_url": self.sign_url, "app_url": self.tiktok_url,
            "webcast_url": self.tiktok_url + "/webcast",
        }
        values.update(overrides)
        return TikTokConfig(**values)

    def set_user(self, unique_id: str, *, exists: bool = True, live: bool = True,
                 room_id: int | None = None) -> None:
        room = room_id if room_id is not None else 7_300_000_000 + len(self._streamers)
        self._streamers[unique_id.lstrip("@")] = _Streamer(unique_id.lstrip("@"), exists, live, room)

    def sign_rate_limit(self, retry_after: float) -> None:
        """The next sign call answers 429 asking to wait `retry_after` seconds."""
        self._rate_limit = retry_after

    def block_handshake(self, blocked: bool = True) -> None:
        """Push socket upgrades answer HTTP 200 (TikTok's "device blocked") until unblocked."""
        self._blocked = blocked

    # The LIVE ----------------------------------------------------------------------------------

    async def wait_connected(self, timeout: float = _WAIT) -> None:
        """Waits until a client has entered the room on a push socket."""
        await asyncio.wait_for(self._entered.wait(), timeout)

    async def wait_closed(self, timeout: float = _WAIT) -> None:
        """Waits until a push socket has finished (whoever closed it)."""
        await asyncio.wait_for(self._closed.wait(), timeout)

    async def send_chat(self, user: FakeUser, message: str, *, msg_id: int | None = None) -> int:
        return await self._send("WebcastChatMessage", CommentEvent(user=_user(user), content=message),
                                msg_id)

    async def send_gift(self, user: FakeUser, gift_id: int, name: str, diamonds: int, repeat_count: int,
                        repeat_end: bool, streakable: bool = True, *, msg_id: int | None = None) -> int:
        gift = ExtendedGift(id=gift_id, name=name, diamond_count=diamonds, type=1 if streakable else 2)
        event = GiftEvent(user=_user(user), gift=gift, gift_id=gift_id, repeat_count=repeat_count,
                          repeat_end=int(repeat_end))
        return await self._send("WebcastGiftMessage", event, msg_id)

    async def send_like(self, user: FakeUser, count: int, total: int, *, msg_id: int | None = None) -> int:
        return await self._send("WebcastLikeMessage", LikeEvent(user=_user(user), count=count, total=total),
                                msg_id)

    async def send_join(self, user: FakeUser, *, msg_id: int | None = None) -> int:
        return await self._send("WebcastMemberMessage", JoinEvent(user=_user(user), action=1), msg_id)

    async def send_follow(self, user: FakeUser, *, msg_id: int | None = None) -> int:
        return await self._send("WebcastSocialMessage", SocialEvent(user=_user(user)), msg_id, _FOLLOW_KEY)

    async def send_share(self, user: FakeUser, *, msg_id: int | None = None) -> int:
        return await self._send("WebcastSocialMessage", SocialEvent(user=_user(user)), msg_id, _SHARE_KEY)

    async def send_subscribe(self, user: FakeUser, sub_month: int = 1, *, msg_id: int | None = None) -> int:
        event = SubNotifyEvent(user=_user(user), sub_month=sub_month)
        return await self._send("WebcastSubNotifyMessage", event, msg_id)

    async def send_viewers(self, current: int, total: int, *, msg_id: int | None = None) -> int:
        # RoomUserSeqMessage: `total` is the current count, `total_user` everyone seen.
        return await self._send("WebcastRoomUserSeqMessage",
                                RoomUserSeqEvent(total=current, total_user=total), msg_id)

    async def drop(self, code: int = WSCloseCode.INTERNAL_ERROR) -> None:
        """Closes the push socket with `code` (1011: a drop)."""
        await self._socket().close(code=code)

    async def end_live(self, *, control: bool = True) -> None:
        """Ends the LIVE: a STREAM_ENDED control message (or a close 1000); the streamer goes offline."""
        for streamer in self._streamers.values():
            if streamer.room_id == self._ws_room:
                streamer.live = False
        if control:
            await self._send("WebcastControlMessage", ControlEvent(action=ControlAction.STREAM_ENDED), None)
        else:
            await self._socket().close(code=WSCloseCode.OK)

    def _socket(self) -> web.WebSocketResponse:
        if self._ws is None or self._ws.closed:
            raise AssertionError("no client is connected to the fake push socket")
        return self._ws

    async def _send(self, method: str, event: betterproto2.Message, msg_id: int | None,
                    display_key: str = "") -> int:
        # Encoded from the library's *event* classes: encoding a Webcast*Message parent first would
        # change how betterproto2 parses later messages (LIBRARIES.md).
        self._next_id += 1
        msg_id = self._next_id if msg_id is None else msg_id
        # TikTok stamps each message with its own create time (Unix ms) in the common header.
        self.create_times[msg_id] = created = int(time.time() * 1000)
        event.common = CommonMessageData(method=method, msg_id=msg_id, room_id=self._ws_room, create_time=created,
                                         display_text=Text(key=display_key) if display_key else None)
        result = ProtoMessageFetchResult(
            messages=[BaseProtoMessage(method=method, payload=bytes(event), msg_id=msg_id)],
            cursor=str(self._next_id), internal_ext=f"ext-{self._next_id}", need_ack=True,
        )
        frame = WebcastPushFrame(
            log_id=self._next_id, payload_type="msg", payload_encoding="pb",
            headers=[PushHeader(key="compress_type", value="gzip")], payload=gzip.compress(bytes(result)),
        )
        await self._socket().send_bytes(bytes(frame))
        return msg_id

    # tiktok.com and webcast ----------------------------------------------------------------------

    def _tiktok_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{handle}/live", self._live_page)
        app.router.add_get("/api-live/user/room/", self._user_room_api)
        app.router.add_get("/webcast/room/check_alive/", self._check_alive)
        app.router.add_get(_PUSH_PATH, self._push_socket)
        return app

    def _streamer(self, unique_id: str) -> _Streamer | None:
        streamer = self._streamers.get(unique_id.lstrip("@"))
        return streamer if streamer is not None and streamer.exists else None

    async def _live_page(self, request: web.Request) -> web.Response:
        self.page_requests.append(request.path)
        streamer = self._streamer(request.match_info["handle"])
        state: dict[str, Any] = {"AppContext": {}}
        if streamer is not None:
            user = {"uniqueId": streamer.unique_id, "roomId": str(streamer.room_id),
                    "status": 2 if streamer.live else 4}
            state["LiveRoom"] = {"liveRoomUserInfo": {"user": user}}
        script = f'<script id="SIGI_STATE" type="application/json">{json.dumps(state)}</script>'
        return web.Response(text=f"<html><body>{script}</body></html>", content_type="text/html")

    async def _user_room_api(self, request: web.Request) -> web.Response:
        self.page_requests.append(request.path)
        streamer = self._streamer(request.query.get("uniqueId", ""))
        if streamer is None:
            return web.json_response({"message": "user_not_found", "statusCode": 19881007})
        return web.json_response({"message": "", "statusCode": 0, "data": {
            "user": {"uniqueId": streamer.unique_id, "roomId": str(streamer.room_id)},
            "liveRoom": {"status": 2 if streamer.live else 4},
        }})

    async def _check_alive(self, request: web.Request) -> web.Response:
        self.page_requests.append(request.path)
        rooms = [int(r) for r in request.query.get("room_ids", "").split(",") if r]
        live = {s.room_id for s in self._streamers.values() if s.exists and s.live}
        return web.json_response({"data": [{"room_id": r, "alive": r in live} for r in rooms],
                                  "status_code": 0})

    async def _push_socket(self, request: web.Request) -> web.StreamResponse:
        if self._blocked:
            return web.Response(text="blocked", headers={"Handshake-Msg": "DEVICE_BLOCKED"})
        ws = web.WebSocketResponse(protocols=("echo-protocol",))
        await ws.prepare(request)
        self.connections += 1
        self._ws, self._ws_room = ws, int(request.query.get("room_id", "0"))
        room = self._ws_room
        self.room_sockets[room] = ws
        self._sockets.add(ws)
        self._entered.clear()
        self._closed.clear()
        try:
            # Keep reading whatever the client sends (im_enter_room, heartbeats, acks): disconnect()
            # on the client waits for the close handshake, which only a reader answers.
            async for msg in ws:
                if msg.type is WSMsgType.BINARY:
                    self._client_frame(msg.data)
        finally:
            self.close_codes.append(ws.close_code)
            self._sockets.discard(ws)
            if self._ws is ws:
                self._ws = None
            if self.room_sockets.get(room) is ws:
                del self.room_sockets[room]
            self._closed.set()
        return ws

    def _client_frame(self, data: bytes) -> None:
        """One binary frame from the client (a subclass under load may skip the parsing)."""
        frame = WebcastPushFrame().parse(data)
        self.client_frames.append(frame.payload_type)
        if frame.payload_type == "im_enter_room":
            self._entered.set()

    # Sign server -------------------------------------------------------------------------------

    def _sign_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/webcast/fetch", self._sign_fetch)
        return app

    async def _sign_fetch(self, request: web.Request) -> web.Response:
        self.sign_calls += 1
        self.sign_api_keys.append(request.headers.get("X-Api-Key"))
        if self._rate_limit is not None:
            retry_after, self._rate_limit = self._rate_limit, None
            # TikTokLive reads the wait from RateLimit-Remaining (and the reset time from RateLimit-Reset).
            headers = {"RateLimit-Remaining": str(int(retry_after)),
                       "RateLimit-Reset": str(int(time.time() + retry_after))}
            return web.json_response({"message": "Too many connections (fake)"}, status=429, headers=headers)
        push = str(self._tiktok.make_url(_PUSH_PATH)).replace("http://", "ws://", 1)
        result = ProtoMessageFetchResult(
            is_first=True, cursor="fake-cursor", internal_ext="fake-ext", fetch_interval=1000,
            route_params={"room_id": request.query.get("room_id", ""), "wrss": "fake"}, push_server=push,
        )
        return web.Response(body=bytes(result), content_type="application/protobuf",
                            headers={"X-Set-TT-Cookie": "ttwid=fake-ttwid; Path=/; Domain=.tiktok.com"})


def _user(user: FakeUser) -> ExtendedUser:
    nickname, handle, user_id = user
    return ExtendedUser(nickname=nickname, display_id=handle, id=user_id)
