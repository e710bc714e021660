"""Stream history (spec §8): the list, the current stream, one stream, its events and CSV, and rehearsals."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from .. import keys
from ..errors import json_response, not_found
from ..licenses import has_active_license, license_expired
from ..openapi import Binary, docs
from ..streams import export, store
from .common import authenticate, load_body
from .stream_schemas import (
    RehearsalStartedSchema, RehearsalStoppedSchema, RehearseSchema, StreamDetailSchema, StreamEventsQuerySchema,
    StreamEventsSchema, StreamListQuerySchema, StreamListSchema,
)

_ID: Final = re.compile(r"[1-9][0-9]{0,17}")  # an id SQLite can hold; anything else is simply not found
_ID_PATH: Final = {"id": "the stream's id"}
_NOT_FOUND: Final = "not found (no such stream of this user)"

routes = web.RouteTableDef()


def _stream_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not _ID.fullmatch(raw):
        raise not_found()
    return int(raw)


async def _own_stream(request: web.Request, user_id: int) -> int:
    stream_id = _stream_id(request)
    if not await store.owns_stream(request.app[keys.DB], user_id, stream_id):
        raise not_found()
    return stream_id


@routes.get("/v2/streams")
@docs("The streamer's streams with their figures, newest first", tags=["streams"], query=StreamListQuerySchema,
      responses={200: StreamListSchema})
async def list_streams(request: web.Request) -> web.Response:
    user = await authenticate(request)
    query = StreamListQuerySchema().load(dict(request.query))
    streams = await store.list_streams(request.app[keys.DB], user.id, limit=query["limit"],
                                       before=query.get("before"))
    return json_response({"streams": streams})


# Before /v2/streams/{id}: aiohttp tries resources in the order they were added.
@routes.get("/v2/streams/current")
@docs("The stream now live, with its breakdowns", tags=["streams"],
      responses={200: StreamDetailSchema, 404: "not found (no stream is live)"})
async def current_stream(request: web.Request) -> web.Response:
    user = await authenticate(request)
    db = request.app[keys.DB]
    stream_id = await store.current_stream_id(db, user.id)
    detail = await store.stream_detail(db, user.id, stream_id) if stream_id is not None else None
    if detail is None:
        raise not_found()
    return json_response(detail)


@routes.get("/v2/streams/{id}")
@docs("One stream: figures, top gifters, gifts by name, per-minute timeline", tags=["streams"], path=_ID_PATH,
      responses={200: StreamDetailSchema, 404: _NOT_FOUND})
async def get_stream(request: web.Request) -> web.Response:
    user = await authenticate(request)
    detail = await store.stream_detail(request.app[keys.DB], user.id, _stream_id(request))
    if detail is None:
        raise not_found()
    return json_response(detail)


@routes.get("/v2/streams/{id}/events")
@docs("The stream's recorded events, by seq (while the event log retains them)", tags=["streams"],
      path=_ID_PATH, query=StreamEventsQuerySchema, responses={200: StreamEventsSchema, 404: _NOT_FOUND})
async def stream_events(request: web.Request) -> web.Response:
    user = await authenticate(request)
    query = StreamEventsQuerySchema().load(dict(request.query))
    stream_id = await _own_stream(request, user.id)
    events = await store.stream_events(request.app[keys.DB], user.id, stream_id, after_seq=query["after_seq"],
                                       limit=query["limit"])
    more = len(events) == query["limit"]
    return json_response({"events": events, "next_after_seq": events[-1]["seq"] if more else None})


@routes.get("/v2/streams/{id}/export.csv")
@docs("The stream's recorded events as CSV (time, type, username, user, message, gift, count, diamonds)",
      tags=["streams"], path=_ID_PATH,
      description="UTF-8 with a byte order mark (for Excel), CRLF line ends, RFC 4180 quoting. Cells a viewer "
                  "wrote that start with = + - @ or a tab get a leading ' so no spreadsheet runs them.",
      responses={200: Binary("text/csv", "one row per event, oldest first"), 404: _NOT_FOUND})
async def export_csv(request: web.Request) -> web.StreamResponse:
    user = await authenticate(request)
    stream_id = await _own_stream(request, user.id)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="stream-{stream_id}.csv"',
        "X-Content-Type-Options": "nosniff"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method == "HEAD":  # aiohttp would put a streamed body on the wire even for HEAD
        await response.write_eof()
        return response
    await response.write(export.header().encode("utf-8"))
    async for page in store.all_stream_events(request.app[keys.DB], user.id, stream_id):
        await response.write(export.encode_rows(export.row(frame) for frame in page).encode("utf-8"))
    await response.write_eof()
    return response


@routes.post("/v2/streams/{id}/rehearse")
@docs("Replay the stream through the current triggers and settings to the app socket", tags=["streams"],
      body=RehearseSchema, path=_ID_PATH,
      description="Frames carry \"rehearsal\": true; nothing is counted or recorded. A `rehearsal` frame "
                  "(state started, then finished or stopped) brackets the replay.",
      responses={200: RehearsalStartedSchema, 403: "license expired (no active license)", 404: _NOT_FOUND,
                 409: "a rehearsal is already running | no recorded events to rehearse"})
async def rehearse(request: web.Request) -> web.Response:
    user = await authenticate(request)
    body = await load_body(request, RehearseSchema())
    stream_id = await _own_stream(request, user.id)
    if not await has_active_license(request.app[keys.DB], user.id):
        raise license_expired()
    started = await request.app[keys.HOME].run(user.id, "rehearse", {"stream_id": stream_id, "speed": body["speed"]})
    return json_response({"status": "ok", **started})


@routes.post("/v2/streams/rehearse/stop")
@docs("Stop the running rehearsal", tags=["streams"], responses={200: RehearsalStoppedSchema})
async def stop_rehearsal(request: web.Request) -> web.Response:
    user = await authenticate(request)
    stopped = await request.app[keys.HOME].run(user.id, "stop_rehearsal", {})
    return json_response({"status": "ok", **stopped})
