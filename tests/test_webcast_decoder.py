"""The fast push-frame decoder (live/webcast.py) against TikTokLive's own parse: same schema, same events, same acks."""

from __future__ import annotations

import dataclasses
import gzip
import random
from typing import Any

import pytest

from ttboost.live.normalize import stamp
from ttboost.live.tiktok import _load_library
from ttboost.pipeline.events import LiveEvent

LIVE_END = "LIVE_END"
UNICODE = ["привет", "🌹🔥 x3", "مرحبا", "e\u0301\u0301", "zero\u200bwidth", "中文弹幕", "", "a" * 500]
FOLLOW_KEY, SHARE_KEY = "pm_main_follow_message_viewer_2", "pm_mt_guidance_share"


@pytest.fixture
async def lib() -> Any:
    return await _load_library()


@pytest.fixture
async def client(lib: Any) -> Any:
    # A real client, never connected: its _parse_webcast_response is the library's own frame → events path.
    client = lib.TikTokLiveClient(unique_id="streamer")
    client._room_id = 7001
    yield client
    await client.web.close()
    await client.web.signer.client.aclose()


def _message(method: str, event: Any, msg_id: int, key: str = "") -> Any:
    from TikTokLive.proto import BaseProtoMessage, CommonMessageData
    from TikTokLiveProto.v3.webcast.model.message.common import Text

    # create_time: TikTok's own stamp (Unix ms), varied per message so a decoder that drops it is seen.
    event.common = CommonMessageData(method=method, msg_id=msg_id, create_time=1_790_000_000_000 + msg_id * 7,
                                     display_text=Text(key=key) if key else None)
    return BaseProtoMessage(method=method, payload=bytes(event), msg_id=msg_id)


def _frame(messages: list[Any], *, log_id: int = 9, compress: str = "gzip", need_ack: bool = True,
           ext: str = "ext-1") -> bytes:
    from TikTokLive.proto import ProtoMessageFetchResult, PushHeader, WebcastPushFrame

    result = bytes(ProtoMessageFetchResult(messages=messages, internal_ext=ext, need_ack=need_ack, cursor="c"))
    headers = [PushHeader(key="compress_type", value=compress)] if compress else []
    payload = gzip.compress(result) if compress == "gzip" else result
    return bytes(WebcastPushFrame(log_id=log_id, payload_type="msg", payload_encoding="pb", headers=headers,
                                  payload=payload))


def _kinds(rng: random.Random) -> list[tuple[str, Any, str]]:
    """(method, library event, display key) for every kind the app gets, and some it does not."""
    from TikTokLive import events
    from TikTokLive.proto import ControlAction, ExtendedGift, ExtendedUser

    def user() -> Any:
        if rng.random() < 0.1:
            return None
        return ExtendedUser(id=rng.choice([0, 42, 2**63 - 1]), nickname=rng.choice(UNICODE),
                            display_id=rng.choice(["bob", "", "_x.y_"]))

    gift = ExtendedGift(id=rng.choice([0, 5655]), name=rng.choice(UNICODE), diamond_count=rng.randint(0, 29999),
                        type=rng.choice([1, 2]))
    return [
        ("WebcastChatMessage", events.CommentEvent(user=user(), content=rng.choice(UNICODE)), ""),
        ("WebcastGiftMessage", events.GiftEvent(user=user(), gift=gift if rng.random() < 0.9 else None,
                                                gift_id=rng.choice([0, 7934]), repeat_count=rng.randint(0, 99),
                                                repeat_end=rng.randint(0, 1)), ""),
        ("WebcastLikeMessage", events.LikeEvent(user=user(), count=rng.randint(0, 15),
                                                total=rng.randint(0, 10**9)), ""),
        ("WebcastMemberMessage", events.JoinEvent(user=user(), action=1), ""),
        ("WebcastSocialMessage", events.SocialEvent(user=user()), FOLLOW_KEY),
        ("WebcastSocialMessage", events.SocialEvent(user=user()), SHARE_KEY),
        ("WebcastSocialMessage", events.SocialEvent(user=user()), "pm_other"),  # neither: no event
        ("WebcastSubNotifyMessage", events.SubNotifyEvent(user=user(), sub_month=rng.randint(0, 36)), ""),
        ("WebcastRoomUserSeqMessage", events.RoomUserSeqEvent(total=rng.randint(0, 10**5),
                                                              total_user=rng.randint(0, 10**7)), ""),
        ("WebcastControlMessage", events.ControlEvent(action=ControlAction.STREAM_PAUSED), ""),
        ("WebcastRoomMessage", events.RoomEvent(content="welcome"), ""),  # mapped, nobody listens
        ("WebcastNewFeatureMessage", events.CommentEvent(content="?"), ""),  # a type the library does not know
    ]


def _corpus() -> list[bytes]:
    from TikTokLive import events
    from TikTokLive.proto import ControlAction

    rng = random.Random(12)
    frames: list[bytes] = []
    msg_id = 100
    for _ in range(3):  # every kind alone, each way a frame may come
        for method, event, key in _kinds(rng):
            msg_id += 1
            for compress, need_ack in (("gzip", True), ("", False), ("none", True)):
                frames.append(_frame([_message(method, event, msg_id, key)], log_id=msg_id, compress=compress,
                                     need_ack=need_ack, ext=rng.choice(["", "ext-é"])))
    for size in (2, 10, 50, 50, 50):  # mixed frames, up to the 50 messages of a busy room
        kinds = [k for _ in range(size // 12 + 1) for k in _kinds(rng)]
        frames.append(_frame([_message(m, e, msg_id + i, k) for i, (m, e, k) in enumerate(rng.sample(kinds, size))]))
        msg_id += size
    ended = _message("WebcastControlMessage", events.ControlEvent(action=ControlAction.STREAM_ENDED), 1)
    chat = _message("WebcastChatMessage", events.CommentEvent(content="after the end"), 2)
    frames.append(_frame([chat, ended, chat]))
    return frames


async def _library(lib: Any, client: Any, data: bytes) -> tuple[list[Any], bytes | None]:
    """What TikTokLive makes of a frame, through the adapter's conversions, and the ack it sends."""
    from TikTokLive.client.ws.ws_utils import extract_webcast_response_message
    from TikTokLive.proto import WebcastPushFrame

    frame = WebcastPushFrame().parse(data)
    response = extract_webcast_response_message(frame)
    out: list[Any] = []
    async for event in client._parse_webcast_response(response):
        if isinstance(event, lib.LiveEndEvent):
            out.append(LIVE_END)  # the adapter stops reading there
            break
        if type(event) in lib.converters:  # as the adapter's consumer converts and stamps them
            out.append(stamp(lib.converters[type(event)](event), event.common.create_time))
    ack = None
    if response.need_ack:
        ack = bytes(WebcastPushFrame(payload_type="ack", payload_encoding="pb", log_id=frame.log_id,
                                     payload=(response.internal_ext or "-").encode()))
    return out, ack


def _read_now(event: Any) -> Any:
    return dataclasses.replace(event, received_ms=0) if isinstance(event, LiveEvent) else event


async def test_fast_path_gives_the_library_events_and_acks(lib: Any, client: Any) -> None:
    corpus = _corpus()
    kinds = set()
    for data in corpus:
        decoded = lib.decoder.decode(data)
        assert decoded is not None  # none of these needs the library: the comparison below is not vacuous
        fast = [*decoded.events, *([LIVE_END] if decoded.live_ended else [])]
        library, ack = await _library(lib, client, data)
        # received_ms is when each path read the event: the same up to the ms the two reads are apart.
        assert [_read_now(e) for e in fast] == [_read_now(e) for e in library] and decoded.ack == ack
        assert all(e.tiktok_ms and e.received_ms for e in fast if isinstance(e, LiveEvent))
        kinds.update(e.type if isinstance(e, LiveEvent) else e for e in fast)
    assert kinds == {"chat", "gift", "like", "viewer_join", "follow", "share", "subscribe", "viewer", LIVE_END}
    assert max(len(lib.decoder.decode(d).events) for d in corpus) >= 30  # the 50-message frames were read whole


async def test_frames_with_rules_it_does_not_mirror_are_left_to_the_library(lib: Any) -> None:
    from TikTokLive import events
    from TikTokLive.proto import PushHeader, WebcastPushFrame

    chat = events.CommentEvent(content="hi")
    left = [
        # The library would add a FollowEvent made from a non-social message by its display key.
        _frame([_message("WebcastChatMessage", chat, 1, FOLLOW_KEY)]),
        _frame([_message("WebcastRoomMessage", events.RoomEvent(content="x"), 1, SHARE_KEY)]),
        bytes(WebcastPushFrame(payload_type="msg", payload=b"\x00garbage",
                               headers=[PushHeader(key="compress_type", value="gzip")])),
        bytes(WebcastPushFrame(payload_type="msg", payload=b"x", headers=[PushHeader(key="compress_type",
                                                                                       value="br")])),
        bytes(WebcastPushFrame(payload_type="hb")),
        b"\xff\xff not protobuf",
    ]
    assert [lib.decoder.decode(data) for data in left] == [None] * len(left)
    # A chat without the display key is decoded: the check is the key, not the type.
    assert lib.decoder.decode(_frame([_message("WebcastChatMessage", chat, 1, "")])) is not None


def test_schema_matches_tiktoklive_proto() -> None:
    """Every field the fast decoder declares has TikTokLiveProto's number, type and message type."""
    from TikTokLive.events.proto_events import EVENT_MAPPINGS
    from TikTokLive.proto import (
        BaseProtoMessage, CommonMessageData, Gift, ProtoMessageFetchResult, PushHeader, User, WebcastPushFrame,
    )
    from TikTokLiveProto.v3.webcast.model.message.common import Text

    from ttboost.live.webcast import SCHEMA

    classes: dict[str, Any] = {
        "WebcastPushFrame": WebcastPushFrame, "PushHeader": PushHeader, "Text": Text, "User": User, "Gift": Gift,
        "ProtoMessageFetchResult": ProtoMessageFetchResult, "BaseProtoMessage": BaseProtoMessage,
        "CommonMessageData": CommonMessageData, **EVENT_MAPPINGS,  # event subclasses: same fields as the parents
    }
    wire_alike = {("int32", "enum")}
    for name, fields in SCHEMA.items():
        targets = list(EVENT_MAPPINGS.values()) if name == "AnyMessage" else [classes[name]]
        for cls in targets:
            meta = cls._betterproto
            for field, number, type_ in fields:
                library = meta.meta_by_field_name[field]
                ours = type_.removesuffix("[]")
                assert (library.number, library.repeated) == (number, type_.endswith("[]")), (name, field)
                if library.proto_type == "message":
                    assert meta.cls_by_field[field].__name__.removeprefix("Extended") == ours, (name, field)
                else:
                    assert library.proto_type == ours or (ours, library.proto_type) in wire_alike, (name, field)

