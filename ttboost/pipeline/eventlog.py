"""The events table behind the bus: rows queued on the event path and written in batches by one task, kept
through transient write errors (retried with back-off, bounded), and pruned past the retention."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable, Final, Protocol

from ..db import AnyDatabase, ValueNotStorable

_LOGGER = logging.getLogger(__name__)

FLUSH_SECONDS: Final = 1.0  # how often waiting rows are written in one batch
FLUSH_AT_ROWS: Final = 500  # this many waiting rows are written at once, without waiting for the interval
MAX_WAITING: Final = 50_000  # rows held while the database cannot write; beyond this the oldest are dropped
RETRY_MIN_SECONDS: Final = 1.0  # first wait after a failed write; doubles on each failure in a row
RETRY_MAX_SECONDS: Final = 30.0  # longest wait between write attempts
DROP_LOG_SECONDS: Final = 60.0  # dropped rows are reported in one log line at most this often
PRUNE_EVERY_SECONDS: Final = 3600.0  # how often rows past the retention are deleted
_INSERT: Final = "INSERT INTO events (user_id, session_id, seq, type, ts, payload) VALUES (?, ?, ?, ?, ?, ?)"



class StreamId(Protocol):
    """The stream a row belongs to; its id may arrive after the row was queued (see bus.StreamRef)."""

    id: int | None

    @property
    def pending(self) -> bool:
        """Its row is still being written: the row waits for the id (written now, it would lose its stream)."""


Row = tuple[int, StreamId | None, int, str, str, str]  # user_id, stream, seq, type, ts, payload


class EventLog:
    def __init__(self, db: AnyDatabase, *, retention_seconds: float, wall: Callable[[], float],
                 ts_text: Callable[[float], str], clock: Callable[[], float] = time.monotonic,
                 max_waiting: int = MAX_WAITING,
                 retry_seconds: tuple[float, float] = (RETRY_MIN_SECONDS, RETRY_MAX_SECONDS)) -> None:
        self._db = db
        self._retention = retention_seconds
        self._wall = wall
        self._ts_text = ts_text
        self._clock = clock
        self._max_waiting = max_waiting
        self._retry_min, self._retry_max = retry_seconds
        self._waiting: deque[Row] = deque()
        # Rows whose stream row is still being inserted: TikTok's first messages come right after the connect,
        # before that INSERT has run. They join _waiting once the id (or the INSERT's failure) is known.
        self._held: deque[Row] = deque()
        self._front = 0  # rows ever taken off the front of _waiting (written or dropped): its first row's number
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0  # rows lost to the bound since start (shown in /health)
        self.write_errors = 0  # failed writes and rows lost (to the bound or as unstorable), for /metrics
        self._dropped_unreported = 0
        self._drop_reported_at: float | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._held)

    def last_waiting_seq(self, user_id: int) -> int:
        return max((row[2] for rows in (self._waiting, self._held) for row in rows if row[0] == user_id),
                   default=0)

    def append(self, row: Row) -> None:
        """Queues one row (synchronous: the event path never waits for the disk)."""
        stream = row[1]
        if stream is None or stream.id is not None or not stream.pending:  # the usual case tested first: cheap
            self._waiting.append(row)
        else:
            self._held.append(row)
        # Held rows count too: an INSERT that never ends holds no memory.
        if len(self._waiting) + len(self._held) > self._max_waiting:
            if self._waiting:
                self._waiting.popleft()
                self._front += 1
            else:
                self._held.popleft()
            self.dropped += 1
            self.write_errors += 1
            self._dropped_unreported += 1
            self._report_drops()
        if len(self._waiting) >= FLUSH_AT_ROWS:
            self._wakeup.set()

    def _report_drops(self) -> None:
        now = self._clock()
        if self._drop_reported_at is None or now - self._drop_reported_at >= DROP_LOG_SECONDS:
            _LOGGER.warning("event log: the database cannot keep up; dropped the %d oldest waiting rows "
                            "(%d still waiting)", self._dropped_unreported, self.waiting)
            self._drop_reported_at = now
            self._dropped_unreported = 0

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name="event-log-writer")

    async def close(self) -> None:
        """Stops the writer and makes one last attempt at what still waits."""
        self._closing = True  # the writer's loop ends at its next turn, even if a cancel were lost on the way
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        # The LIVE sessions have stopped, and with them every stream row's INSERT ended: a row still held now
        # would wait for nothing. It is written without its stream rather than lost.
        pending = len(self._held)
        self._release(everything=True)
        if pending:
            _LOGGER.warning("event log: %d rows written at shutdown without their stream (its row was never "
                            "written)", pending)
        try:
            await self.flush()
        except Exception:
            _LOGGER.exception("event log: %d rows could not be written at shutdown", len(self._waiting))

    def _release(self, *, everything: bool = False) -> None:
        """Moves the held rows whose stream's id (or its INSERT's failure) is known now to the rows to write."""
        if not self._held:
            return
        still: deque[Row] = deque()
        for row in self._held:
            stream = row[1]
            (still if stream is not None and stream.pending and not everything else self._waiting).append(row)
        self._held = still

    async def flush(self) -> None:
        """Writes every waiting row in one transaction (held rows once their stream's id is known). Rows that
        can never be stored are dropped alone; on any other error the rest stay waiting, in order, and the
        error is raised."""
        self._release()
        if not self._waiting:
            return
        rows = list(self._waiting)
        first = self._front
        try:
            await self._insert(rows)
        except ValueNotStorable:
            # One bad row must not block the log forever: write row by row, dropping only what cannot be stored.
            await self._insert_each(rows, first)
            return
        self._forget(first + len(rows))

    def _forget(self, end: int) -> None:
        """Takes the rows numbered below `end` off the front. Rows may have been appended, and past the bound
        the oldest dropped, while a write ran: numbering keeps those apart from the rows just written."""
        while self._front < end and self._waiting:
            self._waiting.popleft()
            self._front += 1

    async def _insert(self, rows: list[Row]) -> None:
        values = [(user_id, stream.id if stream else None, *rest) for user_id, stream, *rest in rows]
        async with self._db.transaction():
            await self._db.executemany(_INSERT, values)

    async def _insert_each(self, rows: list[Row], first: int) -> None:
        for number, row in enumerate(rows, start=first):
            try:
                await self._insert([row])
            except ValueNotStorable as exc:
                self.write_errors += 1
                _LOGGER.error("event log: dropped event seq %s of user %s: %s", row[2], row[0], exc)
            self._forget(number + 1)

    async def prune(self) -> int:
        """Deletes logged events older than the retention (0: keep everything); returns how many."""
        if self._retention <= 0:
            return 0
        cutoff = self._ts_text(self._wall() - self._retention)  # same text as ts: text order is time order
        removed = await self._db.execute("DELETE FROM events WHERE ts < ?", (cutoff,))
        if removed:
            _LOGGER.info("event log: pruned %d events older than %.0f days", removed, self._retention / 86400)
        return removed

    async def _write(self) -> None:
        next_prune = self._clock()
        retry = 0.0  # 0: the last write worked
        while not self._closing:
            if self._clock() >= next_prune:
                next_prune = self._clock() + PRUNE_EVERY_SECONDS
                try:
                    await self.prune()
                except Exception:
                    _LOGGER.exception("event log: pruning failed")
            if retry:
                await asyncio.sleep(retry)  # a failing disk is given time; new rows wait in the bound
            else:
                await self._next_batch()
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception as exc:
                self.write_errors += 1
                retry = min(max(retry * 2, self._retry_min), self._retry_max)
                _LOGGER.error("event log: writing %d rows failed (%s); retrying in %.1f s", self.waiting,
                              exc, retry)
            else:
                if retry:
                    _LOGGER.info("event log: writing works again")
                retry = 0.0
            if self._dropped_unreported:
                self._report_drops()

    async def _next_batch(self) -> None:
        """Waits for a full batch or the interval. asyncio.timeout, not wait_for: on Python 3.11 wait_for returns
        normally when the wait ends in the same loop turn as a cancel (a full batch arriving as the server shuts
        down), which swallowed close()'s cancel and kept the writer, and shutdown, going for ever."""
        try:
            async with asyncio.timeout(FLUSH_SECONDS):
                await self._wakeup.wait()
        except TimeoutError:
            pass

    def health(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "dropped": self.dropped}
