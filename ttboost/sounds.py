"""Uploaded sounds of a streamer: the rows of the `sounds` table kept in step with the files on disk."""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from marshmallow import fields, validate

from .bodies import BodySchema
from .errors import ApiError, not_found
from .fileio import run_to_end
from .media import AudioInfo, is_sound_name, sanitize_filename, validate_audio
from .media.upload import file_too_large
from .timeutil import iso, utcnow

if TYPE_CHECKING:
    from .config import LimitsConfig
    from .db import Database, Row
    from .media import MediaStore
    from .triggers import TriggerStore

_LOGGER = logging.getLogger(__name__)

FILENAME_MAX_CHARS: Final = 200  # characters of a name to delete; stored names are ≤ 80, longer is simply unknown
_COLUMNS: Final = "filename, size, duration_ms, format, created_at"


@dataclass(frozen=True, slots=True)
class Sound:
    filename: str
    size: int  # bytes
    duration_ms: int
    format: str  # "mp3" | "wav" | "ogg" | "m4a"
    created_at: str  # ISO 8601 UTC with Z; a same-name upload renews it (the content is new)

    @classmethod
    def from_row(cls, row: Row) -> Sound:
        return cls(filename=row["filename"], size=row["size"], duration_ms=row["duration_ms"],
                   format=row["format"], created_at=row["created_at"])

    def url(self, media_url: str, user_id: int) -> str:
        # Stored names are [A-Za-z0-9._-] only (sanitize_filename), so they need no quoting in a URL.
        return f"{media_url}/static/sounds/{user_id}/{self.filename}"

    def to_json(self, media_url: str, user_id: int) -> dict[str, Any]:
        return {"filename": self.filename, "url": self.url(media_url, user_id), "size": self.size,
                "duration_ms": self.duration_ms, "format": self.format, "created_at": self.created_at}


class SoundDeleteSchema(BodySchema):
    """POST /v2/sounds/delete: remove one sound; `force` also disables the triggers that play it."""

    filename = fields.String(required=True, validate=validate.Length(1, FILENAME_MAX_CHARS),
                             metadata={"description": "stored name, as returned by upload and list"})
    force = fields.Boolean(load_default=False,
                           metadata={"description": "delete even when triggers play it (they are disabled)"})


def sound_not_found() -> ApiError:
    return not_found("sound file not found", "sound_not_found")


def sound_in_use(trigger_ids: list[int]) -> ApiError:
    return ApiError(409, "sound in use", "sound_in_use", extra={"trigger_ids": trigger_ids})


def storage_failed(exc: OSError) -> ApiError:
    """The media folder refused a write: 507 when the disk (or quota) is full, else 500; either way the client
    learns that storing failed, not that it sent something wrong."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(507, "could not store the file: no space left", "storage_full")
    return ApiError(500, "could not store the file", "storage_failed")


async def upload(db: Database, store: MediaStore, user_id: int, data: bytes, client_name: str,
                 name_field: str | None, max_sounds: int, limits: LimitsConfig) -> Sound:
    """Validates the bytes as audio and stores them under a sanitized name; a same name replaces that sound.

    A new name beyond max_sounds is 403 `sound limit reached`; replacing never counts against the quota.
    """
    if len(data) > limits.max_sound_bytes:  # read_upload stops at the limit already; kept for other callers
        raise file_too_large()
    # mutagen parses untrusted bytes (up to 1 MiB): milliseconds of CPU that must not run on the loop.
    info = await asyncio.to_thread(validate_audio, data, min_seconds=limits.min_sound_seconds,
                                   max_seconds=limits.max_sound_seconds)
    filename = sanitize_filename(name_field or client_name, info.ext)
    sound = await run_to_end(_store(db, store, user_id, filename, data, info, max_sounds))
    if store.replica is not None:  # before the answer: once the app has the URL, every worker serves it
        await run_to_end(store.replica.put(user_id, filename, data))
    _LOGGER.info("sound %s stored (user %d, %s, %d bytes, %d ms)", filename, user_id, info.format, len(data),
                 info.duration_ms)
    return sound


async def _store(db: Database, store: MediaStore, user_id: int, filename: str, data: bytes, info: AudioInfo,
                 max_sounds: int) -> Sound:
    """Quota check, file, row: one unit under BEGIN IMMEDIATE, so two uploads (or an upload and a delete) of
    one user never interleave and the quota cannot be overrun by parallel requests.

    The bytes are written and synced to a temp file before the transaction, so the database (one connection
    for the whole server) is held only for the rename, not for the write of up to 1 MiB. Order inside: the
    file is renamed into place before the row is written, so a row never points at a missing file. If the
    row write or the COMMIT fails, a new file is removed again (no orphan); a file that replaced an older
    sound stays, since the old row still names it (its size/duration may then be stale, which is harmless
    next to a sound that plays nothing).
    """
    sound = Sound(filename=filename, size=len(data), duration_ms=info.duration_ms, format=info.format,
                  created_at=iso(utcnow()))
    try:
        tmp = await store.stage(user_id, data)
    except OSError as exc:  # disk full, read-only or broken media folder: stage() left no file behind
        _LOGGER.error("sound %s of user %d could not be written under %s: %s", filename, user_id, store.root, exc)
        raise storage_failed(exc) from exc
    replaces = published = False
    try:
        async with db.transaction():
            replaces = bool(await db.fetchval("SELECT 1 FROM sounds WHERE user_id = ? AND filename = ?",
                                              (user_id, filename)))
            if not replaces:
                count = await db.fetchval("SELECT COUNT(*) FROM sounds WHERE user_id = ?", (user_id,))
                if count >= max_sounds:
                    raise ApiError(403, "sound limit reached", "sound_limit_reached",
                                   extra={"max_sounds": max_sounds})
            try:
                await store.publish(tmp, filename)
            except OSError as exc:
                _LOGGER.error("sound %s of user %d could not be renamed into %s: %s", filename, user_id,
                              store.root, exc)
                raise storage_failed(exc) from exc
            published = True
            await db.execute(
                f"INSERT INTO sounds (user_id, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, filename) DO UPDATE SET size = excluded.size,"
                " duration_ms = excluded.duration_ms, format = excluded.format, created_at = excluded.created_at",
                (user_id, sound.filename, sound.size, sound.duration_ms, sound.format, sound.created_at))
    except BaseException:
        try:
            if not published:
                await store.discard(tmp)
            elif not replaces:
                await store.delete(user_id, filename)
        except OSError:
            _LOGGER.exception("sound %s of user %d: row not written and the file could not be removed",
                              filename, user_id)
        raise
    return sound


async def list_sounds(db: Database, user_id: int) -> list[Sound]:
    """The user's sounds, newest first (same second: the later insert first)."""
    rows = await db.fetchall(f"SELECT {_COLUMNS} FROM sounds WHERE user_id = ? ORDER BY created_at DESC, rowid DESC",
                             (user_id,))
    return [Sound.from_row(row) for row in rows]


async def delete(db: Database, store: MediaStore, triggers: TriggerStore, user_id: int, filename: str,
                 force: bool) -> list[int]:
    """Removes the sound (row, then file); returns the ids of the triggers `force` disabled.

    404 `sound file not found` for no such sound; 409 `sound in use` with the trigger ids unless force.
    """
    if not is_sound_name(filename):  # no row can have such a name; spare the database the lookup
        raise sound_not_found()
    disabled = await run_to_end(_delete(db, store, triggers, user_id, filename, force))
    if store.replica is not None:
        await run_to_end(store.replica.delete(user_id, filename))
    _LOGGER.info("sound %s deleted (user %d%s)", filename, user_id,
                 f", disabled triggers {disabled}" if disabled else "")
    return disabled


async def _delete(db: Database, store: MediaStore, triggers: TriggerStore, user_id: int, filename: str,
                  force: bool) -> list[int]:
    disabled: list[int] = []
    try:
        # One transaction with the trigger check: a trigger saved meanwhile (it checks the row in its own
        # BEGIN IMMEDIATE) either sees the sound gone or is seen here.
        async with db.transaction():
            if not await db.execute("DELETE FROM sounds WHERE user_id = ? AND filename = ?", (user_id, filename)):
                raise sound_not_found()
            in_use = await triggers.ids_using_sound(user_id, filename)
            if in_use and not force:
                raise sound_in_use(in_use)
            if in_use:
                disabled = await triggers.disable_for_sound(user_id, filename)
            # Unlinked inside the transaction, so an upload of the same name cannot slip in between and lose
            # its new file; only a failing COMMIT after this point could leave the row without its file.
            try:
                await store.delete(user_id, filename)
            except OSError as exc:  # e.g. a read-only media folder: the row is kept (rolled back) with its file
                _LOGGER.error("sound %s of user %d could not be removed from %s: %s", filename, user_id,
                              store.root, exc)
                raise storage_failed(exc) from exc
    except BaseException:
        if disabled:
            await triggers.refresh(user_id)  # the rules in memory were refreshed inside the rolled-back unit
        raise
    if disabled:
        await triggers.announce(user_id)
    return disabled
