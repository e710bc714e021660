"""Speech on demand: POST /v2/tts/generate, legacy POST /tts/generate, GET /v2/voices, the speech files."""

from __future__ import annotations

import logging
from typing import Any, Callable, Final

from aiohttp import web
from marshmallow import ValidationError, fields, validate, validates

from .. import keys
from ..bodies import BodySchema
from ..errors import ApiError, json_response, validation_error
from ..licenses import require_active_license
from ..openapi import Binary, docs
from ..tts.engine import RATE_MAX, RATE_MIN, TTSError
from ..tts.http import serve_speech
from ..tts.text import clean_text
from ..users import User
from .common import authenticate, limit_by_user, load_body
from .responses import LICENSE_ERRORS, USER_RATE_LIMITED, LegacySpeechSchema, SpeechSchema, VoiceListSchema

_LOGGER = logging.getLogger(__name__)

MAX_TEXT: Final = 500  # characters accepted from the app; the spoken text is cut at the user's tts_max_chars

routes = web.RouteTableDef()


class GenerateSchema(BodySchema):
    text = fields.String(required=True, validate=validate.Length(1, MAX_TEXT),
                         metadata={"description": "text to speak (cleaned: links, emoji, repeats)"})
    voice_id = fields.String(load_default=None, allow_none=True,
                             metadata={"description": "voice id from GET /v2/voices; default: the user's voice",
                                       "example": "ru-RU-SvetlanaNeural"})
    rate = fields.Integer(load_default=None, allow_none=True, strict=True,
                          validate=validate.Range(RATE_MIN, RATE_MAX),
                          metadata={"description": "speed change in percent; default: the user's tts_rate"})

    def __init__(self, *, voice_known: Callable[[str], bool] = lambda _voice: True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._voice_known = voice_known

    @validates("voice_id")
    def _check_voice(self, value: str | None, **_kwargs: Any) -> None:
        if value is not None and not self._voice_known(value):
            raise ValidationError("unknown voice")


class LegacyGenerateSchema(BodySchema):
    text = fields.String(required=True, validate=validate.Length(1, MAX_TEXT),
                         metadata={"description": "text to speak with the user's voice settings"})


async def _speak(request: web.Request, user: User, data: dict[str, Any]) -> dict[str, Any]:
    await limit_by_user(request, "tts", user)
    await require_active_license(request.app[keys.DB], user.id)  # synthesis costs: paying users only
    settings = await request.app[keys.SETTINGS].get(user.id)
    voice = data.get("voice_id") or settings["voice_id"]
    rate = data["rate"] if data.get("rate") is not None else settings["tts_rate"]
    text = clean_text(data["text"], settings["tts_max_chars"])
    if not text:
        raise validation_error({"text": ["nothing speakable left after cleanup"]})
    speech = request.app[keys.SPEECH]
    try:
        key, cached = await speech.generate(text, voice, rate, owner=user.id)
    except TTSError as exc:
        _LOGGER.warning("tts failed for user %s (voice %s): %s", user.id, voice, exc)
        raise ApiError(502, "tts failed", "tts_failed") from None
    url = request.app[keys.CONFIG].media_url + speech.url_path(key)
    return {"url": url, "voice_id": voice, "cached": cached}


_SPEECH_ERRORS: Final = {403: LICENSE_ERRORS[403], 429: USER_RATE_LIMITED, 502: "tts failed (the speech engine failed; try again)"}


@routes.post("/v2/tts/generate")
@docs("Speak a text: the URL of its audio", tags=["tts"], body=GenerateSchema,
      responses={200: SpeechSchema, **_SPEECH_ERRORS})
async def generate(request: web.Request) -> web.Response:
    user = await authenticate(request)  # 401 before a body is even read
    data = await load_body(request, GenerateSchema(voice_known=request.app[keys.VOICES].known))
    return json_response(await _speak(request, user, data))


@routes.post("/tts/generate")
@docs("Legacy: speak a text with the user's voice settings", tags=["legacy"], body=LegacyGenerateSchema,
      responses={200: LegacySpeechSchema, **_SPEECH_ERRORS})
async def legacy_generate(request: web.Request) -> web.Response:
    user = await authenticate(request)
    data = await load_body(request, LegacyGenerateSchema())
    result = await _speak(request, user, {"text": data["text"], "voice_id": None, "rate": None})
    return json_response({"url": result["url"]})


@routes.get("/v2/voices")
@docs("The available voices (public)", tags=["tts"], security=(), responses={200: VoiceListSchema})
async def voices(request: web.Request) -> web.Response:
    """Public: the list is no secret, and the app shows it before the streamer has logged in."""
    return json_response({"voices": [v.to_json() for v in request.app[keys.VOICES].voices()]})


routes.get("/static/tts/{name}")(docs(
    "A phrase's audio (public by URL; HEAD and Range supported)", tags=["media"], security=(),
    path={"name": "<key>.mp3, as in a tts_url"},
    description="Streamed while synthesis runs (chunked, no-store); from the cache file once done.",
    responses={200: Binary("audio/mpeg", "MP3 audio"), 206: Binary("audio/mpeg", "the requested range"),
               404: "not found (unknown key, or the phrase failed)", 416: "range not satisfiable"})(serve_speech))
