"""ComboTracker: streak folding, timeouts, late ends and duplicate dropping, on a hand-driven clock."""

from __future__ import annotations

import pytest

from ttboost.pipeline.combos import ComboTracker
from ttboost.pipeline.events import LiveEvent

TIMEOUT = 3.0


def rose(count: int, *, end: bool = False, msg_id: str = "", user_id: str = "42", username: str = "bob",
         gift_id: int = 5655, streakable: bool = True) -> LiveEvent:
    return LiveEvent(type="gift", user="Bob", username=username, user_id=user_id, gift_id=gift_id,
                     gift_name="Rose", count=count, diamond_count=1, streakable=streakable,
                     repeat_end=end, msg_id=msg_id)


def counts(events: list[LiveEvent]) -> list[int]:
    return [e.count for e in events]


@pytest.fixture
def tracker() -> ComboTracker:
    return ComboTracker(TIMEOUT)


def test_non_gift_events_pass_at_once(tracker: ComboTracker) -> None:
    chat = LiveEvent(type="chat", user="Bob", username="bob", message="hi", msg_id="1")
    like = LiveEvent(type="like", username="bob", count=5, total=10)
    assert tracker.feed(chat, 0.0) == [chat]
    assert tracker.feed(like, 0.0) == [like]
    assert tracker.next_deadline() is None


def test_non_streakable_gift_is_immediate(tracker: ComboTracker) -> None:
    lion = rose(1, streakable=False, gift_id=6369)
    assert tracker.feed(lion, 0.0) == [lion]
    assert tracker.next_deadline() is None


def test_streak_is_folded_into_one_event_at_its_end(tracker: ComboTracker) -> None:
    assert tracker.feed(rose(1), 0.0) == []
    assert tracker.feed(rose(2), 0.5) == []
    assert tracker.feed(rose(3), 1.0) == []
    out = tracker.feed(rose(4, end=True), 1.2)
    assert counts(out) == [4]
    assert out[0].repeat_end and out[0].diamonds == 4
    assert tracker.next_deadline() is None
    assert tracker.flush() == []


def test_final_count_is_the_highest_seen(tracker: ComboTracker) -> None:
    tracker.feed(rose(5), 0.0)
    tracker.feed(rose(4), 0.1)  # out of order
    out = tracker.feed(rose(3, end=True), 0.2)
    assert counts(out) == [5]
    assert out[0].repeat_end


def test_streaks_are_kept_per_viewer_and_gift(tracker: ComboTracker) -> None:
    tracker.feed(rose(2), 0.0)
    tracker.feed(rose(7, user_id="", username="alice"), 0.0)  # no numeric id: keyed by handle
    tracker.feed(rose(1, gift_id=1), 0.0)
    assert counts(tracker.feed(rose(9, end=True, user_id="", username="alice"), 0.1)) == [9]
    assert counts(tracker.feed(rose(3, end=True), 0.1)) == [3]
    assert counts(tracker.flush()) == [1]


def test_end_of_a_streak_never_seen_passes_through(tracker: ComboTracker) -> None:
    end = rose(12, end=True)
    assert tracker.feed(end, 0.0) == [end]


def test_silent_streak_closes_after_timeout(tracker: ComboTracker) -> None:
    tracker.feed(rose(1), 0.0)
    tracker.feed(rose(2), 1.0)
    assert tracker.next_deadline() == pytest.approx(1.0 + TIMEOUT)
    assert tracker.expire(1.0 + TIMEOUT - 0.01) == []
    out = tracker.expire(1.0 + TIMEOUT)
    assert counts(out) == [2]
    assert tracker.next_deadline() is None
    assert tracker.expire(100.0) == []


def test_expire_returns_the_highest_count(tracker: ComboTracker) -> None:
    tracker.feed(rose(6), 0.0)
    tracker.feed(rose(5), 0.5)
    assert counts(tracker.expire(10.0)) == [6]


def test_late_end_after_timeout_is_dropped(tracker: ComboTracker) -> None:
    tracker.feed(rose(1), 0.0)
    tracker.feed(rose(2), 0.5)
    assert counts(tracker.expire(0.5 + TIMEOUT)) == [2]
    assert tracker.feed(rose(2, end=True), 9.0) == []


def test_late_end_with_more_gifts_passes_only_the_rest(tracker: ComboTracker) -> None:
    tracker.feed(rose(3), 0.0)
    assert counts(tracker.expire(TIMEOUT)) == [3]
    tracker.feed(rose(4), 5.0)  # the streak went on after a long pause
    assert counts(tracker.feed(rose(5, end=True), 5.5)) == [2]  # 3 were already passed on


def test_new_streak_after_a_timed_out_one_is_tracked_afresh(tracker: ComboTracker) -> None:
    tracker.feed(rose(4), 0.0)
    assert counts(tracker.expire(TIMEOUT)) == [4]
    assert tracker.feed(rose(1), 10.0) == []  # counts restart: a new streak
    assert tracker.feed(rose(2), 10.5) == []
    assert counts(tracker.feed(rose(2, end=True), 11.0)) == [2]


def test_flush_closes_every_open_streak(tracker: ComboTracker) -> None:
    tracker.feed(rose(2), 0.0)
    tracker.feed(rose(5, user_id="7", username="carol"), 0.0)
    out = tracker.flush()
    assert sorted(counts(out)) == [2, 5]
    assert tracker.next_deadline() is None
    assert tracker.feed(rose(5, end=True, user_id="7", username="carol"), 1.0) == []


def test_duplicates_are_dropped_by_msg_id(tracker: ComboTracker) -> None:
    chat = LiveEvent(type="chat", username="bob", message="hi", msg_id="100")
    assert tracker.feed(chat, 0.0) == [chat]
    assert tracker.feed(chat, 0.1) == []
    no_id = LiveEvent(type="chat", username="bob", message="hi")
    assert tracker.feed(no_id, 0.2) == [no_id]
    assert tracker.feed(no_id, 0.3) == [no_id]  # no id: nothing to compare
    assert tracker.feed(rose(1, msg_id="200"), 0.4) == []
    assert tracker.feed(rose(1, msg_id="200"), 0.5) == []  # a repeated streak update changes nothing
    assert counts(tracker.feed(rose(1, end=True, msg_id="201"), 0.6)) == [1]


def test_duplicate_memory_is_a_bounded_lru() -> None:
    tracker = ComboTracker(TIMEOUT, dedupe_size=2)

    def chat(msg_id: str) -> LiveEvent:
        return LiveEvent(type="chat", message=msg_id, msg_id=msg_id)

    assert len(tracker.feed(chat("a"), 0)) == 1
    assert len(tracker.feed(chat("b"), 0)) == 1
    assert tracker.feed(chat("a"), 0) == []  # seen again: now the most recent
    assert len(tracker.feed(chat("c"), 0)) == 1  # evicts "b", the least recently seen
    assert tracker.feed(chat("a"), 0) == []
    assert len(tracker.feed(chat("b"), 0)) == 1


def test_changed_count_copies_the_event(tracker: ComboTracker) -> None:
    first = rose(3)
    first.extra["note"] = "held"
    tracker.feed(first, 0.0)
    end = rose(2, end=True)
    out = tracker.feed(end, 0.1)
    assert out[0] is not end and end.count == 2 and out[0].count == 3
    out[0].extra["sound_url"] = "x"
    assert "sound_url" not in end.extra


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ComboTracker(0)
    with pytest.raises(ValueError):
        ComboTracker(1.0, dedupe_size=0)
