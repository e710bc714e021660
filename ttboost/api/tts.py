"""Speech on demand: POST /v2/tts/generate, legacy POST /tts/generate, GET /v2/voices, the speech files."""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate, validates

from .. import keys
from ..errors import ApiError, json_response, validation_error
from ..tts.engine import RATE_MAX, RATE_MIN, TTSError
from ..tts.http import serve_speech
from ..tts.text import clean_text
from ..users import User
from .common import authenticate, limit_by_user, load_body

_LOGGER = logging.getLogger(__name__)

MAX_TEXT: Final = 500  # characters accepted from the app; the spoken text is cut at the user's tts_max_chars

routes = web.RouteTableDef()


class GenerateSchema(Schema):
    text = fields.String(required=True, validate=validate.Length(1, MAX_TEXT),
                         metadata={"description": "text to speak (cleaned: links, emoji, repeats)"})
    voice_id = fields.String(load_default=None, allow_none=True,
                             metadata={"description": "voice id from GET /v2/voices; default: the user's voice"})
    rate = fields.Integer(load_default=None, allow_none=True, strict=True,
                          validate=validate.Range(RATE_MIN, RATE_MAX),
                          metadata={"description": "speed change in percent; default: the user's tts_rate"})

    def __init__(self, *, voice_known: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._voice_known = voice_known

    @validates("voice_id")
    def _check_voice(self, value: str | None, **_kwargs: Any) -> None:
        if value is not None and not self._voice_known(value):
            raise ValidationError("unknown voice")


class LegacyGenerateSchema(Schema):
    text = fields.String(required=True, validate=validate.Length(1, MAX_TEXT),
                         metadata={"description": "text to speak with the user's voice settings"})


async def _speak(request: web.Request, user: User, data: dict[str, Any]) -> dict[str, Any]:
    limit_by_user(request, "tts", user)
    settings = await request.app[keys.SETTINGS].get(user.id)
    voice = data.get("voice_id") or settings["voice_id"]
    rate = data["rate"] if data.get("rate") is not None else settings["tts_rate"]
    text = clean_text(data["text"], settings["tts_max_chars"])
    if not text:
        raise validation_error({"text": ["nothing speakable left after cleanup"]})
    speech = request.app[keys.SPEECH]
    try:
        key, cached = await speech.generate(text, voice, rate)
    except TTSError as exc:
        _LOGGER.warning("tts failed for user %s (voice %s): %s", user.id, voice, exc)
        raise ApiError(502, "tts failed", "tts_failed") from None
    url = request.app[keys.CONFIG].media_url + speech.url_path(key)
    return {"url": url, "voice_id": voice, "cached": cached}


@routes.post("/v2/tts/generate")
async def generate(request: web.Request) -> web.Response:
    user = await authenticate(request)  # 401 before a body is even read
    data = await load_body(request, GenerateSchema(voice_known=request.app[keys.VOICES].known))
    return json_response(await _speak(request, user, data))


@routes.post("/tts/generate")
async def legacy_generate(request: web.Request) -> web.Response:
    user = await authenticate(request)
    data = await load_body(request, LegacyGenerateSchema())
    result = await _speak(request, user, {"text": data["text"], "voice_id": None, "rate": None})
    return json_response({"url": result["url"]})


@routes.get("/v2/voices")
async def voices(request: web.Request) -> web.Response:
    """Public: the list is no secret, and the app shows it before the streamer has logged in."""
    return json_response({"voices": [v.to_json() for v in request.app[keys.VOICES].voices()]})


routes.get("/static/tts/{name}")(serve_speech)
