"""Open app sockets: one per user, each with a writer task draining a bounded queue; slow clients are dropped."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from aiohttp import WSCloseCode, web

from .pipeline.bus import encode, frame_ts
from .users import User

_LOGGER = logging.getLogger(__name__)

CLOSE_REPLACED: Final = 4001  # a newer connection of the same user took over
REPLY_DRAIN_SECONDS: Final = 5.0  # seconds the reader waits for its replies to drain before "too slow"


class Connection:
    """One app socket. deliver() never blocks: a full queue means the client is too slow and is closed."""

    def __init__(self, ws: web.WebSocketResponse, user: User, queue_size: int, language: str) -> None:
        self.ws = ws
        self.user = user
        self.language = language
        # +1: room for the close marker of a graceful close even when the frames filled the queue
        self._queue: asyncio.Queue[str | tuple[int, str]] = asyncio.Queue(maxsize=queue_size + 1)
        self._queue_size = queue_size
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{user.id}")
        self._closer: asyncio.Task[None] | None = None
        self._closing_after_flush = False
        self._drained = asyncio.Event()  # set by the writer once the queue is down to a quarter
        self.demo: asyncio.Task[None] | None = None

    def deliver(self, frame: str) -> None:
        if self._closer is not None or self._closing_after_flush:
            return
        if self._queue.qsize() >= self._queue_size:
            _LOGGER.warning("ws user=%s: send queue full, closing a too slow client", self.user.id)
            self.close(WSCloseCode.POLICY_VIOLATION, "too slow")
            return
        self._queue.put_nowait(frame)

    def send_local(self, type_: str, **fields: Any) -> None:
        """A reply to this client only (pong, bad_request): no seq, never replayed."""
        self.deliver(encode({"type": type_, "ts": frame_ts(time.time()), **fields}))

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
                await self.ws.send_str(item)
                if self._queue.qsize() <= self._queue_size // 4:
                    self._drained.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-send
            _LOGGER.debug("ws user=%s: send failed: %s", self.user.id, exc)
            self.close(WSCloseCode.GOING_AWAY, "send failed")
        finally:
            self._drained.set()

    async def backpressure(self) -> None:
        """The reader calls this after each client message. Its replies go through the same bounded queue as
        the events, and a burst of messages that arrived in one read is handled without the writer getting a
        turn; so once half the queue is taken, the reader stops reading (TCP holds the client's next messages)
        until the writer has sent it down to a quarter. Only a client that does not read its replies for
        REPLY_DRAIN_SECONDS is too slow."""
        if self._closer is not None or self._queue.qsize() < self._queue_size // 2:
            return
        self._drained.clear()
        try:
            await asyncio.wait_for(self._drained.wait(), REPLY_DRAIN_SECONDS)
        except TimeoutError:
            _LOGGER.warning("ws user=%s: replies not read for %.0f s, closing a too slow client", self.user.id,
                            REPLY_DRAIN_SECONDS)
            self.close(WSCloseCode.POLICY_VIOLATION, "too slow")

    async def release(self) -> None:
        """Cancels and awaits everything this connection started."""
        tasks = [t for t in (self._writer, self.demo) if t is not None]
        for task in tasks:
            task.cancel()
        if self._closer is not None:
            tasks.append(self._closer)
        await asyncio.gather(*tasks, return_exceptions=True)


class SocketRegistry:
    """Open sockets by user; a new socket replaces the old (4001) and never waits for it."""

    def __init__(self) -> None:
        self._by_user: dict[int, Connection] = {}
        self._all: set[Connection] = set()

    def __len__(self) -> int:
        return len(self._all)

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

    def current(self, user_id: int) -> Connection | None:
        return self._by_user.get(user_id)

    async def close_all(self) -> None:
        for conn in list(self._all):
            conn.close(WSCloseCode.GOING_AWAY, "server shutdown")
        await asyncio.gather(*(conn.release() for conn in list(self._all)), return_exceptions=True)
