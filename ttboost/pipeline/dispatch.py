"""The one path every event takes (LIVE, simulate, demo): action hook, then the user's bus."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from ..messages import text
from .bus import EventBus, FrameTiming
from .events import LiveEvent

_LOGGER = logging.getLogger(__name__)


class ActionHook(Protocol):
    """Decides a sound/speech for an event from in-memory state; never awaits (see pipeline/actions.py)."""

    async def prepare(self, user_id: int) -> None: ...

    def apply(self, user_id: int, event: LiveEvent, *, first_message: bool | None = None) -> LiveEvent | None:
        """Sets the event's audio; returns an event to publish right after it (viewer_first_message), if any."""

    def stream_started(self, user_id: int) -> None: ...


class Dispatcher:
    def __init__(self, bus: EventBus, actions: ActionHook | None) -> None:
        self.bus = bus
        self._actions = actions

    async def prepare(self, user_id: int) -> None:
        """Loads what dispatch() needs in memory; call once before a user's first event."""
        await self.bus.channel(user_id)
        if self._actions is not None:
            await self._actions.prepare(user_id)

    def dispatch(self, user_id: int, event: LiveEvent, *, live: bool = True) -> int:
        """Synchronous: the event reaches the app's queue before this returns; speech only has a URL yet.
        Returns the event's seq (a follow-up frame, if any, has the next one).

        live=False for events that did not come from TikTok (simulate, demo): they stay out of the stream's
        figures and history."""
        return self.dispatch_all(user_id, event, live=live)[0][0]

    def dispatch_all(self, user_id: int, event: LiveEvent, *, first_message: bool | None = None,
                     live: bool = True) -> list[tuple[int, LiveEvent]]:
        """dispatch() returning every frame published, in order: the event, then its follow-up (a chat that is
        the viewer's first of the stream can be followed by viewer_first_message). first_message=True treats
        a chat as the viewer's first whatever the stream saw (simulate)."""
        follow_up = None
        if self._actions is not None and event.type != "viewer":
            try:
                follow_up = self._actions.apply(user_id, event, first_message=first_message)
            except Exception:  # an action bug costs the audio, never the event
                _LOGGER.exception("actions failed for user %s on %s", user_id, event.type)
        if not event.received_ms:  # simulate, demo: the server "reads" it now
            event.received_ms = int(time.time() * 1000)
        timing = FrameTiming(event.type, event.tiktok_ms, event.received_ms)
        published = [(self.bus.publish(user_id, event.type, event.to_payload(), timing=timing, live=live), event)]
        if follow_up is not None:  # made from the same TikTok message: the same times
            follow_timing = FrameTiming(follow_up.type, event.tiktok_ms, event.received_ms)
            published.append((self.bus.publish(user_id, follow_up.type, follow_up.to_payload(),
                                               timing=follow_timing, live=live), follow_up))
        return published

    def stream_started(self, user_id: int) -> None:
        if self._actions is not None:
            self._actions.stream_started(user_id)

    def status(self, user_id: int, state: str, *, tiktok_username: str, retry_in: float | None = None,
               note: str | None = None, **values: object) -> int:
        """A status frame; its message is the state's text, or the text of `note` (with values) when the state
        alone would mislead (reconnecting when no connection was ever made)."""
        channel = self.bus.get(user_id)
        language = channel.language if channel else "ru"
        payload: dict[str, Any] = {
            "state": state,
            "connected": state == "connected",
            "tiktok_username": tiktok_username,
            "message": text(note or state, language, user=tiktok_username, **values),
        }
        if retry_in is not None:
            payload["retry_in"] = round(retry_in, 1)
        return self.bus.publish(user_id, "status", payload)

    def error(self, user_id: int, code: str, **values: object) -> int:
        channel = self.bus.get(user_id)
        language = channel.language if channel else "ru"
        return self.bus.publish(user_id, "error", {"code": code, "message": text(code, language, **values)})
