"""LiveSource: what the LIVE session needs from a TikTok connection, independent of the library behind it."""

from __future__ import annotations

from typing import Callable, Protocol

from ttboost.pipeline.events import LiveEvent


class LiveSource(Protocol):
    """Watches one streamer's LIVE; the TikTok adapter implements it, tests may inject their own."""

    async def watch(
        self,
        unique_id: str,
        on_event: Callable[[LiveEvent], None],
        on_connected: Callable[[], None],
    ) -> None:
        """Connects to `unique_id`'s LIVE and delivers its events, in TikTok's order, until it ends.

        `on_connected()` is called once the push connection is up; `on_event` is called from one task,
        once per event (it must not block: the caller typically puts the event on a queue).
        Returns normally when the LIVE ended cleanly. Raises (ttboost.live.errors) UserOffline,
        UserNotFound, Blocked, SignRateLimited (with `retry_after`) or ConnectionDropped.
        Cancelling the call closes the connection before CancelledError propagates.
        """
        ...
