"""Reads of the stream history: the list, one stream with its breakdowns, its recorded events (spec §8)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, AsyncIterator, Final

from ..db import Database, Row
from ..pipeline.events import EVENT_TYPES
from ..timeutil import parse_iso, utcnow
from .recorder import COUNTED

TOP_GIFTERS: Final = 10  # spec §8: top 10 by diamonds
EVENT_PAGE: Final = 1000  # rows read per trip by the CSV export and the rehearsal
_SUMMARY: Final = ("SELECT id, tiktok_username, started_at, ended_at, end_reason, " + ", ".join(COUNTED)
                   + ", peak_viewers, unique_chatters FROM stream_sessions")
_EVENT_TYPES_SQL: Final = ", ".join(f"'{t}'" for t in EVENT_TYPES)  # our own constants, not input
_EVENTS: Final = (f"SELECT seq, type, ts, payload FROM events WHERE user_id = ? AND session_id = ? AND seq > ? "
                  f"AND type IN ({_EVENT_TYPES_SQL}) ORDER BY seq LIMIT ?")


def _summary(row: Row, now: datetime) -> dict[str, Any]:
    started = parse_iso(row["started_at"])
    ended = parse_iso(row["ended_at"]) if row["ended_at"] else now
    out: dict[str, Any] = {"id": row["id"], "tiktok_username": row["tiktok_username"],
                           "started_at": row["started_at"], "ended_at": row["ended_at"],
                           "end_reason": row["end_reason"],
                           "duration_s": max(0, int((ended - started).total_seconds()))}
    for column in (*COUNTED, "peak_viewers", "unique_chatters"):
        out[column] = row[column]
    return out


async def list_streams(db: Database, user_id: int, *, limit: int, before: int | None) -> list[dict[str, Any]]:
    """Newest first; `before` pages on: only streams with a smaller id."""
    if before is None:
        rows = await db.fetchall(_SUMMARY + " WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit))
    else:
        rows = await db.fetchall(_SUMMARY + " WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                                 (user_id, before, limit))
    now = utcnow()
    return [_summary(row, now) for row in rows]


async def current_stream_id(db: Database, user_id: int) -> int | None:
    return await db.fetchval("SELECT id FROM stream_sessions WHERE user_id = ? AND ended_at IS NULL "
                             "ORDER BY id DESC LIMIT 1", (user_id,))


async def owns_stream(db: Database, user_id: int, stream_id: int) -> bool:
    return await db.fetchval("SELECT 1 FROM stream_sessions WHERE id = ? AND user_id = ?",
                             (stream_id, user_id)) is not None


async def stream_detail(db: Database, user_id: int, stream_id: int) -> dict[str, Any] | None:
    """One stream with top_gifters, gifts_by_name and the per-minute timeline; None if not the user's."""
    row = await db.fetchone(_SUMMARY + " WHERE id = ? AND user_id = ?", (stream_id, user_id))
    if row is None:
        return None
    out = _summary(row, utcnow())
    gifters = await db.fetchall(
        "SELECT username, display_name, diamonds, gifts FROM stream_gifters WHERE session_id = ? "
        "ORDER BY diamonds DESC, gifts DESC, username LIMIT ?", (stream_id, TOP_GIFTERS))
    out["top_gifters"] = [{"user": g["display_name"], "username": g["username"], "diamonds": g["diamonds"],
                           "gifts": g["gifts"]} for g in gifters]
    gifts = await db.fetchall("SELECT gift_id, gift_name, count, diamonds FROM stream_gifts WHERE session_id = ? "
                              "ORDER BY diamonds DESC, count DESC, gift_name, gift_id", (stream_id,))
    out["gifts_by_name"] = [dict(g) for g in gifts]
    minutes = await db.fetchall("SELECT minute, diamonds, chats, likes, viewers FROM stream_minutes "
                                "WHERE session_id = ? ORDER BY minute", (stream_id,))
    out["timeline"] = _timeline(minutes)
    return out


async def event_span(db: Database, user_id: int, stream_id: int) -> Row | None:
    """(n, first, last, last_seq) of the stream's retained events; None when there are none."""
    row = await db.fetchone("SELECT COUNT(*) AS n, MIN(ts) AS first, MAX(ts) AS last, MAX(seq) AS last_seq "
                            f"FROM events WHERE user_id = ? AND session_id = ? AND type IN ({_EVENT_TYPES_SQL})",
                            (user_id, stream_id))
    return row if row is not None and row["n"] else None


def _timeline(minutes: list[Row]) -> list[dict[str, Any]]:
    """Minutes with activity, in order; `viewers` is the minute's highest viewer count, or, when no viewer
    frame came in that minute, the count in effect (the last one sent before; 0 before the first)."""
    timeline, viewers = [], 0
    for m in minutes:
        if m["viewers"] is not None:
            viewers = m["viewers"]
        timeline.append({"minute": m["minute"], "diamonds": m["diamonds"], "chats": m["chats"],
                         "likes": m["likes"], "viewers": viewers})
    return timeline


async def stream_events(db: Database, user_id: int, stream_id: int, *, after_seq: int,
                        limit: int) -> list[dict[str, Any]]:
    """The stream's event frames still in the log (as the app received them), by seq."""
    rows = await db.fetchall(_EVENTS, (user_id, stream_id, after_seq, limit))
    return [{"type": r["type"], "seq": r["seq"], "ts": r["ts"], **json.loads(r["payload"])} for r in rows]


async def all_stream_events(db: Database, user_id: int, stream_id: int,
                            up_to_seq: int | None = None) -> AsyncIterator[list[dict[str, Any]]]:
    """Every retained event frame of the stream, a page at a time (a long stream does not sit in memory)."""
    after = 0
    while True:
        page = await stream_events(db, user_id, stream_id, after_seq=after, limit=EVENT_PAGE)
        if up_to_seq is not None:
            page = [frame for frame in page if frame["seq"] <= up_to_seq]
        if page:
            yield page
        if len(page) < EVENT_PAGE:
            return
        after = page[-1]["seq"]
