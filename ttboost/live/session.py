"""One supervisor task per user: connect, wait for LIVE, back off on drops, report every state change."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Final

from ..fileio import run_to_end
from ..pipeline.bus import StreamRef
from ..pipeline.combos import ComboTracker
from ..pipeline.dispatch import Dispatcher
from ..pipeline.events import LiveEvent
from ..timeutil import iso, utcnow
from .errors import Blocked, LiveError, SignRateLimited, UserNotFound, UserOffline
from .history import StreamRows
from .source import LiveSource

_LOGGER = logging.getLogger(__name__)

RATE_LIMIT_FALLBACK_SECONDS: Final = 60.0  # when a 429 names no retry time


@dataclass(frozen=True, slots=True)
class SessionTiming:
    live_check: float  # seconds between checks while the streamer is offline
    backoff_min: float  # first reconnect delay (seconds), doubled per failure
    backoff_max: float
    healthy: float  # connected this long resets the back-off
    combo_timeout: float  # a combo whose end never comes is closed after this silence


class LiveSession:
    """Owns the watch of one TikTok user for one app user; state changes go out as status frames."""

    def __init__(self, user_id: int, tiktok_username: str, *, source: LiveSource, dispatcher: Dispatcher,
                 rows: StreamRows, timing: SessionTiming, clock: Callable[[], float] = time.monotonic,
                 taken_over: bool = False) -> None:
        self.user_id = user_id
        self.tiktok_username = tiktok_username
        self._source = source
        self._dispatcher = dispatcher
        self._rows = rows
        self._timing = timing
        self._clock = clock
        self._combos = ComboTracker(timing.combo_timeout)
        self._combo_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._row_task: asyncio.Task[int] | None = None
        self._stream: StreamRef | None = None  # the LIVE being recorded; kept open across a drop
        self._lost_at: str | None = None  # when its connection dropped (ISO), until it reconnects
        self._connected_at: float | None = None
        self._new_stream = True  # the next connect starts a new LIVE (resets per-stream trigger state)
        self.state = "idle"
        self._retry_in: float | None = None
        self._viewers: tuple[int, int] | None = None  # the last viewer counts sent
        # The first state the app sees: the watch ran on another worker until now (cluster mode).
        self._first_state = "reconnecting" if taken_over else "connecting"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._supervise(), name=f"live-session-{self.user_id}")

    async def stop(self, *, report_idle: bool = True) -> None:
        """Cancels the watch (the adapter disconnects cleanly), closes the stream row, reports idle unless a new
        session takes over at once (a switch, a retry after an error: the app sees its `connecting` next)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # its way out delivers combos, ends the row
            self._task = None
        if report_idle:
            self._set_state("idle")

    def _set_state(self, state: str, retry_in: float | None = None, note: str | None = None,
                   **values: object) -> None:
        """Publishes a status frame when something changed; a repeated state (re-checks while waiting) is silent.
        note: a messages.py code whose text replaces the state's own (see Dispatcher.status)."""
        if state == self.state and retry_in == self._retry_in:
            return
        _LOGGER.info("live user=%s tiktok=@%s state %s -> %s%s", self.user_id, self.tiktok_username,
                     self.state, state, f" retry_in={retry_in:.1f}s" if retry_in is not None else "")
        self.state, self._retry_in = state, retry_in
        self._dispatcher.status(self.user_id, state, tiktok_username=self.tiktok_username, retry_in=retry_in,
                                note=note, **values)

    async def _supervise(self) -> None:
        reason = "stopped"
        try:
            await self._watch_loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not leave the app believing it is connected
            reason = "crashed"
            _LOGGER.exception("live session of user %s crashed", self.user_id)
        finally:
            # Every way out (a permanent error, a stop, a bug) delivers the open combos, disarms the combo timer
            # and closes the stream row; a second cancel does not cut that short.
            await run_to_end(self._after_watch(reason))
        if reason == "crashed":
            self._set_state("error")

    async def _watch_loop(self) -> None:
        """Returns only on a permanent error; everything else is retried."""
        backoff = self._timing.backoff_min
        while True:
            if self.state != "waiting_for_live":  # a re-check while waiting is not news for the app
                self._set_state(self._first_state)
                self._first_state = "connecting"
            self._connected_at = None
            try:
                await self._source.watch(self.tiktok_username, self._on_event, self._on_connected)
            except UserOffline as exc:
                await self._after_watch("offline")  # a check that found no LIVE may still have connected
                self._new_stream = True
                backoff = self._timing.backoff_min  # the next LIVE starts with a fresh back-off
                if self.state != "waiting_for_live":  # once per wait, not per re-check
                    self._dispatcher.error(self.user_id, exc.code, user=self.tiktok_username)
                self._set_state("waiting_for_live", self._timing.live_check)
                await asyncio.sleep(self._timing.live_check)
                continue
            except (UserNotFound, Blocked) as exc:  # permanent: report once, never hammer TikTok
                await self._after_watch(type(exc).__name__)
                self._dispatcher.error(self.user_id, exc.code, user=self.tiktok_username)
                self._set_state("error")
                return
            except SignRateLimited as exc:
                await self._after_watch("rate_limited", keep_stream=True)
                wait = exc.retry_after if exc.retry_after > 0 else RATE_LIMIT_FALLBACK_SECONDS
                self._dispatcher.error(self.user_id, exc.code, retry=round(wait))
                self._set_state("reconnecting", wait)
                await asyncio.sleep(wait)
                continue
            except LiveError as exc:  # ConnectionDropped and anything unforeseen: transient
                healthy = self._after_healthy()
                reached = self._connected_at is not None
                await self._after_watch("dropped", keep_stream=True)
                if healthy:
                    backoff = self._timing.backoff_min
                if reached:
                    _LOGGER.warning("live user=%s tiktok=@%s dropped: %s", self.user_id, self.tiktok_username, exc)
                    self._set_state("reconnecting", backoff)
                else:  # offline, DNS, refused, sign server down: "connection lost" would be untrue
                    reason = str(exc).removeprefix(f"@{self.tiktok_username}: ") or type(exc).__name__
                    _LOGGER.warning("live user=%s tiktok=@%s cannot reach TikTok: %s", self.user_id,
                                    self.tiktok_username, reason)
                    self._set_state("reconnecting", backoff, note="tiktok_unreachable", reason=reason)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._timing.backoff_max)
                continue
            # watch() returned: the LIVE ended cleanly.
            await self._after_watch("ended")
            backoff = self._timing.backoff_min
            self._new_stream = True
            self._set_state("live_ended")
            self._set_state("waiting_for_live", self._timing.live_check)
            await asyncio.sleep(self._timing.live_check)

    def _after_healthy(self) -> bool:
        return self._connected_at is not None and self._clock() - self._connected_at >= self._timing.healthy

    async def _after_watch(self, reason: str, *, keep_stream: bool = False) -> None:
        """keep_stream: a transient loss in the middle of a LIVE; the reconnect continues the same stream (one
        history entry per LIVE, as the per-stream trigger state), which otherwise ended when it dropped."""
        self._close_combos()
        if keep_stream and self._row_task is not None:
            self._lost_at = self._lost_at or iso(utcnow())
        else:
            await self._end_row(reason)

    # --- called synchronously by the adapter, in TikTok's order ---

    def _on_connected(self) -> None:
        self._connected_at = self._clock()
        if self._new_stream:
            self._new_stream = False
            self._dispatcher.stream_started(self.user_id)
        if self._row_task is None or self._stream is None:  # else: back after a drop, the same stream goes on
            self._stream = StreamRef()
            self._row_task = asyncio.create_task(self._begin_row(self._stream), name=f"stream-row-{self.user_id}")
            self._row_task.add_done_callback(functools.partial(self._row_written, self._stream))
        self._lost_at = None
        channel = self._dispatcher.bus.get(self.user_id)
        if channel is not None:
            channel.stream = self._stream  # events from now on belong to this stream; the row id follows
        self._set_state("connected")

    async def _begin_row(self, stream: StreamRef) -> int:
        stream.id = await self._rows.begin(self.user_id, self.tiktok_username)
        return stream.id

    def _row_written(self, stream: StreamRef, task: asyncio.Task[int]) -> None:
        """However the INSERT ended (an error, or a cancel even before it ran), the stream stops pending: else
        the event log would hold its events until shutdown and the recorder grow its figures for ever."""
        if stream.id is not None:
            return
        stream.failed = True
        _LOGGER.error("could not record the stream of user %s; its events are logged without it", self.user_id,
                      exc_info=None if task.cancelled() else task.exception())
        channel = self._dispatcher.bus.get(self.user_id)
        if channel is not None and channel.stream is stream:
            channel.stream = None  # the frames that follow go without a stream too, and are not counted

    def _on_event(self, event: LiveEvent) -> None:
        if not event.received_ms:  # a source that did not stamp it: now is the closest we know
            event.received_ms = int(time.time() * 1000)
        if event.type == "viewer":  # TikTok repeats the count every few seconds; the app wants changes only
            counts = (event.current, event.total)
            if counts == self._viewers:
                return
            self._viewers = counts
        for ready in self._combos.feed(event, self._clock()):
            self._dispatcher.dispatch(self.user_id, ready)
        self._arm_combo_timer()

    def _arm_combo_timer(self) -> None:
        deadline = self._combos.next_deadline()
        if self._combo_timer is not None:
            self._combo_timer.cancel()
            self._combo_timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._combo_timer = asyncio.get_running_loop().call_later(delay, self._expire_combos)

    def _expire_combos(self) -> None:
        self._combo_timer = None
        for ready in self._combos.expire(self._clock()):
            self._dispatcher.dispatch(self.user_id, ready)
        self._arm_combo_timer()

    def _close_combos(self) -> None:
        """A combo still open when the connection ends is delivered with the count it reached."""
        if self._combo_timer is not None:
            self._combo_timer.cancel()
            self._combo_timer = None
        for ready in self._combos.flush():
            self._dispatcher.dispatch(self.user_id, ready)

    async def _end_row(self, reason: str) -> None:
        task, stream, self._row_task, self._stream = self._row_task, self._stream, None, None
        lost_at, self._lost_at = self._lost_at, None
        if task is not None and stream is not None:
            # A stream that never came back after a drop ended then, whatever stops the watch later.
            reason, ended_at = ("dropped", lost_at) if lost_at else (reason, None)
            # taken out of _row_task: must not be cut short
            await run_to_end(self._close_row(task, stream, reason, ended_at))

    async def _close_row(self, task: asyncio.Task[int], stream: StreamRef, reason: str,
                         ended_at: str | None) -> None:
        await asyncio.wait([task])  # its failure was reported by _row_written
        if stream.id is None:
            return
        channel = self._dispatcher.bus.get(self.user_id)
        if channel is not None and channel.stream is stream:
            channel.stream = None
        await self._rows.end(stream.id, reason, ended_at)
