"""Query and body schemas of /v2/streams (validation and OpenAPI), and its response bodies (OpenAPI only)."""

from __future__ import annotations

from typing import Final

from marshmallow import EXCLUDE, Schema, fields, validate

from ..bodies import BodySchema
from ..streams.rehearsal import SPEED_MAX, SPEED_MIN

LIST_LIMIT_MAX: Final = 100  # streams per page
EVENTS_LIMIT_MAX: Final = 1000  # events per page
ID_MAX: Final = 2**63 - 1  # SQLite's INTEGER holds no more


class _Query(Schema):
    class Meta:
        unknown = EXCLUDE  # query strings pick up cache-busters and the like: ignored


class StreamListQuerySchema(_Query):
    """GET /v2/streams."""

    limit = fields.Integer(load_default=20, validate=validate.Range(1, LIST_LIMIT_MAX),
                           metadata={"description": "streams per page (default 20)"})
    before = fields.Integer(validate=validate.Range(1, ID_MAX),
                            metadata={"description": "only streams with a smaller id (the next page)"})


class StreamEventsQuerySchema(_Query):
    """GET /v2/streams/{id}/events."""

    after_seq = fields.Integer(load_default=0, validate=validate.Range(0, ID_MAX),
                               metadata={"description": "only events with a larger seq (the next page)"})
    limit = fields.Integer(load_default=100, validate=validate.Range(1, EVENTS_LIMIT_MAX),
                           metadata={"description": "events per page (default 100)"})


class RehearseSchema(BodySchema):
    """POST /v2/streams/{id}/rehearse."""

    speed = fields.Integer(load_default=1, strict=True, validate=validate.Range(SPEED_MIN, SPEED_MAX),
                           metadata={"description": "× real time (default 1)"})


def _int(description: str = "") -> fields.Integer:
    return fields.Integer(required=True, metadata={"description": description} if description else {})


class StreamSummarySchema(Schema):
    """A stream: one LIVE connection, with its figures."""

    id = _int()
    tiktok_username = fields.String(required=True)
    started_at = fields.String(required=True, metadata={"description": "ISO 8601 UTC"})
    ended_at = fields.String(required=True, allow_none=True, metadata={"description": "null while live"})
    end_reason = fields.String(required=True, allow_none=True,
                               metadata={"description": "ended | dropped | stopped | crashed | …; null while live"})
    duration_s = _int("until now while live")
    diamonds = _int("diamonds of the gift frames (a combo once)")
    gifts = _int("gifts received (a combo of 5 Roses is 5)")
    likes = _int("likes of the like frames")
    chats = _int()
    follows = _int()
    shares = _int()
    joins = _int()
    subscribes = _int()
    peak_viewers = _int("highest viewer count")
    unique_chatters = _int("distinct chat handles")


class StreamListSchema(Schema):
    """The streamer's streams, newest first."""

    streams = fields.List(fields.Nested(StreamSummarySchema), required=True)


class GifterSchema(Schema):
    user = fields.String(required=True, metadata={"description": "display name"})
    username = fields.String(required=True, metadata={"description": "handle"})
    diamonds = _int()
    gifts = _int()


class GiftTotalSchema(Schema):
    gift_id = _int()
    gift_name = fields.String(required=True)
    count = _int("gifts of this kind")
    diamonds = _int()


class MinuteSchema(Schema):
    minute = fields.String(required=True, metadata={"description": "start of the minute, ISO 8601 UTC"})
    diamonds = _int()
    chats = _int()
    likes = _int()
    viewers = _int("the minute's highest viewer count, else the count in effect")


class StreamDetailSchema(StreamSummarySchema):
    """A stream with its breakdowns."""

    top_gifters = fields.List(fields.Nested(GifterSchema), required=True,
                              metadata={"description": "top 10 by diamonds"})
    gifts_by_name = fields.List(fields.Nested(GiftTotalSchema), required=True)
    timeline = fields.List(fields.Nested(MinuteSchema), required=True,
                           metadata={"description": "minutes with activity, in order"})


class StreamEventsSchema(Schema):
    """Recorded events of the stream (while the event log retains them), as the app received them."""

    events = fields.List(fields.Dict(), required=True,
                         metadata={"description": "WebSocket frames: {type, seq, ts, …}"})
    next_after_seq = fields.Integer(required=True, allow_none=True,
                                    metadata={"description": "after_seq of the next page; null on the last"})


class RehearsalStartedSchema(Schema):
    """The rehearsal runs; its frames arrive on the app socket marked rehearsal: true."""

    status = fields.String(required=True)
    stream_id = _int()
    speed = _int()
    events = _int("events to replay")
    duration_s = fields.Float(required=True, metadata={"description": "seconds it takes at this speed"})


class RehearsalStoppedSchema(Schema):
    """Whether a rehearsal was running."""

    status = fields.String(required=True)
    stopped = fields.Boolean(required=True)
