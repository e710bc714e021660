"""Per-user event stream: seq numbers, the bounded replay buffer, fan-out to the socket; rows for the event log."""

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

from ..db import AnyDatabase
from .eventlog import MAX_WAITING, RETRY_MAX_SECONDS, RETRY_MIN_SECONDS, EventLog
from .seqs import RENEW_BELOW, SEQ_BLOCK, SeqReservations

_LOGGER = logging.getLogger(__name__)


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


class Relay(Protocol):
    """Cluster mode (cluster/homes.py): each user's frames are numbered on one worker, the user's home; every other
    worker with a socket of the user keeps a copy of the channel, fed with the home's frames."""

    def sent(self, user_id: int, seq: int, type_: str, frame: str, timing: FrameTiming | None) -> None:
        """A frame numbered here (this worker is the home): to the copies on other workers, without blocking."""

    def forward(self, user_id: int, type_: str, payload: dict[str, Any], log: bool, live: bool) -> None:
        """A frame made on a worker that is not the user's home (a demo event, a rehearsal): the home numbers it."""

    async def follow(self, user_id: int) -> None:
        """Starts feeding a copy channel (receive()) with the frames of the window, then each new one."""

    async def unfollow(self, user_id: int) -> None: ...

    def forgotten(self, user_id: int, home: bool) -> None:
        """The channel was released (janitor): the home lets go of the user."""


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
    """The stream_sessions row events belong to; its id arrives after the events may have started (the event
    log and the figures hold them until it does), or the row could not be written (they go without it)."""

    id: int | None = None
    failed: bool = False  # the row's INSERT ended without an id: its events are logged without a stream

    @property
    def pending(self) -> bool:
        """The row is still being written: neither its id nor its failure is known yet."""
        return self.id is None and not self.failed


@dataclass(slots=True)
class Channel:
    user_id: int
    seq: int
    seq_top: int  # the stored reservation: seq may not pass it (see pipeline/seqs.py)
    buffer: deque[tuple[int, float, str]]  # (seq, monotonic time, encoded frame)
    subscriber: Subscriber | None = None
    last_status: tuple[int, str] | None = None  # (seq, frame) of the latest status, re-sent on connect
    state: str | None = None  # the state that status reported
    stream: StreamRef | None = None  # the LIVE stream now being watched, if any
    language: str = "ru"  # language of the connected app, for status/error texts
    overlays: set[Subscriber] = field(default_factory=set)  # read-only overlay sockets (spec §9), any number
    meta: dict[str, Any] = field(default_factory=dict)
    renewing: asyncio.Task[None] | None = None  # the seq reservation being raised
    home: bool = True  # this worker numbers the user's frames; False: a copy fed by the home (cluster mode)
    touched: float = 0.0  # clock() of the last use (channel(), publish, attach, detach): released a window later


class EventBus:
    """Channels are created asynchronously once (their seq continues above the stored reservation);
    publishing is synchronous."""

    def __init__(self, db: AnyDatabase, *, replay_events: int, replay_seconds: float, language: str = "ru",
                 retention_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, recorder: Recorder | None = None,
                 log_max_waiting: int = MAX_WAITING,
                 retry_seconds: tuple[float, float] = (RETRY_MIN_SECONDS, RETRY_MAX_SECONDS)) -> None:
        self._recorder = recorder
        self._relay: Relay | None = None
        self._replay_events = replay_events
        self._replay_seconds = replay_seconds
        self._language = language
        self._clock = clock
        self._wall = wall
        self._retry_min, self._retry_max = retry_seconds
        self._seqs = SeqReservations(db)
        self.log = EventLog(db, retention_seconds=retention_seconds, wall=wall, ts_text=frame_ts, clock=clock,
                            max_waiting=log_max_waiting, retry_seconds=retry_seconds)
        self._channels: dict[int, Channel] = {}
        self._creating: dict[int, asyncio.Future[Channel]] = {}

    async def start(self) -> None:
        await self.log.start()

    def relay_to(self, relay: Relay) -> None:
        """Cluster mode, before the first channel: channels start as copies; own() makes one the home."""
        self._relay = relay

    async def close(self) -> None:
        renewals = [c.renewing for c in self._channels.values() if c.renewing is not None]
        for task in renewals:
            task.cancel()
        await asyncio.gather(*renewals, return_exceptions=True)
        await self.log.close()
        try:
            await self._seqs.give_back([(c.user_id, c.seq, c.seq_top) for c in self._channels.values() if c.home])
        except Exception:  # harmless: the next start continues above the reservation, with a gap
            _LOGGER.exception("could not give back the unused seq reservations")

    async def channel(self, user_id: int) -> Channel:
        """The user's channel, created on first use with seq continuing above every number handed out before."""
        existing = self._channels.get(user_id)
        if existing is not None:
            existing.touched = self._clock()  # about to be used: not released under its caller (janitor.py)
            return existing
        creating = self._creating.get(user_id)
        if creating is not None:  # two callers at once share one creation
            await asyncio.wait([creating])  # its outcome; a cancel of this caller still ends the wait
            if creating.cancelled():  # the creator's request was cancelled, not this one: create it here
                return await self.channel(user_id)
            return creating.result()
        future: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
        self._creating[user_id] = future
        try:
            if self._relay is None:
                last, top = await self._seqs.open(user_id, self.log.last_waiting_seq(user_id))
                channel = Channel(user_id, last, top, deque(maxlen=self._replay_events), language=self._language,
                                  touched=self._clock())
                self._channels[user_id] = channel
            else:  # a copy until this worker becomes the user's home (own())
                channel = Channel(user_id, 0, 0, deque(maxlen=self._replay_events), language=self._language,
                                  touched=self._clock(), home=False)
                self._channels[user_id] = channel
                try:
                    await self._relay.follow(user_id)
                except BaseException:
                    del self._channels[user_id]
                    await asyncio.shield(self._relay.unfollow(user_id))
                    raise
            future.set_result(channel)
            return channel
        except asyncio.CancelledError:
            future.cancel()  # the creator's own cancel: callers sharing the creation start one of their own
            raise
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
        if not channel.home:
            assert self._relay is not None
            self._relay.forward(user_id, type_, payload, log, live)
            return 0  # numbered by the home; its frame reaches this worker's sockets from there
        channel.seq += 1
        if channel.seq_top - channel.seq < RENEW_BELOW:
            self._renew(channel)
        wall = self._wall()
        ts = frame_ts(wall)
        body = encode(payload)
        frame = encode_frame(type_, channel.seq, ts, payload, body)
        now = channel.touched = self._clock()
        channel.buffer.append((channel.seq, now, frame))
        self._trim(channel, now)
        if type_ == "status":
            channel.last_status = (channel.seq, frame)
            channel.state = payload["state"]
        if channel.subscriber is not None:
            channel.subscriber.deliver(frame, timing)
        for overlay in channel.overlays:
            overlay.deliver(frame, timing)
        if self._relay is not None:
            self._relay.sent(user_id, channel.seq, type_, frame, timing)
        if log:
            stream = channel.stream if live else None
            self.log.append((user_id, stream, channel.seq, type_, ts, body))
            if stream is not None and self._recorder is not None:
                self._recorder.record(stream, type_, payload, ts)
        return channel.seq

    def receive(self, user_id: int, seq: int, type_: str, frame: str, timing: FrameTiming | None) -> None:
        """A frame of the user's home (cluster mode), into this worker's copy: buffered and delivered like one
        published here. Anything not newer than the last one taken is dropped: a late frame of a home that lost
        the user, or a frame of the stored window that arrived live too."""
        channel = self._channels.get(user_id)
        if channel is None or channel.home or seq <= channel.seq:
            return
        channel.seq = seq
        now = channel.touched = self._clock()
        channel.buffer.append((seq, now, frame))
        self._trim(channel, now)
        if type_ == "status":
            channel.last_status = (seq, frame)
            channel.state = json.loads(frame).get("state")
        if channel.subscriber is not None:
            channel.subscriber.deliver(frame, timing)
        for overlay in channel.overlays:
            overlay.deliver(frame, timing)

    async def own(self, user_id: int) -> None:
        """This worker became the user's home: it numbers the frames from now on, above every number any worker
        may have handed out (the stored reservation), and stops copying the old home's."""
        channel = await self.channel(user_id)
        if channel.home:
            return
        assert self._relay is not None
        last, top = await self._seqs.open(user_id, channel.seq)
        channel.seq, channel.seq_top, channel.home = max(channel.seq, last), top, True
        await self._relay.unfollow(user_id)

    async def disown(self, user_id: int, *, give_back: bool, follow: bool) -> None:
        """This worker is no longer the user's home (handed over: give_back the unused reservation; lost: keep
        it); follow: the channel becomes a copy fed by the new home (False only when this worker is stopping:
        the channel stays here, and a socket given it later must get frames)."""
        channel = self._channels.get(user_id)
        if channel is None or not channel.home:
            return
        assert self._relay is not None
        channel.home = False
        if channel.renewing is not None:
            channel.renewing.cancel()
            await asyncio.gather(channel.renewing, return_exceptions=True)
        if give_back:
            await self._seqs.give_back([(user_id, channel.seq, channel.seq_top)])
        if follow:
            await self._relay.follow(user_id)

    def _renew(self, channel: Channel) -> None:
        if channel.renewing is None:
            channel.renewing = asyncio.create_task(self._raise_reservation(channel),
                                                   name=f"seq-reserve-{channel.user_id}")
        elif channel.seq == channel.seq_top + 1:
            _LOGGER.warning("user %s: seq passed its stored reservation (the database is not writing); a crash "
                            "now could repeat numbers", channel.user_id)

    async def _raise_reservation(self, channel: Channel) -> None:
        retry = self._retry_min
        try:
            while True:
                top = channel.seq + SEQ_BLOCK
                try:
                    if not await self._seqs.extend(channel.user_id, channel.seq_top, top):
                        # Another worker's channel reserved above this block: the numbers past it are theirs.
                        last, top = await self._seqs.open(channel.user_id, channel.seq)
                        channel.seq = max(channel.seq, last)  # a gap, never a number of theirs
                except Exception as exc:
                    _LOGGER.error("user %s: could not store the seq reservation (%s); retrying in %.1f s",
                                  channel.user_id, exc, retry)
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, self._retry_max)
                else:
                    channel.seq_top = top
                    return
        finally:
            channel.renewing = None

    def replay(self, user_id: int, since: int) -> list[tuple[int, str]]:
        """Buffered (seq, frame) with seq > since, in order (what the app missed while away)."""
        channel = self._channels.get(user_id)
        if channel is None:
            return []
        self._trim(channel, self._clock())
        return [(seq, frame) for seq, _, frame in channel.buffer if seq > since]

    def oldest(self, user_id: int) -> int:
        """The oldest seq still in the replay buffer (trimmed by age first); seq + 1 when it is empty."""
        channel = self._channels[user_id]
        self._trim(channel, self._clock())
        return channel.buffer[0][0] if channel.buffer else channel.seq + 1

    def attach(self, user_id: int, subscriber: Subscriber) -> None:
        """From now on the subscriber gets the user's frames as they are published."""
        channel = self._channels.get(user_id)
        if channel is not None:
            channel.subscriber, channel.touched = subscriber, self._clock()

    def detach(self, user_id: int, subscriber: Subscriber) -> None:
        channel = self._channels.get(user_id)
        if channel is not None and channel.subscriber is subscriber:
            channel.subscriber, channel.touched = None, self._clock()

    def cached_users(self) -> list[int]:
        return list(self._channels)

    def trim_idle(self) -> None:
        """Drops frames older than the replay window from every buffer, also of users nothing publishes to."""
        now = self._clock()
        for channel in self._channels.values():
            self._trim(channel, now)

    def forget(self, user_id: int) -> bool:
        """Releases the channel of a user no socket reads and nothing published to for the whole replay window
        (its buffer holds nothing replayable any more); False while it is still in use. channel() makes it
        again on demand."""
        channel = self._channels.get(user_id)
        if user_id in self._creating:
            return False
        if channel is None:
            return True
        if (channel.subscriber is not None or channel.overlays or channel.renewing is not None
                or self._clock() - channel.touched < self._replay_seconds):
            return False
        # The unused rest of its seq reservation stays reserved: channel() goes on above it (a gap, no repeat).
        del self._channels[user_id]
        if self._relay is not None:
            self._relay.forgotten(user_id, channel.home)
        return True

    def attach_overlay(self, user_id: int, subscriber: Subscriber) -> None:
        self._channels[user_id].overlays.add(subscriber)

    def detach_overlay(self, user_id: int, subscriber: Subscriber) -> None:
        channel = self._channels.get(user_id)
        if channel is not None:
            channel.overlays.discard(subscriber)

    def _trim(self, channel: Channel, now: float) -> None:
        buffer = channel.buffer
        while buffer and now - buffer[0][1] > self._replay_seconds:
            buffer.popleft()
