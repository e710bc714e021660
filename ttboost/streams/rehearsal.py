"""Rehearsal: a recorded stream replayed through the streamer's current triggers and settings, to the app.

Nothing is counted: the replay runs its own action engine (fresh per-stream state and cooldowns, no
executed_count), and its frames go out with log=False (no event-log rows, no stream figures).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Final, Protocol

from ..db import Database
from ..errors import ApiError
from ..pipeline.bus import EventBus
from ..pipeline.dispatch import ActionHook
from ..pipeline.events import LiveEvent
from ..timeutil import parse_iso
from .store import all_stream_events, event_span

_LOGGER = logging.getLogger(__name__)

SPEED_MIN: Final = 1  # × real time (spec §8)
SPEED_MAX: Final = 20
FRAME_TYPE: Final = "rehearsal"  # the marker frames: state started | finished | stopped
DERIVED: Final = "viewer_first_message"  # recorded after a chat by that night's rules, not by TikTok
# Frames sent in a row before the replay lets other tasks run: events TikTok batched share one timestamp and
# go out at once, and a burst above limits.ws_send_queue sent without the socket's writer getting a turn would
# close a client that reads fine as "too slow" (the same reason as live/tiktok.py's YIELD_EVERY).
YIELD_EVERY: Final = 32

EngineFactory = Callable[[Callable[[], float]], ActionHook]  # (stream clock) → a fresh, non-counting engine


class Pacer(Protocol):
    """Real time for the server; tests pass one that records the waits instead of sleeping."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealPacer:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class NotCounted:
    """The trigger store as a rehearsal sees it: the same rules, but a firing is not counted."""

    def __init__(self, triggers: Any) -> None:
        self._triggers = triggers

    async def prepare(self, user_id: int) -> None:
        await self._triggers.prepare(user_id)

    def rules(self, user_id: int, event_type: str) -> Any:
        return self._triggers.rules(user_id, event_type)

    def count_fired(self, trigger_id: int) -> None:
        """A rehearsal's firings are not the stream's: executed_count stays as it is."""


@dataclass(slots=True)
class _Run:
    stream_id: int
    speed: int
    task: asyncio.Task[None] | None = None


def rehearsal_running() -> ApiError:
    return ApiError(409, "a rehearsal is already running", "rehearsal_running")


def no_events() -> ApiError:
    return ApiError(409, "no recorded events to rehearse", "no_events")


def event_of(frame: dict[str, Any]) -> LiveEvent:
    """A recorded frame back as an event, without the audio the rules of that night gave it."""
    return LiveEvent(frame["type"], user=frame.get("user", ""), username=frame.get("username", ""),
                     message=frame.get("message", ""), gift_id=frame.get("gift_id", 0),
                     gift_name=frame.get("gift_name", ""), count=frame.get("count", 0),
                     diamond_count=frame.get("diamond_count", 0), total=frame.get("total", 0),
                     current=frame.get("current", 0), sub_month=frame.get("sub_month", 0))


def _epoch(ts: str) -> float:
    return parse_iso(ts).timestamp()


class Rehearsals:
    """At most one rehearsal per user; every task is owned here and cancelled on stop and on close."""

    def __init__(self, db: Database, bus: EventBus, engine_factory: EngineFactory,
                 pacer: Pacer | None = None) -> None:
        self._db = db
        self._bus = bus
        self._engine_factory = engine_factory
        self._pacer = pacer or RealPacer()
        self._runs: dict[int, _Run] = {}

    def running(self, user_id: int) -> bool:
        return user_id in self._runs

    async def start(self, user_id: int, stream_id: int, speed: int) -> dict[str, Any]:
        """Starts replaying; 409 when one runs already or nothing of the stream is retained."""
        if user_id in self._runs:
            raise rehearsal_running()
        info = await event_span(self._db, user_id, stream_id)
        if info is None:
            raise no_events()
        await self._bus.channel(user_id)
        if user_id in self._runs:  # another request started one while this one read the log
            raise rehearsal_running()
        run = self._runs[user_id] = _Run(stream_id, speed)
        run.task = asyncio.create_task(self._run(user_id, run, info["last_seq"]),
                                       name=f"rehearsal-{user_id}")
        duration = (_epoch(info["last"]) - _epoch(info["first"])) / speed
        return {"stream_id": stream_id, "speed": speed, "events": info["n"], "duration_s": round(duration, 1)}

    async def stop(self, user_id: int) -> bool:
        """Ends the user's rehearsal; False when none was running."""
        run = self._runs.get(user_id)
        if run is None or run.task is None:
            return False
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
        if self._runs.get(user_id) is run:  # cancelled before it ever ran: its own clean-up never ran either
            del self._runs[user_id]
        return True

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(user_id) for user_id in list(self._runs)), return_exceptions=True)

    def _mark(self, user_id: int, state: str, run: _Run) -> None:
        # Not logged either: seq numbers are reserved ahead of use (pipeline/seqs.py), so unlogged frames
        # never see their numbers handed out again after a restart.
        self._bus.publish(user_id, FRAME_TYPE, {"state": state, "stream_id": run.stream_id, "speed": run.speed,
                                                "rehearsal": True}, log=False)

    async def _run(self, user_id: int, run: _Run, last_seq: int) -> None:
        stream_time = 0.0  # the recorded time of the event being replayed: cooldowns run on it
        engine = self._engine_factory(lambda: stream_time)
        state = "stopped"
        try:
            await engine.prepare(user_id)
            self._mark(user_id, "started", run)
            started, first, in_a_row = self._pacer.now(), None, 0
            async for page in all_stream_events(self._db, user_id, run.stream_id, up_to_seq=last_seq):
                for frame in page:
                    stream_time = _epoch(frame["ts"])
                    first = stream_time if first is None else first
                    delay = started + (stream_time - first) / run.speed - self._pacer.now()
                    if delay > 0:
                        await self._pacer.sleep(delay)
                        in_a_row = 0
                    elif in_a_row >= YIELD_EVERY:
                        await asyncio.sleep(0)
                        in_a_row = 0
                    self._send(user_id, engine, frame)
                    in_a_row += 1
            state = "finished"
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("rehearsal of stream %s for user %s failed", run.stream_id, user_id)
        finally:
            if self._runs.get(user_id) is run:
                del self._runs[user_id]
            self._mark(user_id, state, run)

    def _send(self, user_id: int, engine: ActionHook, frame: dict[str, Any]) -> None:
        event = event_of(frame)
        if event.type == DERIVED:
            return  # today's rules decide it anew from the chat before it
        follow_up = engine.apply(user_id, event) if event.type != "viewer" else None
        for out in (event, follow_up) if follow_up is not None else (event,):
            payload = out.to_payload()
            payload["rehearsal"] = True
            self._bus.publish(user_id, out.type, payload, log=False)
