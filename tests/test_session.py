"""The LIVE session supervisor with a hand-steered source: state frames, back-off, its reset, stopping."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest

from tests.fake_live import ScriptedSource
from ttboost.db import Database
from ttboost.live.errors import ConnectionDropped, UserOffline
from ttboost.live.session import LiveSession, SessionTiming
from ttboost.pipeline.bus import EventBus
from ttboost.pipeline.dispatch import Dispatcher
from tests.helpers import Clock

# retry_in is reported to a tenth of a second, so the steps are tenths.
TIMING = SessionTiming(live_check=0.1, backoff_min=0.1, backoff_max=0.3, healthy=60.0, combo_timeout=1.0)


class Frames:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def deliver(self, frame: str) -> None:
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
    session = LiveSession(1, "streamer", source=source, dispatcher=dispatcher, db=db, timing=TIMING,
                          **({"clock": clock} if clock else {}))
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
