"""Trigger conditions: the reference check, and the same check compiled once per rule list for the event path."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, Iterator

from ..triggers import Trigger
from .events import LiveEvent

_LOGGER = logging.getLogger(__name__)

# Test codes of compiled rules. Anything else (an unknown key, a value of the wrong type) is _OTHER and goes
# through holds(), which logs or asserts exactly as before.
_ALWAYS: Final = 0
_CONTAINS: Final = 1
_STARTS: Final = 2
_USERNAME: Final = 3
_GIFT_NAME: Final = 4
_GIFT_ID: Final = 5
_MIN_COUNT: Final = 6
_MIN_DIAMONDS: Final = 7
_MIN_LIKES: Final = 8
_EVERY_LIKES: Final = 9
_OTHER: Final = 10
_INT_KEYS: Final = {"gift_id": _GIFT_ID, "min_count": _MIN_COUNT, "min_diamonds": _MIN_DIAMONDS,
                    "min_likes": _MIN_LIKES, "every_likes": _EVERY_LIKES}

Compiled = tuple[Trigger, int, Any, bool]  # (trigger, test code, value prepared for the test, plays a sound)


@dataclass(slots=True)
class Context:
    """One event's derived numbers, computed once before matching."""

    viewer: str
    viewer_likes_before: int = 0
    viewer_likes: int = 0
    total_before: int = 0
    total: int = 0


def holds(trigger: Trigger, event: LiveEvent, ctx: Context) -> bool:
    """Whether the trigger's condition holds for the event: the definition compiled rules must agree with."""
    key, value = trigger.condition_key, trigger.condition_value
    if key == "always":
        return True
    if key == "username":
        return event.username.strip().removeprefix("@").lower() == value
    if key == "message_contains":
        return str(value).casefold() in event.message.casefold()
    if key == "message_starts_with":
        return event.message.lstrip().startswith(str(value))
    if key == "gift_name":
        return event.gift_name.strip().casefold() == str(value).casefold()
    assert isinstance(value, int)
    if key == "gift_id":
        return event.gift_id == value
    if key == "min_count":
        return event.count >= value
    if key == "min_diamonds":
        return event.diamonds >= value
    if key == "min_likes":  # once per viewer per stream: only the event that reaches n
        return ctx.viewer_likes_before < value <= ctx.viewer_likes
    if key == "every_likes":
        return ctx.total // value > ctx.total_before // value
    _LOGGER.warning("trigger %d has unknown condition %r; skipped", trigger.id, key)
    return False


def compile_rules(rules: list[Trigger]) -> list[Compiled]:
    """Each rule with its test decided and its value prepared (case-folded, stringified) once."""
    compiled: list[Compiled] = []
    for trigger in rules:
        key, value = trigger.condition_key, trigger.condition_value
        code, prepared = _OTHER, value
        if key == "always":
            code = _ALWAYS
        elif key == "message_contains":
            code, prepared = _CONTAINS, str(value).casefold()
        elif key == "message_starts_with":
            code, prepared = _STARTS, str(value)
        elif key == "username":
            code = _USERNAME
        elif key == "gift_name":
            code, prepared = _GIFT_NAME, str(value).casefold()
        elif key in _INT_KEYS and isinstance(value, int):
            code = _INT_KEYS[key]
        compiled.append((trigger, code, prepared, trigger.action == "play_sound"))
    return compiled


def matching(plan: list[Compiled], event: LiveEvent, ctx: Context, sound_ok: bool,
             speech_ok: bool) -> Iterator[Trigger]:
    """The rules, in order, whose action is switched on and whose condition holds (as holds() decides).

    Runs for every rule of the event's type until one acts (100 rules is a normal plan), so the event's text
    forms are computed once, on first need, and each rule costs a few comparisons.
    """
    folded = stripped = handle = gift = None
    for trigger, code, value, sound in plan:
        if not (sound_ok if sound else speech_ok):
            continue
        if code == _ALWAYS:
            pass
        elif code == _CONTAINS:
            if folded is None:
                folded = event.message.casefold()
            if value not in folded:
                continue
        elif code == _GIFT_ID:
            if event.gift_id != value:
                continue
        elif code == _STARTS:
            if stripped is None:
                stripped = event.message.lstrip()
            if not stripped.startswith(value):
                continue
        elif code == _USERNAME:
            if handle is None:
                handle = event.username.strip().removeprefix("@").lower()
            if handle != value:
                continue
        elif code == _GIFT_NAME:
            if gift is None:
                gift = event.gift_name.strip().casefold()
            if gift != value:
                continue
        elif code == _MIN_COUNT:
            if event.count < value:
                continue
        elif code == _MIN_DIAMONDS:
            if event.diamonds < value:
                continue
        elif code == _MIN_LIKES:
            if not ctx.viewer_likes_before < value <= ctx.viewer_likes:
                continue
        elif code == _EVERY_LIKES:
            if not ctx.total // value > ctx.total_before // value:
                continue
        elif not holds(trigger, event, ctx):
            continue
        yield trigger
