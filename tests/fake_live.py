"""A LiveSource the test steers by hand: each watch() call becomes a Watch the test connects, feeds and ends."""

from __future__ import annotations

import asyncio
from typing import Callable

from ttboost.pipeline.events import LiveEvent


class Watch:
    def __init__(self, unique_id: str, on_event: Callable[[LiveEvent], None], on_connected: Callable[[], None]):
        self.unique_id = unique_id
        self._on_event = on_event
        self._on_connected = on_connected
        self._outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def connect(self) -> None:
        self._on_connected()

    def emit(self, *events: LiveEvent) -> None:
        for event in events:
            self._on_event(event)

    def end(self) -> None:
        self._outcome.set_result(None)

    def fail(self, exc: BaseException) -> None:
        self._outcome.set_exception(exc)


class ScriptedSource:
    def __init__(self) -> None:
        self._watches: asyncio.Queue[Watch] = asyncio.Queue()
        self.started: list[str] = []

    async def watch(self, unique_id: str, on_event: Callable[[LiveEvent], None],
                    on_connected: Callable[[], None]) -> None:
        w = Watch(unique_id, on_event, on_connected)
        self.started.append(unique_id)
        await self._watches.put(w)
        try:
            await w._outcome
        except asyncio.CancelledError:
            w.cancelled = True
            raise

    async def next_watch(self, timeout: float = 5.0) -> Watch:
        return await asyncio.wait_for(self._watches.get(), timeout)
