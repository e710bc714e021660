"""The transaction helper under faults: a cancel at BEGIN, in the body, at COMMIT and a failed COMMIT each
leave the one connection out of any transaction, with nothing written twice; migrations run each step once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import AsyncIterator

import pytest

from ttboost.db import Database, DatabaseUnavailable, PostgresDatabase
from ttboost.db.migrations import MIGRATIONS
from ttboost.pipeline.bus import EventBus
from ttboost.triggers import TriggerStore
from ttboost.trigger_schemas import TriggerSetSchema
from tests.conftest import make_config

WAIT: float = 10.0  # seconds a test waits for the database thread before it fails


class Hold:
    """Holds the database thread as it starts `sql`, until released: a slow disk at exactly that statement.

    Installed as the connection's SQLite trace callback, which runs in the database thread just before the
    statement executes.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.reached = threading.Event()
        self._go = threading.Event()

    def __call__(self, statement: str) -> None:
        if statement == self.sql and not self._go.is_set():
            self.reached.set()
            self._go.wait(WAIT)

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, WAIT), f"{self.sql} never ran"

    def release(self) -> None:
        self._go.set()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(tmp_path / "t.db")
    await db.open()
    await db.execute("INSERT INTO users (username, created_at) VALUES ('u', 'x')")
    yield db
    await db.close()


async def hold(db: Database, sql: str) -> Hold:
    held = Hold(sql)
    await db.conn.set_trace_callback(held)
    return held


async def insert_user(db: Database, name: str) -> None:
    await db.execute("INSERT INTO users (username, created_at) VALUES (?, 'x')", (name,))


async def usernames(db: Database) -> list[str]:
    return [r[0] for r in await db.fetchall("SELECT username FROM users ORDER BY id")]


async def assert_usable(db: Database, path: Path) -> None:
    """Out of any transaction: a new transaction works, and an autocommit write is on disk at once."""
    assert not db.conn.in_transaction
    async with db.transaction():
        await insert_user(db, "later-tx")
    await insert_user(db, "later-autocommit")
    other = sqlite3.connect(path)
    try:
        seen = [r[0] for r in other.execute("SELECT username FROM users WHERE username LIKE 'later-%'")]
    finally:
        other.close()
    assert sorted(seen) == ["later-autocommit", "later-tx"]


async def test_a_cancel_during_begin_rolls_back(db: Database, tmp_path: Path) -> None:
    held = await hold(db, "BEGIN IMMEDIATE")
    body_ran = False

    async def unit() -> None:
        nonlocal body_ran
        async with db.transaction():
            body_ran = True
            await insert_user(db, "never")

    task = asyncio.create_task(unit())
    await held.wait_reached()
    task.cancel()  # BEGIN is already in the database thread: it still runs after the cancel
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not body_ran and await usernames(db) == ["u"]
    await assert_usable(db, tmp_path / "t.db")


async def test_a_cancel_in_the_body_and_again_during_rollback_rolls_back(db: Database, tmp_path: Path) -> None:
    held = await hold(db, "ROLLBACK")
    inside = asyncio.Event()

    async def unit() -> None:
        async with db.transaction():
            await insert_user(db, "rolled-back")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(unit())
    await inside.wait()
    task.cancel()
    await held.wait_reached()
    task.cancel()  # a second cancel while the ROLLBACK runs must not leave before it ends
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await usernames(db) == ["u"]
    await assert_usable(db, tmp_path / "t.db")


async def test_a_cancel_during_commit_waits_for_it_and_the_block_counts_as_committed(
        db: Database, tmp_path: Path) -> None:
    held = await hold(db, "COMMIT")
    after_block: list[str] = []

    async def unit() -> None:
        async with db.transaction():
            await insert_user(db, "committed")
        after_block.append("committed")  # the caller's bookkeeping sees the success
        await asyncio.sleep(0)  # the cancel arrives here

    task = asyncio.create_task(unit())
    await held.wait_reached()
    task.cancel()
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after_block == ["committed"]
    assert await usernames(db) == ["u", "committed"]
    await assert_usable(db, tmp_path / "t.db")


async def test_a_cancel_during_commit_keeps_a_timeout_a_timeout(db: Database) -> None:
    held = await hold(db, "COMMIT")

    async def unit() -> None:
        async with asyncio.timeout(0.01):  # expires while the COMMIT is held
            async with db.transaction():
                await insert_user(db, "committed")
            await asyncio.sleep(1)

    task = asyncio.create_task(unit())
    await held.wait_reached()
    await asyncio.sleep(0.05)
    held.release()
    with pytest.raises(TimeoutError):
        await task
    assert await usernames(db) == ["u", "committed"]


async def test_a_failed_commit_rolls_back_and_leaves_the_connection_usable(db: Database, tmp_path: Path) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        async with db.transaction():
            # A deferred foreign key is checked at COMMIT, which then fails and leaves the transaction open.
            await db.execute("PRAGMA defer_foreign_keys = ON")
            await insert_user(db, "with-orphan")
            await db.execute("INSERT INTO sounds (user_id, filename, size, duration_ms, format, created_at) "
                             "VALUES (999, 'a.mp3', 1, 1, 'mp3', 'x')")
    assert await usernames(db) == ["u"]
    await assert_usable(db, tmp_path / "t.db")
    await db.close()  # nothing written after the failure is lost at close
    reopened = Database(tmp_path / "t.db")
    await reopened.open()
    try:
        assert await usernames(reopened) == ["u", "later-tx", "later-autocommit"]
    finally:
        await reopened.close()


async def test_event_log_rows_are_written_once_when_a_flush_is_cancelled_at_commit(db: Database) -> None:
    bus = EventBus(db, replay_events=10, replay_seconds=60)
    await bus.channel(1)
    await bus.start()
    held = await hold(db, "COMMIT")
    for i in range(500):  # a full batch wakes the log writer at once
        bus.publish(1, "chat", {"message": str(i)})
    await held.wait_reached()
    closing = asyncio.create_task(bus.close())  # cancels the writer mid-COMMIT, then writes what is left
    await asyncio.sleep(0)
    held.release()
    await closing
    seqs = [r[0] for r in await db.fetchall("SELECT seq FROM events ORDER BY id")]
    assert seqs == list(range(1, 501))


async def test_executed_count_is_counted_once_when_a_flush_is_cancelled_at_commit(
        db: Database, tmp_path: Path) -> None:
    store = TriggerStore(db, make_config(tmp_path))
    trigger = await store.set(1, 10, TriggerSetSchema().load(
        {"event_type": "follow", "action": "tts", "action_params": {"text_template": "x"}}))
    store.count_fired(trigger.id)
    store.count_fired(trigger.id)
    held = await hold(db, "COMMIT")
    flushing = asyncio.create_task(store.flush())
    await held.wait_reached()
    flushing.cancel()
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    await store.close()  # writes whatever is still pending
    assert await db.fetchval("SELECT executed_count FROM triggers") == 2


async def test_two_processes_starting_together_run_each_migration_step_once(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    neighbour = sqlite3.connect(path, isolation_level=None)  # e.g. the CLI, mid-way through the same upgrade
    try:
        neighbour.execute("PRAGMA journal_mode=WAL")
        neighbour.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[0]:
            neighbour.execute(statement)
        neighbour.execute("PRAGMA user_version = 1")
        starting = [Database(path), Database(path)]
        opens = [asyncio.create_task(db.open()) for db in starting]
        # A window for both to reach the write lock; the outcome must not depend on how far they got.
        await asyncio.sleep(0.3)
        neighbour.execute("COMMIT")
        await asyncio.gather(*opens)
        for db in starting:
            assert await db.fetchval("PRAGMA user_version") == len(MIGRATIONS)
            await db.close()
    finally:
        neighbour.close()


@pytest.mark.parametrize("url", ["postgresql://tt:Secr3t/part@127.0.0.1:5432/tt",
                                 "postgresql://tt:Secr3t#part@127.0.0.1:5432/tt",
                                 "postgresql://tt:Secr3t@[::1/tt"])
async def test_a_malformed_postgresql_url_fails_clearly_without_its_password(url) -> None:
    # A password with an unescaped / or # cuts the URL short: its first part is then read as the port, and
    # the parser's own message quoted it ("invalid literal for int(): 'Secr3t'") into the log.
    with pytest.raises(DatabaseUnavailable) as caught:
        await PostgresDatabase(url).open()
    assert "Secr3t" not in str(caught.value) and "percent-encode" in str(caught.value)
