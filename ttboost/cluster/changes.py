"""Triggers and settings changed through one worker are in effect on every other within a second.

Each worker keeps the rules and settings of its users in memory (the event path never awaits the database), so
a change committed through another worker must reach that copy: a plain NATS message after the commit, and the
receiving workers read the rows again. Nothing is carried in the message but the user and what changed.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from ..settings import SettingsStore
from ..triggers import TriggerStore
from .broker import Broker

_LOGGER = logging.getLogger(__name__)

SUBJECT: Final = "ttboost.changes"


class ChangeFeed:
    """Announces this worker's committed changes and applies the others'."""

    def __init__(self, broker: Broker, triggers: TriggerStore, settings: SettingsStore) -> None:
        self._broker = broker
        self._triggers = triggers
        self._settings = settings

    async def start(self) -> None:
        await self._broker.subscribe(SUBJECT, self._apply)
        self._triggers.on_change = self._announcer("triggers")
        self._settings.on_change = self._announcer("settings")

    def _announcer(self, what: str):
        async def announce(user_id: int) -> None:
            try:
                await self._broker.publish(SUBJECT, {"what": what, "user_id": user_id})
            except Exception:  # committed already: the other workers catch up when the user's cache is reloaded
                _LOGGER.exception("cluster: could not announce changed %s of user %d", what, user_id)

        return announce

    async def _apply(self, body: dict[str, Any]) -> None:
        user_id, what = int(body["user_id"]), body["what"]
        if what == "triggers":
            if user_id in self._triggers.cached_users():
                await self._triggers.refresh(user_id)
        elif what == "settings":
            await self._settings.reload(user_id)
