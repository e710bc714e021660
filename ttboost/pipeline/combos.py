"""Gift combo folding and duplicate dropping: pure state, fed with events and a clock by the caller."""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from dataclasses import dataclass

from ttboost.pipeline.events import LiveEvent

_LOGGER = logging.getLogger(__name__)

_ComboKey = tuple[str, int]  # (viewer: user_id or handle, gift_id)


@dataclass(slots=True)
class _Combo:
    """An open streak: the delivery with the highest count so far and when the last one came."""

    event: LiveEvent
    count: int  # highest absolute repeat count seen
    last_seen: float  # caller's clock, seconds
    reported: int = 0  # count already passed on for this streak (it was closed by timeout and went on)


class ComboTracker:
    """Folds a streakable gift's deliveries into one event and drops repeated deliveries.

    Time is whatever monotonic clock the caller passes as `now` (seconds); nothing here sleeps or
    schedules: the caller asks `next_deadline()` and calls `expire()` when it passes.
    """

    def __init__(self, timeout: float, dedupe_size: int = 2048) -> None:
        if timeout <= 0 or dedupe_size <= 0:
            raise ValueError("timeout and dedupe_size must be positive")
        self._timeout = timeout
        self._dedupe_size = dedupe_size
        self._seen: OrderedDict[str, None] = OrderedDict()  # msg_ids, least recently seen first
        self._open: dict[_ComboKey, _Combo] = {}
        # Combos closed by the timeout and the absolute count already passed on, so that their late
        # deliveries are not counted twice. Bounded like the msg_id memory.
        self._closed: OrderedDict[_ComboKey, int] = OrderedDict()

    def feed(self, event: LiveEvent, now: float) -> list[LiveEvent]:
        """Takes one delivery; returns the events to pass on now (zero or one)."""
        if event.msg_id and self._is_duplicate(event.msg_id):
            return []
        if event.type != "gift" or not event.streakable:
            return [event]
        key = (event.user_id or event.username, event.gift_id)
        combo = self._open.get(key)
        if combo is None:
            reported = self._closed.get(key)
            if reported is not None and event.count <= reported:
                if event.repeat_end:
                    # The end of a streak already closed by the timeout: it was passed on then.
                    del self._closed[key]
                    return []
                # TikTok restarts counts at 1: a lower count is a new streak by the same viewer.
                del self._closed[key]
                reported = None
            elif reported is not None:
                # The streak went on after a pause longer than the timeout: only the rest is new.
                del self._closed[key]
            if event.repeat_end:
                if reported is None:
                    return [event]  # an end with no streak seen before (e.g. joined mid-combo)
                return [_with_count(event, event.count - reported)]
            self._open[key] = _Combo(event, event.count, now, reported or 0)
            return []
        combo.last_seen = now
        if event.count >= combo.count:
            combo.event, combo.count = event, event.count
        if not event.repeat_end:
            return []
        del self._open[key]
        return [_with_count(event, combo.count - combo.reported)]

    def expire(self, now: float) -> list[LiveEvent]:
        """Closes the streaks silent for at least the timeout; returns their events."""
        due = [key for key, combo in self._open.items() if now - combo.last_seen >= self._timeout]
        return [self._close(key) for key in due]

    def next_deadline(self) -> float | None:
        """When the next open streak times out (caller's clock), or None if none is open."""
        if not self._open:
            return None
        return min(combo.last_seen for combo in self._open.values()) + self._timeout

    def flush(self) -> list[LiveEvent]:
        """Closes every open streak (the LIVE ended); returns their events."""
        return [self._close(key) for key in list(self._open)]

    def _close(self, key: _ComboKey) -> LiveEvent:
        combo = self._open.pop(key)
        _LOGGER.debug("combo %s closed without its end at count %d", key, combo.count)
        self._closed[key] = combo.count
        self._closed.move_to_end(key)
        while len(self._closed) > self._dedupe_size:
            self._closed.popitem(last=False)
        return _with_count(combo.event, combo.count - combo.reported)

    def _is_duplicate(self, msg_id: str) -> bool:
        if msg_id in self._seen:
            self._seen.move_to_end(msg_id)
            return True
        self._seen[msg_id] = None
        if len(self._seen) > self._dedupe_size:
            self._seen.popitem(last=False)
        return False


def _with_count(event: LiveEvent, count: int) -> LiveEvent:
    """The event with `count`, copied only when it changes (the extra dict is copied, not shared)."""
    if event.count == count:
        return event
    return dataclasses.replace(event, count=count, extra=dict(event.extra))
