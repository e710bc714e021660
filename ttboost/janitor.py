"""Releases the in-memory state of users with no app socket and no LIVE watch; everything reloads on demand."""

from __future__ import annotations

import logging
from typing import Callable, Final

from .live.manager import LiveManager
from .periodic import Periodic
from .pipeline.actions import ActionEngine
from .pipeline.bus import EventBus
from .settings import SettingsStore
from .sockets import SocketRegistry
from .triggers import TriggerStore

_LOGGER = logging.getLogger(__name__)

SWEEP_MAX_SECONDS: Final = 60.0  # sweeps at least this often; more often when the replay window is shorter


class MemoryJanitor:
    """Every state a user leaves in memory (channel and replay buffer, settings, rules, compiled plans, stream
    counters, a watch that ended in error) is released once the user has had no socket, no watch and no frame
    for the whole replay window: a user who went away costs nothing, and a user who comes back within the
    window still finds every frame to replay. Users come back through the same prepare() as on first use.
    """

    def __init__(self, *, bus: EventBus, live: LiveManager, sockets: SocketRegistry, settings: SettingsStore,
                 triggers: TriggerStore, actions: ActionEngine, window_seconds: float) -> None:
        self._bus, self._live, self._sockets = bus, live, sockets
        self._settings, self._triggers, self._actions = settings, triggers, actions
        self._busy: list[Callable[[int], bool]] = [live.busy]  # a user any of these holds is kept
        self._sweeps = Periodic("memory-janitor", max(0.05, min(SWEEP_MAX_SECONDS, window_seconds / 10)),
                                self.sweep)

    def keep_while(self, busy: Callable[[int], bool]) -> None:
        """Keeps every user for whom busy(user_id) holds (e.g. a running rehearsal), whatever else."""
        self._busy.append(busy)

    def cached_users(self) -> set[int]:
        """Users with any per-user state in memory."""
        return (set(self._bus.cached_users()) | self._live.cached_users() | set(self._settings.cached_users())
                | set(self._triggers.cached_users()) | self._actions.cached_users())

    def sweep(self) -> int:
        """Trims every replay buffer to the window and releases idle users; returns how many. Synchronous on
        purpose: nothing can start using a user between the checks and the release."""
        self._bus.trim_idle()
        released = 0
        for user_id in self.cached_users():
            if self._sockets.current(user_id) is not None or any(busy(user_id) for busy in self._busy):
                continue
            if not self._bus.forget(user_id):  # frames still inside the replay window, or a socket attached
                continue
            self._live.forget(user_id)
            self._settings.invalidate(user_id)
            self._triggers.forget(user_id)
            self._actions.forget(user_id)
            released += 1
        if released:
            _LOGGER.debug("memory: released the state of %d idle user(s)", released)
        return released

    async def start(self) -> None:
        self._sweeps.start()

    async def close(self) -> None:
        await self._sweeps.close()
