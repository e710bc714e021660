"""Per-user event stream: seq numbers, the bounded replay buffer, fan-out to the socket, the batched event log."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Final, Protocol

from ..db import Database

_LOGGER = logging.getLogger(__name__)

LOG_FLUSH_SECONDS: Final = 1.0  # how often queued event-log rows are written in one batch
LOG_MAX_PENDING: Final = 50_000  # rows held while the database lags; the oldest are dropped beyond this


class Subscriber(Protocol):
    def deliver(self, frame: str) -> None:
        """Takes one encoded frame without blocking (a slow client is dropped, never waited on)."""


def frame_ts(wall: float) -> str:
    """ISO 8601 UTC with milliseconds and Z."""
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class StreamRef:
    """The stream_sessions row events belong to; its id arrives after the events may have started."""

    id: int | None = None


@dataclass(slots=True)
class Channel:
    user_id: int
    seq: int
    buffer: deque[tuple[int, float, str]]  # (seq, monotonic time, encoded frame)
    subscriber: Subscriber | None = None
    last_status: tuple[int, str] | None = None  # (seq, frame) of the latest status, re-sent on connect
    state: str | None = None  # the state that status reported
    stream: StreamRef | None = None  # the LIVE stream now being watched, if any
    language: str = "ru"  # language of the connected app, for status/error texts
    meta: dict[str, Any] = field(default_factory=dict)


class EventBus:
    """Channels are created asynchronously once (their seq continues from the log); publishing is synchronous."""

    def __init__(self, db: Database, *, replay_events: int, replay_seconds: float, language: str = "ru",
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self._replay_events = replay_events
        self._replay_seconds = replay_seconds
        self._language = language
        self._clock = clock
        self._wall = wall
        self._channels: dict[int, Channel] = {}
        self._creating: dict[int, asyncio.Future[Channel]] = {}
        self._pending: list[tuple[Any, ...]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_log(), name="event-log-writer")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self._flush()

    async def channel(self, user_id: int) -> Channel:
        """The user's channel, created on first use with seq continuing after the last logged event."""
        existing = self._channels.get(user_id)
        if existing is not None:
            return existing
        if user_id in self._creating:  # two callers at once share one creation
            return await asyncio.shield(self._creating[user_id])
        future: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
        self._creating[user_id] = future
        try:
            last = await self._db.fetchval("SELECT MAX(seq) FROM events WHERE user_id = ?", (user_id,))
            last = max(last or 0, max((r[2] for r in self._pending if r[0] == user_id), default=0))
            channel = Channel(user_id, last, deque(maxlen=self._replay_events), language=self._language)
            self._channels[user_id] = channel
            future.set_result(channel)
            return channel
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._creating[user_id]

    def get(self, user_id: int) -> Channel | None:
        return self._channels.get(user_id)

    def publish(self, user_id: int, type_: str, payload: dict[str, Any], *, log: bool = True) -> int:
        """Numbers, buffers, delivers and logs one frame; the channel must exist (see channel())."""
        channel = self._channels[user_id]
        channel.seq += 1
        wall = self._wall()
        ts = frame_ts(wall)
        frame = encode({"type": type_, "seq": channel.seq, "ts": ts, **payload})
        now = self._clock()
        channel.buffer.append((channel.seq, now, frame))
        self._trim(channel, now)
        if type_ == "status":
            channel.last_status = (channel.seq, frame)
            channel.state = payload["state"]
        if channel.subscriber is not None:
            channel.subscriber.deliver(frame)
        if log:
            self._pending.append((user_id, channel.stream, channel.seq, type_, ts, encode(payload)))
            if len(self._pending) > LOG_MAX_PENDING:
                del self._pending[: len(self._pending) - LOG_MAX_PENDING]
                _LOGGER.warning("event log lagging: dropped the oldest rows")
            if len(self._pending) >= 500:
                self._wakeup.set()
        return channel.seq

    def replay(self, user_id: int, since: int) -> list[str]:
        """Buffered frames with seq > since, in order (what the app missed while away)."""
        channel = self._channels.get(user_id)
        if channel is None:
            return []
        self._trim(channel, self._clock())
        return [frame for seq, _, frame in channel.buffer if seq > since]

    def attach(self, user_id: int, subscriber: Subscriber) -> None:
        self._channels[user_id].subscriber = subscriber

    def detach(self, user_id: int, subscriber: Subscriber) -> None:
        channel = self._channels.get(user_id)
        if channel is not None and channel.subscriber is subscriber:
            channel.subscriber = None

    def _trim(self, channel: Channel, now: float) -> None:
        buffer = channel.buffer
        while buffer and now - buffer[0][1] > self._replay_seconds:
            buffer.popleft()

    async def _write_log(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), LOG_FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self._flush()
            except Exception:  # a failing disk must not stop the stream; rows stay queued (bounded)
                _LOGGER.exception("event log: batch write failed")

    async def _flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        values = [(user_id, stream.id if stream else None, *rest) for user_id, stream, *rest in rows]
        try:
            async with self._db.transaction():
                await self._db.executemany(
                    "INSERT INTO events (user_id, session_id, seq, type, ts, payload) VALUES (?, ?, ?, ?, ?, ?)",
                    values)
        except BaseException:
            self._pending[:0] = rows
            raise
