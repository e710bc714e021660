"""The LIVE manager: one user's slow teardown never holds up another user's start or stop."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import pytest

from ttboost.config import TikTokConfig
from ttboost.db import Database
from ttboost.live.manager import LiveManager
from ttboost.pipeline.bus import EventBus
from ttboost.pipeline.dispatch import Dispatcher
from ttboost.pipeline.events import LiveEvent


class SlowTeardownSource:
    """Connects at once; a cancelled watch takes as long as the test wants to close (a websockets close
    handshake and two HTTP clients can take seconds), instead of the test sleeping."""

    def __init__(self) -> None:
        self.tearing_down: set[str] = set()
        self.torn_down: set[str] = set()
        self.release = asyncio.Event()

    async def watch(self, unique_id: str, on_event: Callable[[LiveEvent], None],
                    on_connected: Callable[[], None]) -> None:
        on_connected()
        try:
            await asyncio.Event().wait()  # a LIVE that never ends by itself
        except asyncio.CancelledError:
            self.tearing_down.add(unique_id)
            await self.release.wait()
            self.torn_down.add(unique_id)
            raise


@pytest.fixture
def tiktok_config() -> TikTokConfig:
    return TikTokConfig()


@pytest.fixture
async def manager(tiktok_config) -> AsyncIterator[tuple[LiveManager, SlowTeardownSource]]:
    db = Database(":memory:")
    await db.open()
    for name in ("one", "two"):
        await db.execute("INSERT INTO users (username, created_at) VALUES (?, 'x')", (name,))
    bus = EventBus(db, replay_events=100, replay_seconds=60)
    source = SlowTeardownSource()

    async def licensed(_user_id: int) -> bool:
        return True

    live = LiveManager(source, Dispatcher(bus, None), db, tiktok_config, license_active=licensed)
    await live.start_reaper()
    yield live, source
    source.release.set()
    await live.close()
    await bus.close()
    await db.close()


async def begin_stop(live: LiveManager, source: SlowTeardownSource, user_id: int, name: str) -> asyncio.Task:
    """Stops the user's watch in the background and returns once its teardown is under way."""
    stopping = asyncio.create_task(live.stop(user_id))
    while name not in source.tearing_down:
        await asyncio.sleep(0)
    return stopping


async def settle(task: asyncio.Task) -> bool:
    """Whether the task finished; the generous bound only keeps a broken build from hanging the suite."""
    await asyncio.wait({task}, timeout=5)
    return task.done()


async def test_a_users_start_does_not_wait_for_another_users_teardown(manager) -> None:
    live, source = manager
    await live.start(1, "one")
    stopping = await begin_stop(live, source, 1, "one")
    starting = asyncio.create_task(live.start(2, "two"))
    assert await settle(starting)  # user 2 is watching while user 1's connection is still closing
    assert live.session(2).state == "connected"  # type: ignore[union-attr]
    assert not stopping.done() and "one" not in source.torn_down
    stopping_two = await begin_stop(live, source, 2, "two")  # another user's stop does not queue behind it
    source.release.set()
    await asyncio.gather(stopping, stopping_two)
    assert source.torn_down == {"one", "two"} and live.active_count() == 0


async def test_the_same_users_start_waits_for_its_own_stop(manager) -> None:
    live, source = manager
    await live.start(1, "one")
    stopping = await begin_stop(live, source, 1, "one")
    restarting = asyncio.create_task(live.start(1, "one"))
    await asyncio.sleep(0.05)
    assert not restarting.done()  # never two watches of one user at once
    source.release.set()
    session = await restarting
    await stopping
    assert session.running and live.session(1) is session


@pytest.mark.parametrize("tiktok_config", [TikTokConfig(idle_stop_minutes=0.002)])  # reaps every 0.05 s
async def test_idle_stops_of_two_users_tear_down_side_by_side(manager) -> None:
    live, source = manager
    for user_id, name in ((1, "one"), (2, "two")):
        await live.start(user_id, name)
        live.app_connected(user_id)
        live.app_disconnected(user_id)  # no app any more: both watches are stopped after the idle time
    async with asyncio.timeout(5):
        while source.tearing_down != {"one", "two"}:  # the second stop did not queue behind the first
            await asyncio.sleep(0.01)
    assert source.torn_down == set()
    source.release.set()
    async with asyncio.timeout(5):
        while source.torn_down != {"one", "two"}:
            await asyncio.sleep(0.01)
    assert live.active_count() == 0
