"""Compiled trigger rules: they pick exactly the triggers holds() accepts, in order, with the switches applied."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from ttboost.pipeline.events import LiveEvent
from ttboost.pipeline.rules import Context, compile_rules, holds, matching
from ttboost.triggers import Trigger

TEXTS = ("", "hi", "Hi There", "  !cmd go", "!CMD", "ПРИВЕТ мир", "Straße", "kw3", "xkw3y", " @Bob ", "bob", "Rose",
         " rose ", "ROSE", "Gift 1", "ß", "ss")
INTS = (1, 2, 5, 10, 50, 100, 999)


def trigger(id_: int, key: str, value: Any, action: str = "play_sound", event_type: str = "chat") -> Trigger:
    return Trigger(id=id_, user_id=1, event_type=event_type, condition_key=key, condition_value=value, action=action,
                   action_params={}, enabled=True, priority=0, cooldown_seconds=0, once_per_stream=False,
                   trigger_name="", executed_count=0, created_at="")


def random_trigger(rng: random.Random, id_: int) -> Trigger:
    key = rng.choice(("always", "message_contains", "message_starts_with", "username", "gift_name", "gift_id",
                      "min_count", "min_diamonds", "min_likes", "every_likes"))
    if key == "always":
        value: Any = None
    elif key in ("message_contains", "message_starts_with", "gift_name"):
        value = rng.choice(TEXTS[1:])
    elif key == "username":
        value = rng.choice(("bob", "anya", "@bob"))
    else:
        value = rng.choice(INTS)
    return trigger(id_, key, value, rng.choice(("play_sound", "tts")))


def random_event(rng: random.Random) -> tuple[LiveEvent, Context]:
    event = LiveEvent(rng.choice(("chat", "gift", "like")), username=rng.choice(TEXTS), message=rng.choice(TEXTS),
                      gift_name=rng.choice(TEXTS), gift_id=rng.choice(INTS), count=rng.choice(INTS),
                      diamond_count=rng.choice((0, 1, 3)))
    before = rng.choice((0, 1, 4, 9, 49, 99, 998))
    total_before = rng.choice((0, 40, 90, 995))
    ctx = Context(viewer="v", viewer_likes_before=before, viewer_likes=before + rng.choice((0, 1, 5, 60)),
                  total_before=total_before, total=total_before + rng.choice((0, 5, 10, 500)))
    return event, ctx


def test_compiled_rules_agree_with_holds() -> None:
    rng = random.Random(20261122)
    for _ in range(3000):
        rules = [random_trigger(rng, i) for i in range(rng.randint(0, 12))]
        event, ctx = random_event(rng)
        sound_ok, speech_ok = rng.random() < 0.8, rng.random() < 0.8
        expected = [t for t in rules if (sound_ok if t.action == "play_sound" else speech_ok) and holds(t, event, ctx)]
        assert list(matching(compile_rules(rules), event, ctx, sound_ok, speech_ok)) == expected


def test_an_unknown_condition_still_goes_through_holds(caplog: pytest.LogCaptureFixture) -> None:
    rules = [trigger(7, "moon_phase", 3), trigger(8, "always", None)]
    with caplog.at_level(logging.WARNING):
        found = list(matching(compile_rules(rules), LiveEvent("chat"), Context(viewer=""), True, True))
    assert [t.id for t in found] == [8]
    assert "trigger 7 has unknown condition 'moon_phase'" in caplog.text


def test_a_count_condition_with_a_text_value_fails_as_holds_does() -> None:
    rules = [trigger(9, "gift_id", "5655", event_type="gift")]
    with pytest.raises(AssertionError):
        holds(rules[0], LiveEvent("gift", gift_id=5655), Context(viewer=""))
    with pytest.raises(AssertionError):
        list(matching(compile_rules(rules), LiveEvent("gift", gift_id=5655), Context(viewer=""), True, True))


def test_matching_stops_where_the_caller_stops() -> None:
    """The engine takes the first rule that acts: later rules are not even looked at (holds() may log)."""
    rules = [trigger(1, "always", None), trigger(2, "moon_phase", 3)]
    found = matching(compile_rules(rules), LiveEvent("chat"), Context(viewer=""), True, True)
    assert next(found).id == 1
