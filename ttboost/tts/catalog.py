"""The voices the app may pick: the engine's built-in list, refreshed from the live list when reachable."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from .engine import TTSEngine, Voice
from .voices import builtin_edge_voices

_LOGGER = logging.getLogger(__name__)

REFRESH_SECONDS: Final = 24 * 3600  # the live edge list changes rarely; once a day is plenty


class VoiceCatalog:
    """GET /v2/voices and settings validation read the same list; refreshing never blocks a request."""

    def __init__(self, engine: TTSEngine, *, refresh: bool) -> None:
        self._engine = engine
        self._refresh_enabled = refresh
        self._voices: list[Voice] = list(engine.voices())
        self._ids = frozenset(v.id for v in self._voices) | frozenset(v.id for v in builtin_edge_voices())
        self._task: asyncio.Task[None] | None = None

    def voices(self) -> list[Voice]:
        return self._voices

    def known(self, voice_id: str) -> bool:
        """Listed: built in, or in the live list once it was fetched. A made-up id would be accepted and then
        fail every phrase at synthesis, silently for the streamer."""
        return voice_id in self._ids

    async def start(self) -> None:
        if self._refresh_enabled:
            self._task = asyncio.create_task(self._refresh_loop(), name="voice-list-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _refresh_loop(self) -> None:
        while True:
            fresh = await self._engine.refresh_voices()  # never raises; None when unreachable
            if fresh:
                self._voices = sorted(fresh, key=lambda v: (v.locale, v.name))
                self._ids = self._ids | frozenset(v.id for v in fresh)
                _LOGGER.info("voice list refreshed: %d voices", len(fresh))
            await asyncio.sleep(REFRESH_SECONDS)
