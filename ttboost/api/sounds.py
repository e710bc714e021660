"""Sound endpoints under /v2/sounds/* (upload 5/min per user, list, delete) and the public file route."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from marshmallow import EXCLUDE, Schema, fields

from .. import keys, licenses, media, sounds
from ..errors import json_response
from ..openapi import Binary, docs
from ..sounds import SoundDeleteSchema
from ..users import User
from .common import authenticate, limit_by_user, load_body
from .responses import USER_RATE_LIMITED, OkSchema, SoundListSchema, UploadedSoundSchema

routes = web.RouteTableDef()


class ForceQuerySchema(Schema):
    """DELETE /v2/sounds/{filename}?force=1. Query strings pick up cache-busters and the like: ignored."""

    class Meta:
        unknown = EXCLUDE

    force = fields.Boolean(load_default=False, metadata={"description": "delete even when triggers play it "
                                                                       "(they are disabled)"})


class UploadFormSchema(Schema):
    """The multipart form of POST /v2/sounds/upload (docs only: the parts are streamed, see media.upload)."""

    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary",
                                               "description": "MP3, WAV, OGG (Vorbis/Opus) or M4A/AAC, ≤ 1 MiB, "
                                                              "0.1-30 s; the format is read from the content"})
    name = fields.String(metadata={"description": "name to store it under (sanitized, ≤ 80 characters); "
                                                  "default: the file's name"})


async def _max_sounds(request: web.Request, user: User) -> int:
    """The plan's max_sounds. Unlike triggers, an expired license still counts: sounds play nothing without
    a LIVE session, and a streamer renewing should find (and be able to prepare) their sounds. Only a user
    with no plan at all (nothing bound, or only revoked keys) cannot add new ones; replacing and deleting
    always work."""
    plan = await licenses.plan_for_user(request.app[keys.DB], user.id)
    config_plan = request.app[keys.CONFIG].plan(plan.plan_id) if plan.plan_id else None
    return config_plan.max_sounds if config_plan else 0


_DELETE_ERRORS: Final = {404: "sound file not found", 409: "sound in use (`trigger_ids` lists the triggers)"}


@routes.post("/v2/sounds/upload")
@docs("Upload a sound (multipart); an existing name is replaced", tags=["sounds"], form=UploadFormSchema,
      responses={200: UploadedSoundSchema, 400: "malformed multipart body",
                 403: "sound limit reached (the plan's max_sounds)", 413: "file too large",
                 415: "not multipart/form-data", 422: "validation error (no `file`, unknown part, not audio, "
                                                     "too short or too long)", 429: USER_RATE_LIMITED})
async def upload_sound(request: web.Request) -> web.Response:
    user = await authenticate(request)
    await limit_by_user(request, "upload", user)  # before the body is read: a refused upload costs no bandwidth
    config = request.app[keys.CONFIG]
    # Streams the multipart body itself, so the app's client_max_size (64 KiB, for JSON) does not apply here.
    upload = await media.read_upload(request, config.limits.max_sound_bytes)
    sound = await sounds.upload(request.app[keys.DB], request.app[keys.MEDIA], user.id, upload.data,
                                upload.filename, upload.name, await _max_sounds(request, user), config.limits)
    body = sound.to_json(config.media_url, user.id)
    del body["created_at"]  # the upload response is the spec's shape exactly; list carries created_at
    return json_response({"status": "ok", **body})


@routes.get("/v2/sounds/list")
@docs("The user's sounds", tags=["sounds"], responses={200: SoundListSchema})
async def list_sounds(request: web.Request) -> web.Response:
    user = await authenticate(request)
    media_url = request.app[keys.CONFIG].media_url
    found = await sounds.list_sounds(request.app[keys.DB], user.id)
    return json_response({"sounds": [s.to_json(media_url, user.id) for s in found]})


async def _delete(request: web.Request, user: User, filename: str, force: bool) -> web.Response:
    app = request.app
    await sounds.delete(app[keys.DB], app[keys.MEDIA], app[keys.TRIGGERS], user.id, filename, force)
    return json_response({"status": "ok"})


@routes.post("/v2/sounds/delete")
@docs("Delete a sound", tags=["sounds"], body=SoundDeleteSchema, responses={200: OkSchema, **_DELETE_ERRORS})
async def delete_sound(request: web.Request) -> web.Response:
    user = await authenticate(request)
    body = await load_body(request, SoundDeleteSchema())
    return await _delete(request, user, body["filename"], body["force"])


# Stored names always carry an extension: the pattern keeps this route off /v2/sounds/list, /upload and /delete,
# whose 405 answers would otherwise advertise DELETE in Allow (a schemathesis conformance finding).
@routes.delete(r"/v2/sounds/{filename:[^/]+\.[^/]+}")
@docs("Delete a sound (same as POST /v2/sounds/delete)", tags=["sounds"], query=ForceQuerySchema,
      path={"filename": "stored name"}, responses={200: OkSchema, **_DELETE_ERRORS})
async def delete_sound_by_path(request: web.Request) -> web.Response:
    user = await authenticate(request)
    query = ForceQuerySchema().load(dict(request.query))
    return await _delete(request, user, request.match_info["filename"], query["force"])


# Public by URL, like the TTS files: the app's audio player fetches it without a token.
routes.get("/static/sounds/{user_id}/{filename}")(docs(
    "A stored sound (public by URL; HEAD and Range supported)", tags=["media"], security=(),
    path={"user_id": "the owner's user id", "filename": "stored name"},
    responses={200: Binary("audio/*", "the file, with its real Content-Type"),
               206: Binary("audio/*", "the requested range"), 404: "not found", 416: "range not satisfiable"})(
    media.serve_sound))
