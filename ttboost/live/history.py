"""stream_sessions rows: when each LIVE connection began and ended, for stats and replay later."""

from __future__ import annotations

from ..db import AnyDatabase, Database
from ..timeutil import iso, utcnow


class StreamRows:
    """Writes each LIVE's row as it begins and ends. One per app: create_app(stream_rows=...) lets a test hold
    or break the INSERT, which runs while the LIVE's first events already flow (see bus.StreamRef)."""

    def __init__(self, db: AnyDatabase) -> None:
        self._db = db

    async def begin(self, user_id: int, tiktok_username: str) -> int:
        return await self._db.execute(
            "INSERT INTO stream_sessions (user_id, tiktok_username, started_at) VALUES (?, ?, ?)",
            (user_id, tiktok_username, iso(utcnow())))

    async def end(self, session_id: int, reason: str, ended_at: str | None = None) -> None:
        """Closes the row now, or at ended_at (ISO; e.g. when the connection dropped and never came back)."""
        await self._db.execute(
            "UPDATE stream_sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
            (ended_at or iso(utcnow()), reason, session_id))


async def close_dangling(db: Database, user_id: int | None = None) -> int:
    """Rows left open by a crash are closed at start-up, so no stream looks live forever: they end with the
    last frame their figures recorded (the start, if none), and keep the figures written before the crash.
    user_id: only that user's (cluster mode: its new home closes what the dead one left open)."""
    sql = ("UPDATE stream_sessions SET end_reason = 'crashed', ended_at = CASE "
           "WHEN last_event_at IS NOT NULL AND last_event_at > started_at THEN last_event_at ELSE started_at END "
           "WHERE ended_at IS NULL")
    if user_id is None:
        return await db.execute(sql)
    return await db.execute(sql + " AND user_id = ?", (user_id,))


async def users_with_open_streams(db: Database) -> list[int]:
    rows = await db.fetchall("SELECT DISTINCT user_id FROM stream_sessions WHERE ended_at IS NULL")
    return [row["user_id"] for row in rows]
