"""One LIVE session per user, owned by the server (not by the socket): start, switch, stop, idle reaping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Protocol

from ..config import TikTokConfig
from ..db import Database
from ..pipeline.dispatch import Dispatcher
from .history import StreamRows, close_dangling
from .session import LiveSession, SessionTiming
from .source import LiveSource

_LOGGER = logging.getLogger(__name__)


class _UserLocks:
    """One lock per user, so that one user's start/stop never waits for another's network teardown (seconds).
    A lock exists only while someone holds or waits for it: idle users cost no memory."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}  # user id -> (lock, holders and waiters)

    def __len__(self) -> int:
        return len(self._locks)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, user_id: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(user_id, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._locks[user_id]
            if users > 1:
                self._locks[user_id] = (lock, users - 1)
            else:
                del self._locks[user_id]


class Watches(Protocol):
    """Cluster mode (cluster/homes.py): which watches should run, so that another worker can take one over."""

    def started(self, user_id: int, tiktok_username: str, auto: bool) -> None: ...

    def stopped(self, user_id: int) -> None: ...


class LiveManager:
    def __init__(self, source: LiveSource, dispatcher: Dispatcher, db: Database, config: TikTokConfig, *,
                 license_active: Callable[[int], Awaitable[bool]], backoff_min: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, rows: StreamRows | None = None) -> None:
        self._source = source
        self._rows = rows or StreamRows(db)
        self.watches: Watches | None = None
        # Cluster mode: an app socket on another worker says it is there every third of this (cluster/homes.py)
        self.presence_seconds = 0.0
        self._dispatcher = dispatcher
        self._db = db
        self._license_active = license_active
        self._clock = clock
        self._idle_seconds = config.idle_stop_minutes * 60
        self._timing = SessionTiming(live_check=config.live_check_seconds, backoff_min=backoff_min,
                                     backoff_max=config.reconnect_max_seconds, healthy=config.healthy_seconds,
                                     combo_timeout=config.combo_timeout_seconds)
        self._sessions: dict[int, LiveSession] = {}
        self._auto: set[int] = set()  # users whose watch was started by auto_connect, not by connect_tiktok
        self._apps: dict[int, int] = {}  # user id -> open app sockets
        self._left_at: dict[int, float] = {}  # user id -> when the last app socket closed
        self._elsewhere: dict[int, float] = {}  # user id -> when an app socket on another worker last said so
        self._locks = _UserLocks()  # start/stop/switch of one user's session never interleave
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        self._reaping: dict[tuple[str, int], asyncio.Task[None]] = {}  # (work, user id) -> its task under way

    async def start_reaper(self, *, close_dangling_streams: bool = True) -> None:
        """close_dangling_streams=False in cluster mode: a row open at start may belong to a live worker's
        watch; each user's next home closes what a dead one left open (cluster/homes.py)."""
        if close_dangling_streams:
            await close_dangling(self._db)
        self._reaper = asyncio.create_task(self._reap(), name="live-idle-reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await asyncio.gather(*self._reaping.values(), return_exceptions=True)  # each ends by itself
        self._closed = True  # a start still waiting for its user's lock finds this and gives up
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.stop() for s in sessions), return_exceptions=True)

    def active_count(self) -> int:
        return sum(1 for s in self._sessions.values() if s.running)

    def states(self) -> list[str]:
        """The state of every session (running or not), for /metrics."""
        return [s.state for s in self._sessions.values()]

    def session(self, user_id: int) -> LiveSession | None:
        return self._sessions.get(user_id)

    def cached_users(self) -> set[int]:
        return set(self._sessions) | set(self._auto) | set(self._apps) | set(self._left_at) | set(self._elsewhere)

    def busy(self, user_id: int) -> bool:
        """Whether the user has an app socket, a running watch, or a start/stop under way."""
        session = self._sessions.get(user_id)
        return user_id in self._apps or user_id in self._locks or (session is not None and session.running) \
            or self.app_elsewhere(user_id)

    def forget(self, user_id: int) -> None:
        """Drops what is kept of a user who is not busy(): a watch that ended in error (its combo and
        duplicate memory included). The next start makes a new one, as it would anyway."""
        if not self.busy(user_id):
            self._sessions.pop(user_id, None)
            self._auto.discard(user_id)
            self._left_at.pop(user_id, None)
            self._elsewhere.pop(user_id, None)

    def auto_started(self, user_id: int) -> bool:
        """Whether the user's running watch was started by auto_connect (an app connecting), not asked for."""
        return user_id in self._auto and self.session(user_id) is not None

    async def start(self, user_id: int, tiktok_username: str, *, auto: bool = False,
                    taken_over: bool = False) -> LiveSession:
        """Idempotent: the same user watching the same name keeps its session; another name switches.

        auto: started by auto_connect rather than by the streamer's connect_tiktok; an explicit start of a
        running automatic watch makes it explicit (switching auto_connect off then leaves it running).
        taken_over: the watch ran on another worker until now (cluster mode): the app sees `reconnecting`."""
        await self._dispatcher.prepare(user_id)
        async with self._locks.hold(user_id):
            current = self._sessions.get(user_id)
            if current is not None and current.tiktok_username == tiktok_username and current.running:
                if not auto:
                    self._auto.discard(user_id)
                return current
            if auto:
                self._auto.add(user_id)
            else:
                self._auto.discard(user_id)
            if current is not None:
                await current.stop(report_idle=False)  # the new session's `connecting` says what happens
            if self._closed:  # checked after the last await: close() has already stopped everything it saw
                raise RuntimeError("the LIVE manager is closed (server shutting down)")
            session = LiveSession(user_id, tiktok_username, source=self._source, dispatcher=self._dispatcher,
                                  rows=self._rows, timing=self._timing, clock=self._clock, taken_over=taken_over)
            self._sessions[user_id] = session
            session.start()
            if self.watches is not None:
                self.watches.started(user_id, tiktok_username, user_id in self._auto)
            return session

    async def stop(self, user_id: int) -> None:
        async with self._locks.hold(user_id):
            self._auto.discard(user_id)
            session = self._sessions.pop(user_id, None)
            if session is not None:
                if self.watches is not None:
                    self.watches.stopped(user_id)
                await session.stop()

    async def hand_over(self, user_id: int) -> None:
        """Stops the user's watch here without a word to the app: another worker goes on with it (cluster mode)."""
        async with self._locks.hold(user_id):
            self._auto.discard(user_id)
            session = self._sessions.pop(user_id, None)
            if session is not None:
                await session.stop(report_idle=False)

    async def _stop_unlicensed(self) -> None:
        for user_id in [uid for uid, s in self._sessions.items() if s.running]:
            self._spawn(user_id, self._stop_if_unlicensed, "live-license-check")

    async def _stop_if_unlicensed(self, user_id: int) -> None:
        try:
            if await self._license_active(user_id):
                return
            _LOGGER.info("live user=%s: license no longer active, stopping the watch", user_id)
            await self.stop(user_id)
            self._dispatcher.error(user_id, "license_expired")
        except Exception:
            _LOGGER.exception("license check of user %s failed", user_id)

    def app_connected(self, user_id: int) -> None:
        self._apps[user_id] = self._apps.get(user_id, 0) + 1
        self._left_at.pop(user_id, None)

    def app_present(self, user_id: int) -> None:
        """An app socket of the user is open on another worker (cluster mode): the watch is not idle."""
        now = self._clock()
        self._elsewhere[user_id] = now
        if user_id not in self._apps:
            self._left_at[user_id] = now  # idle_stop_minutes count from the last word of it

    def app_elsewhere(self, user_id: int) -> bool:
        seen = self._elsewhere.get(user_id)
        return seen is not None and self._clock() - seen < self.presence_seconds

    def app_disconnected(self, user_id: int) -> None:
        left = self._apps.get(user_id, 0) - 1
        if left > 0:
            self._apps[user_id] = left
        else:
            self._apps.pop(user_id, None)
            self._left_at[user_id] = self._clock()

    async def _reap(self) -> None:
        """Stops sessions nobody has watched for idle_stop_minutes (a forgotten stream costs sign calls), and
        sessions whose license expired or was revoked since they started."""
        interval = max(0.05, min(30.0, self._idle_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            await self._stop_unlicensed()
            now = self._clock()
            idle: list[int] = []
            for user_id, left in list(self._left_at.items()):
                if now - left >= self._idle_seconds and user_id in self._sessions:
                    _LOGGER.info("live user=%s: no app for %.0f s, stopping the watch", user_id, now - left)
                    self._left_at.pop(user_id, None)
                    idle.append(user_id)
                elif user_id not in self._sessions:
                    self._left_at.pop(user_id, None)
            for user_id in idle:  # in tasks: one user's slow teardown (seconds) holds up no other stop, nor the reaper
                self._spawn(user_id, self._stop_idle, "live-idle-stop")

    async def _stop_idle(self, user_id: int) -> None:
        try:
            await self.stop(user_id)
        except Exception:
            _LOGGER.exception("idle stop of user %s failed", user_id)

    def _spawn(self, user_id: int, work: Callable[[int], Coroutine[Any, Any, None]], name: str) -> None:
        """Runs the reaper's work for one user in its own task; the same work is not started twice at once."""
        key = (name, user_id)
        if key not in self._reaping:
            task = self._reaping[key] = asyncio.create_task(work(user_id), name=f"{name}-{user_id}")
            task.add_done_callback(lambda _t: self._reaping.pop(key, None))
