"""The LIVE session supervisor with a hand-steered source: state frames, back-off, its reset, stopping."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import pytest

from tests.fake_live import ScriptedSource
from ttboost.db import Database
from ttboost.live.errors import ConnectionDropped, UserNotFound, UserOffline
from ttboost.live.history import StreamRows
from ttboost.live.session import LiveSession, SessionTiming
from ttboost.pipeline.bus import EventBus, FrameTiming
from ttboost.pipeline.dispatch import Dispatcher
from ttboost.pipeline.events import LiveEvent
from tests.helpers import Clock

# retry_in is reported to a tenth of a second, so the steps are tenths.
TIMING = SessionTiming(live_check=0.1, backoff_min=0.1, backoff_max=0.3, healthy=60.0, combo_timeout=1.0)


class Frames:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def deliver(self, frame: str, timing: FrameTiming | None = None) -> None:
        self.items.append(json.loads(frame))

    def states(self) -> list[tuple[str, Any]]:
        return [(f["state"], f.get("retry_in")) for f in self.items if f["type"] == "status"]


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Dispatcher, Database]]:
    db = Database(":memory:")
    await db.open()
    await db.execute("INSERT INTO users (username, created_at) VALUES ('u', 'x')")
    bus = EventBus(db, replay_events=100, replay_seconds=60)
    dispatcher = Dispatcher(bus, None)
    await dispatcher.prepare(1)
    yield dispatcher, db
    await bus.close()
    await db.close()


async def session_with(parts, source, clock=None) -> tuple[LiveSession, Frames]:
    dispatcher, db = parts
    frames = Frames()
    dispatcher.bus.attach(1, frames)
    session = LiveSession(1, "streamer", source=source, dispatcher=dispatcher, rows=StreamRows(db),
                          timing=TIMING, **({"clock": clock} if clock else {}))
    session.start()
    return session, frames


async def test_rechecks_while_offline_publish_nothing_new(parts) -> None:
    source = ScriptedSource()
    session, frames = await session_with(parts, source)
    for _ in range(3):
        (await source.next_watch()).fail(UserOffline("offline"))
    (await source.next_watch()).connect()
    await session.stop()
    assert frames.states() == [("connecting", None), ("waiting_for_live", 0.1), ("connected", None),
                               ("idle", None)]
    errors = [f["code"] for f in frames.items if f["type"] == "error"]
    assert errors == ["tiktok_offline"]  # once per wait, not once per re-check


async def test_drops_back_off_doubling_up_to_the_cap(parts) -> None:
    source = ScriptedSource()
    session, frames = await session_with(parts, source)
    for _ in range(4):
        (await source.next_watch()).fail(ConnectionDropped("1011"))
    watch = await source.next_watch()
    await session.stop()
    assert watch.cancelled
    retries = [retry for state, retry in frames.states() if state == "reconnecting"]
    assert retries == [0.1, 0.2, 0.3, 0.3]


async def test_a_healthy_connection_resets_the_back_off(parts) -> None:
    source, clock = ScriptedSource(), Clock()
    session, frames = await session_with(parts, source, clock)
    (await source.next_watch()).fail(ConnectionDropped("a"))
    (await source.next_watch()).fail(ConnectionDropped("b"))  
    watch = await source.next_watch()
    watch.connect()
    clock.now += TIMING.healthy  # a healthy minute
    watch.fail(ConnectionDropped("c"))
    await source.next_watch()
    await session.stop()
    retries = [retry for state, retry in frames.states() if state == "reconnecting"]
    assert retries == [0.1, 0.2, 0.1]


def reconnect_delays(frames: Frames) -> list[Any]:
    return [retry for state, retry in frames.states() if state == "reconnecting"]


async def test_the_back_off_starts_over_after_waiting_for_live(parts) -> None:
    source = ScriptedSource()
    session, frames = await session_with(parts, source)
    (await source.next_watch()).fail(ConnectionDropped("a"))
    (await source.next_watch()).fail(ConnectionDropped("b"))
    (await source.next_watch()).fail(UserOffline("offline"))
    watch = await source.next_watch()  # the streamer went LIVE again
    watch.connect()
    watch.fail(ConnectionDropped("c"))  # the first drop of the new LIVE: the shortest wait, not the grown one
    await source.next_watch()
    await session.stop()
    assert reconnect_delays(frames) == [0.1, 0.2, 0.1]


async def test_the_back_off_starts_over_after_live_ended(parts) -> None:
    source = ScriptedSource()
    session, frames = await session_with(parts, source)
    (await source.next_watch()).fail(ConnectionDropped("a"))
    (await source.next_watch()).fail(ConnectionDropped("b"))
    watch = await source.next_watch()
    watch.connect()
    watch.end()
    watch = await source.next_watch()
    watch.connect()
    watch.fail(ConnectionDropped("c"))
    await source.next_watch()
    await session.stop()
    assert ("live_ended", None) in frames.states()
    assert reconnect_delays(frames) == [0.1, 0.2, 0.1]


def rose(count: int) -> LiveEvent:
    return LiveEvent("gift", username="fan", user_id="7", gift_id=5655, gift_name="Rose", count=count,
                     diamond_count=1, streakable=True, msg_id=f"rose-{count}")


async def open_combo(parts, source) -> tuple[LiveSession, Frames, Any]:
    """A connected session with a Rose combo at 3 that has not ended, and its stream row begun."""
    session, frames = await session_with(parts, source)
    watch = await source.next_watch()
    watch.connect()
    watch.emit(rose(1), rose(2), rose(3))
    await asyncio.sleep(0)  # the stream row's INSERT runs
    assert not [f for f in frames.items if f["type"] == "gift"]  # still open
    return session, frames, watch


async def assert_wound_up(parts, session: LiveSession, frames: Frames, reason: str) -> None:
    _, db = parts
    gifts = [f for f in frames.items if f["type"] == "gift"]
    assert [(g["gift_name"], g["count"]) for g in gifts] == [("Rose", 3)]  # the open combo, delivered once
    assert session._combo_timer is None  # nothing left to fire into a finished session
    [row] = await db.fetchall("SELECT ended_at, end_reason FROM stream_sessions")
    assert row["ended_at"] is not None and row["end_reason"] == reason


async def test_a_crash_of_the_supervisor_delivers_combos_and_closes_the_stream(parts) -> None:
    source = ScriptedSource()
    session, frames, watch = await open_combo(parts, source)
    watch.fail(RuntimeError("a bug in the adapter"))  # not a LiveError: the supervisor's crash path
    while session.running:
        await asyncio.sleep(0.01)
    await assert_wound_up(parts, session, frames, "crashed")
    assert frames.states()[-1] == ("error", None)
    gift_at = next(i for i, f in enumerate(frames.items) if f["type"] == "gift")
    assert frames.items[-1]["type"] == "status" and gift_at < len(frames.items) - 1  # combo before "error"


async def test_a_stop_delivers_combos_and_closes_the_stream(parts) -> None:
    source = ScriptedSource()
    session, frames, watch = await open_combo(parts, source)
    await session.stop()
    assert watch.cancelled
    await assert_wound_up(parts, session, frames, "stopped")


async def test_a_permanent_error_delivers_combos_and_closes_the_stream(parts) -> None:
    source = ScriptedSource()
    session, frames, watch = await open_combo(parts, source)
    watch.fail(UserNotFound("gone"))
    while session.running:
        await asyncio.sleep(0.01)
    await assert_wound_up(parts, session, frames, "UserNotFound")
    assert frames.states()[-1] == ("error", None)


async def test_a_second_cancel_during_the_wind_up_still_closes_the_stream(parts) -> None:
    source = ScriptedSource()
    session, frames, _ = await open_combo(parts, source)
    task = session._task
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)  # the supervisor is now in its wind-up, writing the row
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await assert_wound_up(parts, session, frames, "stopped")


async def test_a_failure_before_any_connection_says_tiktok_cannot_be_reached(parts) -> None:
    source = ScriptedSource()
    session, frames = await session_with(parts, source)
    (await source.next_watch()).fail(ConnectionDropped("@streamer: ConnectError: [Errno -3] name resolution"))
    watch = await source.next_watch()
    watch.connect()
    watch.fail(ConnectionDropped("@streamer: TikTok closed the connection with code 1011"))
    await source.next_watch()
    await session.stop()
    messages = [f["message"] for f in frames.items if f["type"] == "status" and f["state"] == "reconnecting"]
    assert messages == ["Нет связи с TikTok (ConnectError: [Errno -3] name resolution), пробуем снова",
                        "Связь прервалась, переподключаемся"]  # the second one had been connected
