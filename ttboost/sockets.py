"""Open app sockets: one per user, each with a writer task draining a bounded queue and pulling replays at the
client's pace; clients that stop reading are dropped."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final, Protocol

from aiohttp import WSCloseCode, web

from .metrics import Metrics
from .pipeline.bus import FrameTiming, encode, frame_ts
from .users import User

_LOGGER = logging.getLogger(__name__)

CLOSE_REPLACED: Final = 4001  # a newer connection of the same user took over
READ_TIMEOUT_SECONDS: Final = 5.0  # a client that takes no frame for this long is "too slow" (1008)


class ReplaySource(Protocol):
    """Where a replay is pulled from (the bus): buffered frames after a seq, then the live stream."""

    def replay(self, user_id: int, since: int) -> list[tuple[int, str]]: ...

    def attach(self, user_id: int, subscriber: Any) -> None: ...

    def detach(self, user_id: int, subscriber: Any) -> None: ...


class _Local:
    """A reply for this socket only (pong, bad_request): no seq, so a replay never carries it; kept when a
    resume drops the live frames already queued."""

    __slots__ = ("frame",)

    def __init__(self, frame: str) -> None:
        self.frame = frame


class _Replay:
    """Marks where in the queue a replay starts: the writer then pulls frames after `since` at the client's
    pace (a status frame `first` before them, if given) until it has caught up, then attaches to the stream."""

    __slots__ = ("source", "since", "first")

    def __init__(self, source: ReplaySource, since: int, first: str | None) -> None:
        self.source, self.since, self.first = source, since, first


class _Timed:
    """A LIVE event's frame on its way to the socket, with the times its timing fields are made from."""

    __slots__ = ("frame", "timing")

    def __init__(self, frame: str, timing: FrameTiming) -> None:
        self.frame, self.timing = frame, timing


def with_timing(frame: str, timing: FrameTiming, sent: float) -> str:
    """The frame with `"timing": {tiktok_ms, received_ms, sent_ms}` (spec §6), spliced into its JSON text."""
    tiktok = str(timing.tiktok_ms) if timing.tiktok_ms else "null"
    return (f'{frame[:-1]},"timing":{{"tiktok_ms":{tiktok},"received_ms":{timing.received_ms},'
            f'"sent_ms":{int(sent * 1000)}}}}}')


class Connection:
    """One socket (the app's, or an overlay's). deliver() never blocks: a full queue means the client is too slow
    and is closed.

    kind: "app" or "overlay" (for /metrics; only the app's frames count as delivered events);
    timing: the app asked for timing fields in event frames (?timing=1).
    """

    def __init__(self, ws: web.WebSocketResponse, user: User, queue_size: int, language: str, *,
                 kind: str = "app", timing: bool = False, metrics: Metrics | None = None,
                 read_timeout: float = READ_TIMEOUT_SECONDS) -> None:
        self.ws = ws
        self.user = user
        self.language = language
        self.kind = kind
        self._timing = timing
        self._metrics = metrics
        # +1: room for the close marker of a graceful close even when the frames filled the queue
        self._queue: asyncio.Queue[str | _Timed | _Local | _Replay | tuple[int, str]] = asyncio.Queue(
            maxsize=queue_size + 1)
        self._queue_size = queue_size
        self._read_timeout = read_timeout
        self._replays_queued = 0
        self._last_sent = time.monotonic()  # when the client last took a frame (progress, not a full queue)
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{user.id}")
        self._closer: asyncio.Task[None] | None = None
        self._closing_after_flush = False
        self._drained = asyncio.Event()  # set by the writer once the queue is down to a quarter
        self.demo: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        """A close has been decided (now, or once the queued frames are sent)."""
        return self._closer is not None or self._closing_after_flush

    def deliver(self, frame: str, timing: FrameTiming | None = None) -> None:
        self._put(frame if timing is None else _Timed(frame, timing))

    def _put(self, item: str | _Timed | _Local | _Replay) -> bool:
        if self.closing:
            return False
        if self._queue.qsize() >= self._queue_size:
            _LOGGER.warning("ws user=%s: send queue full, closing a too slow %s client", self.user.id, self.kind)
            self._too_slow()
            return False
        self._queue.put_nowait(item)
        return True

    def replay(self, source: ReplaySource, since: int, first: str | None = None) -> None:
        """Sends the buffered frames after `since` (after `first`, if given), then the live stream. The writer
        pulls them at the pace the client reads, so no replay, however long, fills the queue; the socket is
        detached from the stream until the replay has caught up. Live frames already queued are dropped: the
        replay carries them again, in order."""
        source.detach(self.user.id, self)
        kept = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, (_Local, _Replay, tuple)):
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)
        if self._put(_Replay(source, since, first)):
            self._replays_queued += 1

    def _too_slow(self) -> None:
        if self._metrics is not None and self._closer is None:
            self._metrics.slow_close(self.kind)
        self.close(WSCloseCode.POLICY_VIOLATION, "too slow")

    def send_local(self, type_: str, **fields: Any) -> None:
        """A reply to this client only (pong, bad_request): no seq, never replayed."""
        self._put(_Local(encode({"type": type_, "ts": frame_ts(time.time()), **fields})))

    def close_after_flush(self, code: int, reason: str) -> None:
        """Closes once the frames already queued are sent (e.g. the license_expired error before 4003)."""
        if self._closer is None and not self._closing_after_flush:
            self._closing_after_flush = True
            self._queue.put_nowait((code, reason))

    def close(self, code: int, reason: str) -> None:
        """Closes now; frames still queued are dropped."""
        if self._closer is None:
            self._writer.cancel()  # nothing more is sent; a slow client's pending frames are dropped
            self._drained.set()  # a reader waiting in backpressure() goes on to see the close
            self._closer = asyncio.create_task(self._close(code, reason), name=f"ws-close-{self.user.id}")

    async def _close(self, code: int, reason: str) -> None:
        # drain=False: a client that stopped reading must not hold the close up.
        await self.ws.close(code=code, message=reason.encode(), drain=False)

    async def _write(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, tuple):
                    self._closer = asyncio.create_task(self._close(*item), name=f"ws-close-{self.user.id}")
                    return
                if isinstance(item, _Replay):
                    self._replays_queued -= 1
                    await self._pull(item)
                    continue
                if isinstance(item, _Timed):
                    item = self._written(item)
                elif isinstance(item, _Local):
                    item = item.frame
                await self.ws.send_str(item)
                self._last_sent = time.monotonic()
                if self._queue.qsize() <= self._queue_size // 4:
                    self._drained.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-send
            _LOGGER.debug("ws user=%s: send failed: %s", self.user.id, exc)
            self.close(WSCloseCode.GOING_AWAY, "send failed")
        finally:
            self._drained.set()

    async def _pull(self, replay: _Replay) -> None:
        """Sends a replay frame by frame, each as soon as the client has taken the one before; frames
        published meanwhile are in the buffer too, so it goes on until nothing is left, then attaches (with
        no await in between, so no frame falls between the replay and the stream)."""
        cursor = replay.since
        pending = [(cursor, replay.first)] if replay.first is not None else []
        while True:
            for seq, frame in pending:
                if self._replays_queued:
                    return  # a resume asked for another start: that replay follows, and it attaches
                try:
                    async with asyncio.timeout(self._read_timeout):
                        await self.ws.send_str(frame)
                except TimeoutError:
                    _LOGGER.warning("ws user=%s: no frame of a replay taken for %.0f s, closing a too slow client",
                                    self.user.id, self._read_timeout)
                    self._too_slow()
                    return
                self._last_sent = time.monotonic()
                cursor = max(cursor, seq)
            pending = replay.source.replay(self.user.id, cursor)
            if not pending:
                break
        if not self._replays_queued:
            replay.source.attach(self.user.id, self)

    def _written(self, item: _Timed) -> str:
        """The text of a LIVE event frame about to be written, timed now (spec §6 sent_ms, §10 latencies)."""
        sent = time.time()
        if self._metrics is not None and self.kind == "app":
            self._metrics.frame_written(item.timing, sent)
        return with_timing(item.frame, item.timing, sent) if self._timing else item.frame

    async def backpressure(self) -> None:
        """The reader calls this after each client message. Its replies go through the same bounded queue as
        the events, and a burst of messages that arrived in one read is handled without the writer getting a
        turn; so once half the queue is taken, the reader stops reading (TCP holds the client's next messages)
        until the writer has sent it down to a quarter. Only a client that takes no frame at all for the read
        timeout is too slow: one that is still taking a long replay ahead of its replies is not."""
        if self._closer is not None or self._queue.qsize() < self._queue_size // 2:
            return
        self._drained.clear()
        waiting_since = time.monotonic()
        while not self._drained.is_set():
            idle_until = max(self._last_sent, waiting_since) + self._read_timeout
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that comes in the same
                # loop turn as the event (pipeline/eventlog.py), and the handler would go on past a shutdown.
                async with asyncio.timeout(max(idle_until - time.monotonic(), 0.0)):
                    await self._drained.wait()
            except TimeoutError:
                if time.monotonic() >= max(self._last_sent, waiting_since) + self._read_timeout:
                    _LOGGER.warning("ws user=%s: no frame taken for %.0f s, closing a too slow client",
                                    self.user.id, self._read_timeout)
                    self._too_slow()
                    return

    async def release(self) -> None:
        """Cancels and awaits everything this connection started."""
        tasks = [t for t in (self._writer, self.demo) if t is not None]
        for task in tasks:
            task.cancel()
        if self._closer is not None:
            tasks.append(self._closer)
        await asyncio.gather(*tasks, return_exceptions=True)


class SocketRegistry:
    """Open sockets by user: the app's one (a new socket replaces the old with 4001 and never waits for it), and
    any number of read-only overlay sockets beside it (spec §9), which never count as or replace the app's."""

    def __init__(self) -> None:
        self._by_user: dict[int, Connection] = {}
        self._all: set[Connection] = set()
        self._overlays: dict[int, dict[Connection, str]] = {}  # user id -> {socket: digest of the key it used}

    def __len__(self) -> int:
        """Open app sockets."""
        return len(self._all)

    def overlay_count(self) -> int:
        return sum(len(conns) for conns in self._overlays.values())

    def add_overlay(self, conn: Connection, key_digest: str) -> None:
        self._overlays.setdefault(conn.user.id, {})[conn] = key_digest

    def remove_overlay(self, conn: Connection) -> None:
        conns = self._overlays.get(conn.user.id)
        if conns is not None:
            conns.pop(conn, None)
            if not conns:
                del self._overlays[conn.user.id]

    def overlays(self) -> list[Connection]:
        return [c for conns in self._overlays.values() for c in conns]

    def overlay_key_digest(self, conn: Connection) -> str | None:
        """The digest of the overlay key conn was opened with (None: not an open overlay socket)."""
        return self._overlays.get(conn.user.id, {}).get(conn)

    def close_overlays(self, user_id: int, code: int, reason: str) -> None:
        """Closes every overlay socket of user_id now (its key was rotated or revoked)."""
        for conn in list(self._overlays.get(user_id, ())):
            conn.close(code, reason)

    def add(self, conn: Connection) -> None:
        old = self._by_user.get(conn.user.id)
        if old is not None:
            old.close(CLOSE_REPLACED, "replaced")
        self._by_user[conn.user.id] = conn
        self._all.add(conn)

    def remove(self, conn: Connection) -> None:
        self._all.discard(conn)
        if self._by_user.get(conn.user.id) is conn:
            del self._by_user[conn.user.id]

    def connections(self) -> list[Connection]:
        return list(self._all)

    def current(self, user_id: int) -> Connection | None:
        return self._by_user.get(user_id)

    async def close_all(self) -> None:
        conns = [*self._all, *self.overlays()]
        for conn in conns:
            conn.close(WSCloseCode.GOING_AWAY, "server shutdown")
        await asyncio.gather(*(conn.release() for conn in conns), return_exceptions=True)
