"""The event bus on its own: seq never repeating (restarts, crashes, pruning), bounded replay, the batched log
through write failures, and its retention."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator

import pytest

from ttboost.db import Database
from ttboost.pipeline.bus import EventBus, StreamRef, frame_ts
from ttboost.pipeline.eventlog import FLUSH_AT_ROWS
from ttboost.pipeline.seqs import SEQ_BLOCK
from tests.helpers import Clock, eventually


@pytest.fixture
async def db(tmp_path) -> AsyncIterator[Database]:
    db = Database(tmp_path / "t.db")
    await db.open()
    await db.execute("INSERT INTO users (username, created_at) VALUES ('u', 'x')")
    yield db
    await db.close()


async def test_seq_continues_after_a_restart(db) -> None:
    bus = EventBus(db, replay_events=10, replay_seconds=60)
    await bus.channel(1)
    assert [bus.publish(1, "chat", {"message": str(i)}) for i in range(3)] == [1, 2, 3]
    await bus.close()  # flushes the log
    again = EventBus(db, replay_events=10, replay_seconds=60)
    await again.channel(1)
    assert again.publish(1, "chat", {"message": "after"}) == 4
    await again.close()
    rows = await db.fetchall("SELECT seq, payload FROM events ORDER BY seq")
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert json.loads(rows[3]["payload"]) == {"message": "after"}


async def test_replay_is_bounded_by_count_and_age(db) -> None:
    clock = Clock(100.0)
    bus = EventBus(db, replay_events=3, replay_seconds=10, clock=clock)
    await bus.channel(1)
    for i in range(5):
        bus.publish(1, "chat", {"message": str(i)})
    assert [(seq, json.loads(f)["message"]) for seq, f in bus.replay(1, 0)] == [(3, "2"), (4, "3"), (5, "4")]
    assert [json.loads(f)["message"] for _, f in bus.replay(1, 4)] == ["4"]
    clock.now += 11
    bus.publish(1, "chat", {"message": "new"})
    assert [json.loads(f)["message"] for _, f in bus.replay(1, 0)] == ["new"]
    await bus.close()


async def test_old_events_are_pruned_by_retention(db) -> None:
    wall = Clock(1_800_000_000.0)
    bus = EventBus(db, replay_events=10, replay_seconds=60, retention_seconds=86400, wall=wall)
    await bus.channel(1)
    bus.publish(1, "chat", {"message": "old"})
    wall.now += 86400 + 1
    bus.publish(1, "chat", {"message": "recent"})
    await bus.close()
    bus = EventBus(db, replay_events=10, replay_seconds=60, retention_seconds=86400, wall=wall)
    assert await bus.log.prune() == 1
    rows = await db.fetchall("SELECT payload, ts FROM events")
    assert [json.loads(r["payload"])["message"] for r in rows] == ["recent"]
    assert rows[0]["ts"] == frame_ts(wall.now)
    keep_all = EventBus(db, replay_events=10, replay_seconds=60, retention_seconds=0, wall=wall)
    wall.now += 10 * 86400
    assert await keep_all.log.prune() == 0


async def test_a_row_that_cannot_be_stored_does_not_block_the_log(db, caplog) -> None:
    bus = EventBus(db, replay_events=10, replay_seconds=60)
    await bus.channel(1)
    bus.publish(1, "chat", {"message": "before"})
    bus.publish(1, "chat", {"message": "bad \ud800 surrogate"})  # cannot be encoded as UTF-8 for SQLite
    bus.publish(1, "chat", {"message": "after"})
    await bus.close()
    rows = await db.fetchall("SELECT seq, payload FROM events ORDER BY seq")
    assert [r["seq"] for r in rows] == [1, 3]
    assert "dropped event seq 2" in caplog.text


async def test_seq_never_repeats_after_a_crash_pruning_or_a_long_idle(db) -> None:
    wall = Clock(1_800_000_000.0)

    def bus() -> EventBus:
        return EventBus(db, replay_events=10, replay_seconds=60, retention_seconds=86400, wall=wall)

    crashed = bus()
    await crashed.channel(1)
    seen = [crashed.publish(1, "chat", {"message": str(i)}) for i in range(5)]
    # A crash: nothing flushed, nothing closed. The numbers were reserved before they were handed out.
    assert await db.fetchval("SELECT COUNT(*) FROM events") == 0
    after_crash = bus()
    await after_crash.channel(1)
    seen.append(after_crash.publish(1, "chat", {"message": "after crash"}))
    await after_crash.close()
    wall.now += 90 * 86400  # idle for months: the whole log is pruned
    pruned = bus()
    assert await pruned.log.prune() == 1
    await pruned.channel(1)
    seen.append(pruned.publish(1, "chat", {"message": "after pruning"}))
    await pruned.close()
    assert seen == sorted(set(seen)) and seen[:5] == [1, 2, 3, 4, 5]
    assert seen[-1] == seen[-2] + 1  # a clean shutdown gives the unused numbers back: no gap


async def test_seq_reservation_is_raised_ahead_of_use(db) -> None:
    first = EventBus(db, replay_events=10, replay_seconds=60)
    channel = await first.channel(1)
    for _ in range(SEQ_BLOCK // 2 + 1):
        first.publish(1, "like", {}, log=False)
    for _ in range(1000):  # the renewal is one write in a task of its own
        if channel.renewing is None:
            break
        await asyncio.sleep(0.001)
    for _ in range(SEQ_BLOCK):  # past the first block
        last = first.publish(1, "like", {}, log=False)
    crashed_at = last
    second = EventBus(db, replay_events=10, replay_seconds=60)
    await second.channel(1)
    assert second.publish(1, "like", {}) > crashed_at
    await second.close()
    await first.log.close()


async def test_a_caller_sharing_a_channels_creation_is_not_cancelled_with_its_creator(db) -> None:
    """Two first uses at once share one creation; the first caller's request is cancelled (its client went
    away) while the reservation is being read: the second still gets the channel, and numbers go on."""
    bus = EventBus(db, replay_events=10, replay_seconds=60)
    creator = asyncio.create_task(bus.channel(1))
    await asyncio.sleep(0)  # the creator is in the database now
    sharer = asyncio.create_task(bus.channel(1))
    await asyncio.sleep(0)
    creator.cancel()
    channel = await sharer
    assert bus.get(1) is channel and bus.publish(1, "chat", {}) == 1
    await bus.close()
async def test_two_workers_channels_of_one_user_never_hand_out_one_seq_twice(db) -> None:
    """Cluster mode: two workers' buses over one database, each with a channel of the same user (the socket on
    one, a simulate or a rehearsal on the other), then one worker restarting."""
    a = EventBus(db, replay_events=10, replay_seconds=60)
    b = EventBus(db, replay_events=10, replay_seconds=60)
    channel_a = await a.channel(1)
    await b.channel(1)
    seen_b = [b.publish(1, "like", {}, log=False) for _ in range(3)]
    seen_a = [a.publish(1, "like", {}, log=False) for _ in range(SEQ_BLOCK // 2 + 1)]
    await eventually(lambda: channel_a.renewing, lambda task: task is None)
    seen_a += [a.publish(1, "like", {}, log=False) for _ in range(SEQ_BLOCK)]  # past a's first block
    assert not set(seen_a) & set(seen_b) and seen_a == sorted(seen_a)
    await b.close()  # b's give-back must not lower a's reservation below what a handed out
    assert await db.fetchval("SELECT reserved FROM seq_blocks WHERE user_id = 1") >= max(seen_a)
    await a.close()
    restarted = EventBus(db, replay_events=10, replay_seconds=60)
    await restarted.channel(1)
    assert restarted.publish(1, "like", {}) > max(seen_a + seen_b)
    await restarted.close()


async def failing_writes(db: Database, on: bool) -> None:
    """The database refuses every write (SQLITE_READONLY) until switched back: a transient fault."""
    await db.execute(f"PRAGMA query_only = {int(on)}")


async def test_rows_written_while_the_database_fails_are_kept_and_retried(db, caplog) -> None:
    bus = EventBus(db, replay_events=10, replay_seconds=60, retry_seconds=(0.01, 0.05))
    await bus.channel(1)
    await bus.start()
    await failing_writes(db, True)
    for i in range(600):  # more than one batch: the writer tries at once, and fails
        bus.publish(1, "chat", {"message": str(i)})
    assert "retrying in" in await eventually(lambda: caplog.text, lambda text: "retrying in" in text)
    assert bus.log.health() == {"waiting": 600, "dropped": 0}
    await failing_writes(db, False)
    assert await eventually(lambda: bus.log.waiting, lambda n: n == 0) == 0  # the retry worked
    rows = await db.fetchall("SELECT seq, payload FROM events ORDER BY id")
    assert [r["seq"] for r in rows] == list(range(1, 601))
    assert [json.loads(r["payload"])["message"] for r in rows] == [str(i) for i in range(600)]
    await bus.close()


async def test_past_the_bound_the_oldest_rows_are_dropped_counted_and_logged_once(db, caplog) -> None:
    clock = Clock()
    bus = EventBus(db, replay_events=10, replay_seconds=60, log_max_waiting=100, clock=clock)
    await bus.channel(1)
    await failing_writes(db, True)
    with caplog.at_level(logging.WARNING, logger="ttboost.pipeline.eventlog"):
        for i in range(250):
            bus.publish(1, "chat", {"message": str(i)})
    assert bus.log.health() == {"waiting": 100, "dropped": 150}
    assert caplog.text.count("dropped the") == 1  # once per interval, not once per row
    await failing_writes(db, False)
    await bus.close()
    rows = await db.fetchall("SELECT seq FROM events ORDER BY id")
    assert [r["seq"] for r in rows] == list(range(151, 251))


class Sink:
    def deliver(self, frame: str, timing=None) -> None:
        pass


async def test_a_channel_is_released_only_once_nothing_uses_it_for_a_whole_window(db) -> None:
    clock = Clock(100.0)
    bus = EventBus(db, replay_events=10, replay_seconds=60, clock=clock)
    await bus.channel(1)
    seq = bus.publish(1, "chat", {"message": "last"})
    overlay, app = Sink(), Sink()
    bus.attach_overlay(1, overlay)
    bus.attach(1, app)
    clock.now += 61
    assert not bus.forget(1)  # the app's socket reads it
    bus.detach(1, app)
    clock.now += 61
    assert not bus.forget(1)  # an overlay page reads it
    bus.detach_overlay(1, overlay)
    clock.now += 30
    await bus.channel(1)  # a caller is about to use it: a whole window again from here
    clock.now += 59
    assert not bus.forget(1) and bus.replay(1, 0) == []  # (the frame itself is past the window: trimmed)
    clock.now += 1
    assert bus.forget(1) and bus.get(1) is None
    await bus.channel(1)  # made again on demand: seq goes on, never back
    assert bus.publish(1, "chat", {"message": "again"}) > seq
    await bus.close()


async def test_the_log_closes_when_a_full_batch_wakes_its_writer_in_the_same_turn(db) -> None:
    """Shutdown hung here: on Python 3.11, asyncio.wait_for returns normally when the awaited wait ends in the
    same loop turn as the cancel, so the writer swallowed close()'s cancel and went on writing for ever."""
    bus = EventBus(db, replay_events=10, replay_seconds=60)
    await bus.channel(1)
    await bus.start()
    bus.publish(1, "chat", {"message": "first"})
    # Written: the writer is back waiting for the next batch (or its timer).
    await eventually(lambda: db.fetchval("SELECT COUNT(*) FROM events"), lambda n: n == 1)
    for i in range(FLUSH_AT_ROWS):  # a whole batch: its last row wakes the writer
        bus.publish(1, "chat", {"message": str(i)})
    # In the same turn; the ceiling only turns a hang into a failure.
    await asyncio.wait_for(bus.close(), timeout=20)
    assert await db.fetchval("SELECT COUNT(*) FROM events") == FLUSH_AT_ROWS + 1


async def test_rows_wait_for_their_streams_id_and_shutdown_writes_them_without_one(db) -> None:
    bus = EventBus(db, replay_events=10, replay_seconds=60)
    channel = await bus.channel(1)
    written, never = StreamRef(), StreamRef()  # two streams whose rows are still being inserted
    channel.stream = written
    bus.publish(1, "chat", {"message": "first"})
    channel.stream = never
    bus.publish(1, "chat", {"message": "orphan"})
    bus.publish(1, "chat", {"message": "simulated"}, live=False)
    await bus.log.flush()
    assert [r["seq"] for r in await db.fetchall("SELECT seq FROM events")] == [3]  # held: not written yet
    assert bus.log.waiting == 2 and bus.log.last_waiting_seq(1) == 2
    written.id = await db.execute("INSERT INTO stream_sessions (user_id, tiktok_username, started_at) "
                                  "VALUES (1, 'streamer', '2026-11-30T20:00:00Z')")
    await bus.log.flush()
    # The other row never gets its id (its session was gone before the INSERT ran): shutdown writes it
    # without a stream instead of waiting for it, or losing it.
    await asyncio.wait_for(bus.close(), timeout=20)
    rows = await db.fetchall("SELECT seq, session_id FROM events ORDER BY seq")
    assert [(r["seq"], r["session_id"]) for r in rows] == [(1, written.id), (2, None), (3, None)]
