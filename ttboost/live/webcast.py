"""Fast decoding of TikTok's push frames (upb protobuf) into LiveEvents, for the messages the app forwards.

TikTokLive parses every message of every frame with betterproto2 and pydantic (~0.3 ms a chat message, most
of the server's CPU per event). Here the same wire format is read by protobuf's C parser (upb) through
message classes that declare only the fields the project forwards: the rest of each message stays unparsed
bytes. A frame this module cannot vouch for is left to the library (`decode_frame` returns None), so every
rule of the library that is not mirrored here (is_first frames, other compressions, payloads it would reject,
the display-key rule on message types other than the social one) keeps the library's own behaviour.

The schema below is a subset of the one TikTokLiveProto was generated from, with the same message and field
names, numbers and types (tests/test_webcast_decoder.py checks each field against TikTokLiveProto's own
metadata). It is declared here and turned into descriptors at import, which is what protoc's generated
`_pb2` modules do too, so there is no protoc in the toolchain and no generated file to regenerate.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ttboost.live.normalize import gift_event, live_event, stamp
from ttboost.pipeline.events import LiveEvent

_PACKAGE: Final = "ttboost.webcast"
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS: Final = {"int64": _F.TYPE_INT64, "int32": _F.TYPE_INT32, "bool": _F.TYPE_BOOL,
                   "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES}

# message → (field, number, type); "Name[]" is a repeated message. TikTokLiveProto's class names in comments.
SCHEMA: Final[dict[str, tuple[tuple[str, int, str], ...]]] = {
    "WebcastPushFrame": (("log_id", 2, "int64"), ("headers", 5, "PushHeader[]"),
                         ("payload_encoding", 6, "string"), ("payload_type", 7, "string"),
                         ("payload", 8, "bytes")),
    "PushHeader": (("key", 1, "string"), ("value", 2, "string")),
    "ProtoMessageFetchResult": (("messages", 1, "BaseProtoMessage[]"), ("internal_ext", 5, "string"),
                                ("need_ack", 9, "bool"), ("is_first", 11, "bool")),
    "BaseProtoMessage": (("method", 1, "string"), ("payload", 2, "bytes")),
    "CommonMessageData": (("msg_id", 2, "int64"), ("create_time", 4, "int64"), ("display_text", 8, "Text")),
    "Text": (("key", 1, "string"),),
    "User": (("id", 1, "int64"), ("nickname", 3, "string"), ("display_id", 38, "string")),
    "Gift": (("id", 5, "int64"), ("type", 11, "int32"), ("diamond_count", 12, "int32"), ("name", 16, "string")),
    # Any Webcast*Message: each has `common` as field 1 (read to see the display key of messages not decoded).
    "AnyMessage": (("common", 1, "CommonMessageData"),),
    "WebcastChatMessage": (("common", 1, "CommonMessageData"), ("user", 2, "User"), ("content", 3, "string")),
    "WebcastGiftMessage": (("common", 1, "CommonMessageData"), ("gift_id", 2, "int64"),
                           ("repeat_count", 5, "int32"), ("user", 7, "User"), ("repeat_end", 9, "int32"),
                           ("gift", 15, "Gift")),
    "WebcastLikeMessage": (("common", 1, "CommonMessageData"), ("count", 2, "int32"), ("total", 3, "int64"),
                           ("user", 5, "User")),
    "WebcastMemberMessage": (("common", 1, "CommonMessageData"), ("user", 2, "User")),
    "WebcastSocialMessage": (("common", 1, "CommonMessageData"), ("user", 2, "User")),
    "WebcastSubNotifyMessage": (("common", 1, "CommonMessageData"), ("user", 2, "User"),
                                ("sub_month", 4, "int64")),
    "WebcastRoomUserSeqMessage": (("common", 1, "CommonMessageData"), ("total", 3, "int64"),
                                  ("total_user", 7, "int64")),
    "WebcastControlMessage": (("common", 1, "CommonMessageData"), ("action", 2, "int32")),  # enum ControlAction
}
_LIVE_ENDED_ACTIONS: Final = frozenset({3, 4})  # ControlAction STREAM_ENDED, STREAM_SUSPENDED


def _message_classes() -> dict[str, type[Any]]:
    file = descriptor_pb2.FileDescriptorProto(name="ttboost_webcast.proto", package=_PACKAGE, syntax="proto3")
    for name, fields in SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, type_ in fields:
            field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
            if type_.endswith("[]"):
                field.label, type_ = _F.LABEL_REPEATED, type_[:-2]
            if type_ in _SCALARS:
                field.type = _SCALARS[type_]
            else:
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{type_}"
    pool = descriptor_pool.DescriptorPool()  # a pool of our own: nothing else's names can clash
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in SCHEMA}


MESSAGES: Final = _message_classes()
_PushFrame = MESSAGES["WebcastPushFrame"]
_FetchResult = MESSAGES["ProtoMessageFetchResult"]
_AnyMessage = MESSAGES["AnyMessage"]


def _user(message: Any) -> tuple[str, str, int] | None:
    if not message.HasField("user"):
        return None
    user = message.user
    return user.nickname, user.display_id, user.id


def _msg_id(message: Any) -> int:
    return message.common.msg_id


def _gift(m: Any) -> LiveEvent:
    gift = m.gift
    described = (gift.id, gift.name, gift.diamond_count, gift.type) if m.HasField("gift") else None
    return gift_event(_msg_id(m), _user(m), m.repeat_count, m.repeat_end, m.gift_id, described)


def _social(m: Any) -> LiveEvent | None:
    # TikTokLive tells a follow from a share by the display key (client.py handle_custom_event).
    key = m.common.display_text.key
    type_ = "follow" if "follow" in key else "share" if "share" in key else None
    return live_event(type_, _msg_id(m), _user(m)) if type_ is not None else None


# method → (message class, conversion to a LiveEvent or None for nothing to forward).
_DECODERS: Final[dict[str, tuple[type[Any], Callable[[Any], LiveEvent | None]]]] = {
    "WebcastChatMessage": (MESSAGES["WebcastChatMessage"],
                           lambda m: live_event("chat", _msg_id(m), _user(m), message=m.content)),
    "WebcastGiftMessage": (MESSAGES["WebcastGiftMessage"], _gift),
    "WebcastLikeMessage": (MESSAGES["WebcastLikeMessage"],
                           lambda m: live_event("like", _msg_id(m), _user(m), count=m.count, total=m.total)),
    "WebcastMemberMessage": (MESSAGES["WebcastMemberMessage"],
                             lambda m: live_event("viewer_join", _msg_id(m), _user(m))),
    "WebcastSocialMessage": (MESSAGES["WebcastSocialMessage"], _social),
    "WebcastSubNotifyMessage": (MESSAGES["WebcastSubNotifyMessage"],
                                lambda m: live_event("subscribe", _msg_id(m), _user(m), sub_month=m.sub_month)),
    # RoomUserSeqMessage: `total` is the current viewer count, `total_user` everyone seen this LIVE.
    "WebcastRoomUserSeqMessage": (MESSAGES["WebcastRoomUserSeqMessage"],
                                  lambda m: live_event("viewer", _msg_id(m), None, current=m.total,
                                                       total=m.total_user)),
}
_CONTROL: Final = "WebcastControlMessage"
_ControlMessage = MESSAGES[_CONTROL]
# Message types that become no event of their own (social: only through its display key).
_NO_DISPLAY_KEY_RULE: Final = frozenset({"WebcastSocialMessage", _CONTROL})


@dataclass(slots=True)
class Frame:
    """What one push frame holds for the app: events in order, the ack to send back, whether the LIVE ended."""

    events: list[LiveEvent]
    ack: bytes | None
    live_ended: bool


class FrameDecoder:
    """Decodes push frames; `mapped` are the message types TikTokLive knows (its EVENT_MAPPINGS keys)."""

    def __init__(self, mapped: frozenset[str]) -> None:
        self._mapped = mapped

    def decode(self, data: bytes) -> Frame | None:
        """The frame's content, or None when the library should handle this frame itself."""
        try:
            frame = _PushFrame.FromString(data)
            if frame.payload_type != "msg":
                return None  # heartbeats, enter-room answers: the library discards them (and logs)
            payload = frame.payload
            compression = next((h.value for h in frame.headers if h.key == "compress_type"), "")
            if compression == "gzip":
                payload = gzip.decompress(payload)  # as the library's GzipFile: all members
            elif compression not in ("", "none"):
                return None
            result = _FetchResult.FromString(payload)
            if result.is_first:
                return None  # the library enters the room again on such a frame
            events: list[LiveEvent] = []
            for message in result.messages:
                if self._add(message.method, message.payload, events):
                    return Frame(events, _ack(frame, result), True)
        except (DecodeError, OSError, EOFError, zlib.error, _NotMirrored):  # OSError: gzip.BadGzipFile
            return None
        return Frame(events, _ack(frame, result), False)

    def _add(self, method: str, payload: bytes, events: list[LiveEvent]) -> bool:
        """Appends the message's event, if any; True if it ends the LIVE."""
        decoder = _DECODERS.get(method)
        if method == _CONTROL:
            # Pause/unpause and the rest become no event; only the end of the LIVE matters.
            return _ControlMessage.FromString(payload).action in _LIVE_ENDED_ACTIONS
        if decoder is None:
            if method in self._mapped and _has_display_key_rule(_AnyMessage.FromString(payload)):
                raise _NotMirrored  # an event the library would make from its display key
            return False  # a message type nobody listens to: its payload is not parsed
        message = decoder[0].FromString(payload)
        if method not in _NO_DISPLAY_KEY_RULE and _has_display_key_rule(message):
            raise _NotMirrored
        event = decoder[1](message)
        if event is not None:
            events.append(stamp(event, message.common.create_time))
        return False


class _NotMirrored(Exception):
    """The frame holds a case this module leaves to the library."""


def _has_display_key_rule(message: Any) -> bool:
    """Whether TikTokLive would also make a follow/share event of this message (from its display key)."""
    key = message.common.display_text.key
    return "follow" in key or "share" in key


def _ack(frame: Any, result: Any) -> bytes | None:
    """The ack TikTokLive sends for a frame (ws_client.py send_ack), if the frame asks for one."""
    if not result.need_ack:
        return None
    return _PushFrame(payload_type="ack", payload_encoding="pb", log_id=frame.log_id,
                      payload=(result.internal_ext or "-").encode()).SerializeToString()
