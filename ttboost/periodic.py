"""One owned background task that runs a step every interval, surviving the step's errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

_LOGGER = logging.getLogger(__name__)


class Periodic:
    """`step()` every `interval` seconds from start() to close(); close() cancels and awaits the task.

    A step that raises is logged and the next round runs anyway: these loops guard promises (memory released,
    revoked sockets closed) that one database hiccup or bug must not end for the rest of the process's life.
    """

    def __init__(self, name: str, interval: float, step: Callable[[], Awaitable[object] | object]) -> None:
        self.name = name
        self.interval = interval
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                result = self._step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                _LOGGER.exception("%s: a round failed; the next one runs in %.1f s", self.name, self.interval)
