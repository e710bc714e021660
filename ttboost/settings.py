"""Streamer settings: defaults, the partial-update schema, and a store cached in memory for the event path."""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, Final, Mapping

from marshmallow import ValidationError, fields, post_load, validate, validates

from .accounts import normalize_username
from .bodies import BodySchema
from .db import Database
from .errors import not_found

_LOGGER = logging.getLogger(__name__)

VOLUME_MAX: Final = 100  # percent
TTS_RATE_MIN: Final = -50  # percent; matches tts.engine.RATE_MIN
TTS_RATE_MAX: Final = 100  # percent; matches tts.engine.RATE_MAX
TTS_MAX_CHARS_MIN: Final = 10  # characters
TTS_MAX_CHARS_MAX: Final = 500  # characters
PREFIX_MAX_CHARS: Final = 5  # characters
BLOCKLIST_MAX_WORDS: Final = 100  # words
BLOCKLIST_WORD_MAX_CHARS: Final = 50  # characters
MIN_DIAMONDS_MAX: Final = 1_000_000_000  # diamonds; as trigger values (trigger_schemas.INT_VALUE_MAX)
CHAT_TTS_MODES: Final = ("all", "prefix", "donor", "off")

# Every field with its default. tiktok_username None means "the account's username", resolved on read; the
# users.settings column stores only what the streamer changed, so a later change of a default reaches everyone.
DEFAULTS: Final[Mapping[str, Any]] = {
    "tts_volume": 100,
    "gifts_volume": 100,
    "tts_enabled": True,
    "gift_sounds_enabled": True,
    "voice_id": "",  # replaced by the configured default voice
    "tts_rate": 0,
    "tiktok_username": None,
    "auto_connect": True,
    "chat_tts_mode": "all",
    "chat_tts_prefix": ".",
    "chat_tts_min_diamonds": 1,
    "tts_max_chars": 200,
    "tts_read_username": True,
    "tts_blocklist": [],
    "join_sound_enabled": True,
}


class SettingsUpdateSchema(BodySchema):
    """Any subset of the settings; unknown fields are dropped (BodySchema), the original app's
    auto_connect_live is read as auto_connect."""

    tts_volume = fields.Integer(strict=True, validate=validate.Range(0, VOLUME_MAX))
    gifts_volume = fields.Integer(strict=True, validate=validate.Range(0, VOLUME_MAX))
    tts_enabled = fields.Boolean()
    gift_sounds_enabled = fields.Boolean()
    auto_connect = fields.Boolean()
    # The original Flutter app's name for auto_connect; auto_connect wins when both are sent.
    auto_connect_live = fields.Boolean(load_only=True, metadata={"deprecated": True,
                                                                 "description": "old name of auto_connect"})
    tts_read_username = fields.Boolean()
    join_sound_enabled = fields.Boolean()
    voice_id = fields.String(validate=validate.Length(1, 100))
    tts_rate = fields.Integer(strict=True, validate=validate.Range(TTS_RATE_MIN, TTS_RATE_MAX))
    tiktok_username = fields.String(allow_none=True, validate=validate.Length(max=64))
    chat_tts_mode = fields.String(validate=validate.OneOf(CHAT_TTS_MODES))
    chat_tts_prefix = fields.String(validate=validate.Length(1, PREFIX_MAX_CHARS))
    chat_tts_min_diamonds = fields.Integer(strict=True, validate=validate.Range(0, MIN_DIAMONDS_MAX))
    tts_max_chars = fields.Integer(strict=True, validate=validate.Range(TTS_MAX_CHARS_MIN, TTS_MAX_CHARS_MAX))
    tts_blocklist = fields.List(fields.String(validate=validate.Length(max=BLOCKLIST_WORD_MAX_CHARS)),
                                validate=validate.Length(max=BLOCKLIST_MAX_WORDS))

    def __init__(self, *, voice_known: Callable[[str], bool] = lambda _voice: True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._voice_known = voice_known

    @validates("voice_id")
    def _check_voice(self, value: str, **_kwargs: Any) -> None:
        if not self._voice_known(value):
            raise ValidationError("unknown voice")

    @post_load
    def _normalize(self, data: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        legacy = data.pop("auto_connect_live", None)
        if legacy is not None:
            data.setdefault("auto_connect", legacy)
        if "tiktok_username" in data:
            raw = (data["tiktok_username"] or "").strip()
            try:  # null, "" and "@" mean "back to the account's username"
                data["tiktok_username"] = normalize_username(raw) if raw.removeprefix("@") else None
            except ValueError as exc:
                raise ValidationError({"tiktok_username": [str(exc)]}) from None
        if "tts_blocklist" in data:
            words: list[str] = []
            for word in data["tts_blocklist"]:
                word = word.strip()
                if word and word.casefold() not in (w.casefold() for w in words):
                    words.append(word)
            data["tts_blocklist"] = words
        return data


class SettingsStore:
    """Reads and writes users.settings; the full, resolved settings of each user are kept in memory."""

    def __init__(self, db: Database, *, default_voice: str, voice_known: Callable[[str], bool]) -> None:
        self._db = db
        self._defaults = {**DEFAULTS, "voice_id": default_voice}
        self.voice_known = voice_known
        self._cache: dict[int, dict[str, Any]] = {}  # users with a socket or a watch (janitor.py releases the rest)
        # Cluster mode: tells the other workers, which then reload their copy (cluster/changes.py).
        self.on_change: Callable[[int], Awaitable[None]] | None = None

    def schema(self) -> SettingsUpdateSchema:
        return SettingsUpdateSchema(voice_known=self.voice_known)

    def cached(self, user_id: int) -> dict[str, Any] | None:
        """The settings if loaded, without I/O (the event path); callers must not mutate the dict."""
        return self._cache.get(user_id)

    async def prepare(self, user_id: int) -> None:
        if user_id not in self._cache:
            await self.get(user_id)

    def cached_users(self) -> list[int]:
        return list(self._cache)

    def invalidate(self, user_id: int) -> None:
        """Drops the cached copy, e.g. after the account's username changed (it is the tiktok_username default)."""
        self._cache.pop(user_id, None)

    async def get(self, user_id: int) -> dict[str, Any]:
        cached = self._cache.get(user_id)
        # A key-only account may have been given a username since: re-read rather than keep None.
        if cached is not None and cached["tiktok_username"]:
            return dict(cached)
        return dict(await self._load(user_id))

    async def _load(self, user_id: int) -> dict[str, Any]:
        row = await self._db.fetchone("SELECT username, settings FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise not_found()
        return self._remember(user_id, row["username"], _parse(row["settings"], user_id))

    async def reload(self, user_id: int) -> None:
        """Another worker changed the user's settings: a cached copy is read again (the event path keeps
        reading the old one until the new one replaces it, never nothing)."""
        if user_id in self._cache:
            await self._load(user_id)

    async def update(self, user_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Applies validated changes (SettingsUpdateSchema output) and returns the full settings."""
        # Read-modify-write in one transaction: two concurrent partial updates must both land.
        try:
            async with self._db.transaction():
                row = await self._db.fetchone("SELECT username, settings FROM users WHERE id = ?", (user_id,))
                if row is None:
                    raise not_found()
                stored = _parse(row["settings"], user_id)
                for key, value in changes.items():
                    if key not in self._defaults:
                        raise KeyError(key)  # a programming error: handlers pass schema output only
                    if value is None:
                        stored.pop(key, None)
                    else:
                        stored[key] = value
                await self._db.execute("UPDATE users SET settings = ? WHERE id = ?",
                                       (json.dumps(stored, ensure_ascii=False), user_id))
                # Remembered under the write lock, so the cache follows the order of the commits: on PostgreSQL
                # the next update can commit before this task resumes after its COMMIT.
                full = dict(self._remember(user_id, row["username"], stored))
        except BaseException:
            self._cache.pop(user_id, None)  # not committed (or unknown): the next read loads what is stored
            raise
        if self.on_change is not None:
            await self.on_change(user_id)
        return full

    def _remember(self, user_id: int, username: str | None, stored: Mapping[str, Any]) -> dict[str, Any]:
        full = {**self._defaults, **{k: v for k, v in stored.items() if k in self._defaults}}
        full["tts_blocklist"] = list(full["tts_blocklist"])
        if not full["tiktok_username"]:
            full["tiktok_username"] = username
        self._cache[user_id] = full
        return full


def _parse(raw: str | None, user_id: int) -> dict[str, Any]:
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        _LOGGER.warning("settings of user %d are not valid JSON; using defaults", user_id)
        return {}
    return data if isinstance(data, dict) else {}
