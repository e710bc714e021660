"""The event bus on its own: seq continuing across restarts, bounded replay, the batched log and its retention."""

from __future__ import annotations

import json
from typing import AsyncIterator

import pytest

from ttboost.db import Database
from ttboost.pipeline.bus import EventBus, frame_ts
from tests.helpers import Clock


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
    assert [json.loads(f)["message"] for f in bus.replay(1, 0)] == ["2", "3", "4"]
    assert [json.loads(f)["message"] for f in bus.replay(1, 4)] == ["4"]
    clock.now += 11
    bus.publish(1, "chat", {"message": "new"})
    assert [json.loads(f)["message"] for f in bus.replay(1, 0)] == ["new"]
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
    assert await bus.prune() == 1
    rows = await db.fetchall("SELECT payload, ts FROM events")
    assert [json.loads(r["payload"])["message"] for r in rows] == ["recent"]
    assert rows[0]["ts"] == frame_ts(wall.now)
    keep_all = EventBus(db, replay_events=10, replay_seconds=60, retention_seconds=0, wall=wall)
    wall.now += 10 * 86400
    assert await keep_all.prune() == 0


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
