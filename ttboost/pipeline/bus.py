"""Per-user event stream: seq numbers, the bounded replay buffer, fan-out to the socket, the batched event log."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Final, Protocol

from ..db import Database, DatabaseError

_LOGGER = logging.getLogger(__name__)

LOG_FLUSH_SECONDS: Final = 1.0  # how often queued event-log rows are written in one batch
LOG_MAX_PENDING: Final = 50_000  # rows held while the database lags; the oldest are dropped beyond this
_INSERT_EVENT: Final = "INSERT INTO events (user_id, session_id, seq, type, ts, payload) VALUES (?, ?, ?, ?, ?, ?)"
PRUNE_EVERY_SECONDS: Final = 3600.0  # how often rows past the retention are deleted


@dataclass(frozen=True, slots=True)
class FrameTiming:
    """When an event frame's event was made and read (Unix ms); the socket adds when it wrote the frame."""

    type: str
    tiktok_ms: int  # TikTok's create time; 0 when the event carried none (simulate, demo)
    received_ms: int


class Subscriber(Protocol):
    def deliver(self, frame: str, timing: FrameTiming | None = None) -> None:
        """Takes one encoded frame without blocking (a slow client is dropped, never waited on); timing is
        given with a LIVE event's frame as it is published, never with replayed ones."""


class Recorder(Protocol):
    def record(self, stream: StreamRef, type_: str, payload: dict[str, Any], ts: str) -> None:
        """Counts one logged frame of a LIVE stream into its figures, without blocking (streams/recorder.py)."""


_RESERVED: Final = frozenset({"type", "seq", "ts"})  # frame keys publish() puts before the payload's own


def frame_ts(wall: float) -> str:
    """ISO 8601 UTC with milliseconds and Z, e.g. 2026-11-22T19:46:00.123Z.

    The same text as datetime.fromtimestamp(wall, utc).isoformat(timespec="milliseconds") with Z, at a
    fraction of its cost on the event path: the date and time of day are formatted once per second. The
    microseconds are rounded half-even first, as fromtimestamp does, then truncated to milliseconds.
    """
    fraction, whole = math.modf(wall)
    micros = round(fraction * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:
        second, micros = second - 1, micros + 1_000_000
    return f"{_second_text(second)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    return datetime.fromtimestamp(second, timezone.utc).replace(tzinfo=None).isoformat()


_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps makes one per call


def encode(frame: dict[str, Any]) -> str:
    return _ENCODER.encode(frame)


def encode_frame(type_: str, seq: int, ts: str, payload: dict[str, Any], body: str) -> str:
    """encode({"type": type_, "seq": seq, "ts": ts, **payload}) given body = encode(payload), without a second
    JSON pass over the payload (the event path encodes it once for the socket and the event log)."""
    if not _RESERVED.isdisjoint(payload):  # the payload would override a head key: let dict merging decide
        return encode({"type": type_, "seq": seq, "ts": ts, **payload})
    # frame_ts() text never needs escaping; a type name may in theory, and the few there are repeat.
    head = f'{{"type":{_json_text(type_)},"seq":{int(seq)},"ts":"{ts}"'
    return (head + "}") if body == "{}" else (head + "," + body[1:])


@functools.lru_cache(maxsize=32)
def _json_text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


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
    overlays: set[Subscriber] = field(default_factory=set)  # read-only overlay sockets (spec §9), any number
    meta: dict[str, Any] = field(default_factory=dict)


class EventBus:
    """Channels are created asynchronously once (their seq continues from the log); publishing is synchronous."""

    def __init__(self, db: Database, *, replay_events: int, replay_seconds: float, language: str = "ru",
                 retention_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, recorder: Recorder | None = None) -> None:
        self._db = db
        self._recorder = recorder
        self._retention = retention_seconds
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
        self.write_errors = 0  # failed batch writes and dropped rows, for /metrics

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

    def publish(self, user_id: int, type_: str, payload: dict[str, Any], *, log: bool = True,
                timing: FrameTiming | None = None, live: bool = True) -> int:
        """Numbers, buffers, delivers and logs one frame; the channel must exist (see channel()).

        live=False: not part of the LIVE being watched (a simulated or demo event): logged without a stream
        and left out of its figures. log=False: neither logged nor counted (a rehearsal's frames).
        """
        channel = self._channels[user_id]
        channel.seq += 1
        wall = self._wall()
        ts = frame_ts(wall)
        body = encode(payload)
        frame = encode_frame(type_, channel.seq, ts, payload, body)
        now = self._clock()
        channel.buffer.append((channel.seq, now, frame))
        self._trim(channel, now)
        if type_ == "status":
            channel.last_status = (channel.seq, frame)
            channel.state = payload["state"]
        if channel.subscriber is not None:
            channel.subscriber.deliver(frame, timing)
        for overlay in channel.overlays:
            overlay.deliver(frame, timing)
        if log:
            stream = channel.stream if live else None
            self._pending.append((user_id, stream, channel.seq, type_, ts, body))
            if stream is not None and self._recorder is not None:
                self._recorder.record(stream, type_, payload, ts)
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

    def attach_overlay(self, user_id: int, subscriber: Subscriber) -> None:
        self._channels[user_id].overlays.add(subscriber)

    def detach_overlay(self, user_id: int, subscriber: Subscriber) -> None:
        channel = self._channels.get(user_id)
        if channel is not None:
            channel.overlays.discard(subscriber)

    @property
    def pending_rows(self) -> int:
        """Event-log rows waiting for the next batch write."""
        return len(self._pending)

    def _trim(self, channel: Channel, now: float) -> None:
        buffer = channel.buffer
        while buffer and now - buffer[0][1] > self._replay_seconds:
            buffer.popleft()

    async def prune(self) -> int:
        """Deletes logged events older than the retention (0: keep everything); returns how many."""
        if self._retention <= 0:
            return 0
        cutoff = frame_ts(self._wall() - self._retention)  # same text format as ts, so text order is time order
        removed = await self._db.execute("DELETE FROM events WHERE ts < ?", (cutoff,))
        if removed:
            _LOGGER.info("event log: pruned %d events older than %.0f days", removed, self._retention / 86400)
        return removed

    async def _write_log(self) -> None:
        next_prune = self._clock()
        while True:
            if self._clock() >= next_prune:
                next_prune = self._clock() + PRUNE_EVERY_SECONDS
                try:
                    await self.prune()
                except Exception:
                    _LOGGER.exception("event log: pruning failed")
            try:
                await asyncio.wait_for(self._wakeup.wait(), LOG_FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self._flush()
            except Exception:  # a failing disk must not stop the stream; rows stay queued (bounded)
                self.write_errors += 1
                _LOGGER.exception("event log: batch write failed")

    async def _flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        values = [(user_id, stream.id if stream else None, *rest) for user_id, stream, *rest in rows]
        try:
            await self._insert(values)
        except (ValueError, UnicodeError, *DatabaseError):
            # One bad row must not block the log forever: write row by row and drop only what fails.
            await self._insert_each(values)
        except BaseException:
            self._pending[:0] = rows  # the database is away (disk, lock): keep them for the next batch
            raise

    async def _insert(self, values: list[tuple[Any, ...]]) -> None:
        async with self._db.transaction():
            await self._db.executemany(_INSERT_EVENT, values)

    async def _insert_each(self, values: list[tuple[Any, ...]]) -> None:
        for row in values:
            try:
                await self._insert([row])
            except (ValueError, UnicodeError, *DatabaseError) as exc:
                self.write_errors += 1
                _LOGGER.error("event log: dropped event seq %s of user %s: %s", row[2], row[0], exc)
