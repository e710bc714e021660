"""The test suite's FakeTikTok, made fit for load: frames built ahead of time, a reader that does not parse acks.

Encoding one push frame with betterproto2 costs ~0.6 ms here, which would make the load generator the
bottleneck. Instead each (event type, viewer, variant) is encoded once with the library's own event classes,
with a fixed-width nickname and a sentinel msg_id; frames are then made by substituting those bytes and
wrapping the payload in the three outer messages with a minimal protobuf writer (field numbers read from the
library's metadata, and the result checked once by parsing it back with the library).
"""

from __future__ import annotations

import gzip
from typing import Final

from aiohttp import web
from TikTokLive.events import CommentEvent, GiftEvent, LikeEvent
from TikTokLive.proto import (
    BaseProtoMessage, CommonMessageData, ExtendedGift, ExtendedUser, ProtoMessageFetchResult, WebcastPushFrame,
)

from bench.workload import EventSpec, NICK_DIGITS, NICK_PREFIX, nickname
from tests.fake_tiktok import FakeTikTok

_NICK_SENTINEL: Final = NICK_PREFIX + "#" * NICK_DIGITS
_MSG_ID_BASE: Final = 1 << 36  # every msg_id in [2^35, 2^42) is a 6-byte varint: same length as the sentinel
_MSG_ID_SENTINEL: Final = (1 << 42) - 12345
_METHODS: Final = {"chat": "WebcastChatMessage", "gift": "WebcastGiftMessage", "like": "WebcastLikeMessage"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _number(cls: type, field: str) -> int:
    return cls._betterproto.meta_by_field_name[field].number  # type: ignore[attr-defined]


def _len_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


class FrameFactory:
    """Push frames for EventSpecs, as TikTok sends them: one gzip'ed ProtoMessageFetchResult per frame."""

    def __init__(self, room_id: int) -> None:
        self._room_id = room_id
        self._templates: dict[tuple[object, ...], tuple[bytes, str]] = {}
        self._sentinel_id = _varint(_MSG_ID_SENTINEL)
        self._f = {
            "msg_method": _number(BaseProtoMessage, "method"), "msg_payload": _number(BaseProtoMessage, "payload"),
            "msg_id": _number(BaseProtoMessage, "msg_id"), "res_messages": _number(ProtoMessageFetchResult, "messages"),
            "res_cursor": _number(ProtoMessageFetchResult, "cursor"),
            "res_ext": _number(ProtoMessageFetchResult, "internal_ext"),
            "res_ack": _number(ProtoMessageFetchResult, "need_ack"),
            "pf_log_id": _number(WebcastPushFrame, "log_id"), "pf_headers": _number(WebcastPushFrame, "headers"),
            "pf_encoding": _number(WebcastPushFrame, "payload_encoding"),
            "pf_type": _number(WebcastPushFrame, "payload_type"), "pf_payload": _number(WebcastPushFrame, "payload"),
        }
        header = _len_field(1, b"compress_type") + _len_field(2, b"gzip")  # PushHeader(key, value)
        self._headers = _len_field(self._f["pf_headers"], header)
        self._check()

    def _template(self, spec: EventSpec) -> tuple[bytes, str]:
        key = (spec.type, spec.viewer, spec.message, spec.gift_id, spec.gift_name, spec.diamonds, spec.like_count)
        found = self._templates.get(key)
        if found is not None:
            return found
        user = ExtendedUser(nickname=_NICK_SENTINEL, display_id=spec.handle, id=spec.user_id)
        method = _METHODS[spec.type]
        if spec.type == "chat":
            event = CommentEvent(user=user, content=spec.message)
        elif spec.type == "gift":
            # Not streakable (type 2): it goes out at once, as a finished combo's last delivery does.
            gift = ExtendedGift(id=spec.gift_id, name=spec.gift_name, diamond_count=spec.diamonds, type=2)
            event = GiftEvent(user=user, gift=gift, gift_id=spec.gift_id, repeat_count=1, repeat_end=1)
        else:
            # The room total is the one per-event number a like template cannot hold: it goes in its own slot.
            event = LikeEvent(user=user, count=spec.like_count, total=0)
        event.common = CommonMessageData(method=method, msg_id=_MSG_ID_SENTINEL, room_id=self._room_id)
        payload = bytes(event)
        assert payload.count(_NICK_SENTINEL.encode()) == 1 and payload.count(self._sentinel_id) == 1
        self._templates[key] = (payload, method)
        return payload, method

    def frame(self, spec: EventSpec) -> bytes:
        return self.batch([spec])

    def batch(self, specs: list[EventSpec]) -> bytes:
        """One push frame carrying these events in order (TikTok batches messages in busy rooms)."""
        f = self._f
        messages = b"".join(_len_field(f["res_messages"], self._message(spec)) for spec in specs)
        msg_id = _MSG_ID_BASE + specs[0].idx
        result = (messages + _len_field(f["res_cursor"], str(msg_id).encode())
                  + _len_field(f["res_ext"], f"ext-{msg_id}".encode()) + _int_field(f["res_ack"], 1))
        return (_int_field(f["pf_log_id"], msg_id) + self._headers + _len_field(f["pf_encoding"], b"pb")
                + _len_field(f["pf_type"], b"msg") + _len_field(f["pf_payload"], gzip.compress(result, 1)))

    def _message(self, spec: EventSpec) -> bytes:
        payload, method = self._template(spec)
        msg_id = _MSG_ID_BASE + spec.idx
        payload = (payload.replace(_NICK_SENTINEL.encode(), nickname(spec.idx).encode())
                   .replace(self._sentinel_id, _varint(msg_id)))
        if spec.type == "like":
            payload += _int_field(_number(LikeEvent, "total"), spec.like_total)
        f = self._f
        return (_len_field(f["msg_method"], method.encode()) + _len_field(f["msg_payload"], payload)
                + _int_field(f["msg_id"], msg_id))

    def _check(self) -> None:
        """Parses one frame of each kind back with the library: the hand-made wrapping must be exact."""
        from bench.workload import event_spec

        for idx in (0, 12, 17, 60):  # chat (with a keyword), gift, like, chat
            spec = event_spec(idx)
            frame = WebcastPushFrame().parse(self.frame(spec))
            assert frame.payload_type == "msg" and frame.headers[0].value == "gzip"
            result = ProtoMessageFetchResult().parse(gzip.decompress(frame.payload))
            assert result.need_ack and len(result.messages) == 1
            message = result.messages[0]
            cls = {"chat": CommentEvent, "gift": GiftEvent, "like": LikeEvent}[spec.type]
            event = cls().parse(message.payload)
            assert event.user.nickname == nickname(idx) and event.common.msg_id == _MSG_ID_BASE + idx
            if spec.type == "like":
                assert event.total == spec.like_total
        specs = [event_spec(idx) for idx in range(5)]
        frame = WebcastPushFrame().parse(self.batch(specs))
        result = ProtoMessageFetchResult().parse(gzip.decompress(frame.payload))
        assert [m.msg_id for m in result.messages] == [_MSG_ID_BASE + s.idx for s in specs]


class BenchTikTok(FakeTikTok):
    """FakeTikTok whose push socket reader only looks for the room entry, then counts what the client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.client_messages = 0  # acks and heartbeats after the room entry

    @property
    def room_id(self) -> int:
        return self._ws_room

    def push_socket(self) -> web.WebSocketResponse:
        return self._socket()

    def _client_frame(self, data: bytes) -> None:
        if self._entered.is_set():
            self.client_messages += 1  # acks: parsing them would only load the load generator
        elif WebcastPushFrame().parse(data).payload_type == "im_enter_room":
            self._entered.set()
