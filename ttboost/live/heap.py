"""Keeps the LIVE sessions' long-lived objects out of the garbage collector's routine full passes."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Final

REFREEZE_AFTER_SECONDS: Final = 10.0  # quiet time after the last session change before the one full pass
REFREEZE_AT_MOST_AFTER_SECONDS: Final = 60.0  # under constant churn, the pass still comes this long after a change


class HeapFreezer:
    """After LIVE sessions start or end: one full collection, then everything alive is frozen.

    Each session holds ~400 objects the collector tracks (the library's client, its sockets, tasks,
    coroutines) for hours. With hundreds of sessions, CPython's full collections rescan all of them every few
    seconds of event traffic: 50-150 ms of CPU each with 500 sessions, the event loop stopped, which was the
    p99 of the capacity benchmark. Frozen objects are skipped by those passes. What a frozen object leaves
    behind as cyclic garbage (an ended session's client) waits for the next refreeze, which the end of that
    session schedules: `gc.unfreeze()` then `gc.collect()` frees it before freezing again.
    """

    def __init__(self, after: float = REFREEZE_AFTER_SECONDS,
                 at_most_after: float = REFREEZE_AT_MOST_AFTER_SECONDS) -> None:
        self._after = after
        self._at_most_after = at_most_after
        self._timer: asyncio.TimerHandle | None = None
        self._first_change = 0.0  # monotonic time of the first change not yet followed by a refreeze

    def changed(self) -> None:
        """A session started or ended: refreeze once things are quiet (debounced)."""
        now = time.monotonic()
        if self._timer is None:
            self._first_change = now
        else:
            self._timer.cancel()
        delay = min(self._after, max(0.0, self._first_change + self._at_most_after - now))
        self._timer = asyncio.get_running_loop().call_later(delay, self.refreeze)

    def refreeze(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gc.unfreeze()
        gc.collect()
        gc.freeze()
