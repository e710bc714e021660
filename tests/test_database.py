"""The transaction helper under faults, on SQLite and PostgreSQL: a cancel at BEGIN, in the body, at COMMIT and
a failed COMMIT each leave the connection out of any transaction, with nothing written twice; migrations run
each step once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import AsyncIterator

import asyncpg
import pytest

from tests.db_holds import HeldPostgres, hold
from tests.helpers import eventually
from ttboost.db import AnyDatabase, Database, DatabaseUnavailable, IntegrityError, PostgresDatabase
from ttboost.db.postgres import WRITE_LOCK
from ttboost.db.migrations import MIGRATIONS
from ttboost.pipeline.bus import EventBus
from ttboost.triggers import TriggerStore
from ttboost.trigger_schemas import TriggerSetSchema
from tests.conftest import make_config

@pytest.fixture
async def db(tmp_path: Path, database_url: str) -> AsyncIterator[AnyDatabase]:
    """A database holding one user (id 1), on SQLite or, for tests marked both_backends, on PostgreSQL."""
    db = HeldPostgres(database_url) if database_url else Database(tmp_path / "t.db")
    await db.open()
    await db.execute("INSERT INTO users (username, created_at) VALUES ('u', 'x')")
    yield db
    await db.close()


def reopened(db: AnyDatabase) -> AnyDatabase:
    """Another handle on the same database: another process's connection."""
    return PostgresDatabase(db.url) if isinstance(db, PostgresDatabase) else Database(db.path)


async def insert_user(db: AnyDatabase, name: str) -> None:
    await db.execute("INSERT INTO users (username, created_at) VALUES (?, 'x')", (name,))


async def usernames(db: AnyDatabase) -> list[str]:
    return [r[0] for r in await db.fetchall("SELECT username FROM users ORDER BY id")]


async def in_transaction(db: AnyDatabase) -> bool:
    """Whether a connection of db is left inside a transaction (PostgreSQL: any backend on this database)."""
    if isinstance(db, Database):
        return db.conn.in_transaction
    return bool(await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND state LIKE 'idle in transaction%'"))


async def assert_usable(db: AnyDatabase) -> None:
    """Out of any transaction: a new transaction works, and an autocommit write is seen by others at once."""
    assert not await in_transaction(db)
    async with db.transaction():
        await insert_user(db, "later-tx")
    await insert_user(db, "later-autocommit")
    other = reopened(db)
    await other.open()
    try:
        seen = await usernames(other)
    finally:
        await other.close()
    assert [name for name in seen if name.startswith("later-")] == ["later-tx", "later-autocommit"]


async def defer_foreign_keys(db: AnyDatabase) -> None:
    """Inside a transaction: its foreign keys are checked at COMMIT, which then fails."""
    if isinstance(db, Database):
        await db.execute("PRAGMA defer_foreign_keys = ON")
        return
    for (name,) in await db.fetchall("SELECT conname FROM pg_constraint WHERE conrelid = 'sounds'::regclass "
                                     "AND contype = 'f'"):
        await db.execute(f"ALTER TABLE sounds ALTER CONSTRAINT {name} DEFERRABLE INITIALLY DEFERRED")


@pytest.mark.both_backends
async def test_a_cancel_during_begin_rolls_back(db: AnyDatabase) -> None:
    held = await hold(db, "BEGIN")
    body_ran = False

    async def unit() -> None:
        nonlocal body_ran
        async with db.transaction():
            body_ran = True
            await insert_user(db, "never")

    task = asyncio.create_task(unit())
    await held.wait_reached()
    task.cancel()  # BEGIN is already on its way: it still runs after the cancel
    await held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not body_ran and await usernames(db) == ["u"]
    await assert_usable(db)


async def test_a_cancel_while_waiting_for_the_cluster_write_lock_rolls_back(pg_url: str) -> None:
    # PostgreSQL's stand-in for BEGIN IMMEDIATE is an advisory lock taken after BEGIN: another worker holds it.
    db = PostgresDatabase(pg_url)
    await db.open()
    other = await asyncpg.connect(pg_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK)

        async def unit() -> None:
            async with db.transaction():
                await insert_user(db, "never")

        task = asyncio.create_task(unit())
        await eventually(lambda: other.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                                "AND NOT granted"), lambda n: n == 1, timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await other.execute("SELECT pg_advisory_unlock($1)", WRITE_LOCK)
        assert await usernames(db) == []
        await assert_usable(db)
    finally:
        await other.close()
        await db.close()


@pytest.mark.both_backends
async def test_a_cancel_in_the_body_and_again_during_rollback_rolls_back(db: AnyDatabase) -> None:
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
    await held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await usernames(db) == ["u"]
    await assert_usable(db)


@pytest.mark.both_backends
async def test_a_cancel_during_commit_waits_for_it_and_the_block_counts_as_committed(db: AnyDatabase) -> None:
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
    await held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after_block == ["committed"]
    assert await usernames(db) == ["u", "committed"]
    await assert_usable(db)


@pytest.mark.both_backends
async def test_a_cancel_during_commit_keeps_a_timeout_a_timeout(db: AnyDatabase) -> None:
    held = await hold(db, "COMMIT")
    expired = asyncio.Event()

    async def unit() -> None:
        try:
            async with asyncio.timeout(0.01):  # expires while the COMMIT is held
                async with db.transaction():
                    await insert_user(db, "committed")
                await asyncio.sleep(1)
        finally:
            expired.set()

    task = asyncio.create_task(unit())
    await held.wait_reached()
    await asyncio.sleep(0.05)
    assert not expired.is_set()  # the COMMIT is still held: the timeout has not ended the block
    await held.release()
    with pytest.raises(TimeoutError):
        await task
    assert await usernames(db) == ["u", "committed"]


@pytest.mark.both_backends
async def test_a_failed_commit_rolls_back_and_leaves_the_connection_usable(db: AnyDatabase) -> None:
    with pytest.raises(IntegrityError):
        async with db.transaction():
            # A deferred foreign key is checked at COMMIT, which then fails (SQLite leaves the transaction open).
            await defer_foreign_keys(db)
            await insert_user(db, "with-orphan")
            await db.execute("INSERT INTO sounds (user_id, filename, size, duration_ms, format, created_at) "
                             "VALUES (999, 'a.mp3', 1, 1, 'mp3', 'x')")
    assert await usernames(db) == ["u"]
    await assert_usable(db)
    await db.close()  # nothing written after the failure is lost at close
    again = reopened(db)
    await again.open()
    try:
        assert await usernames(again) == ["u", "later-tx", "later-autocommit"]
    finally:
        await again.close()


@pytest.mark.both_backends
async def test_event_log_rows_are_written_once_when_a_flush_is_cancelled_at_commit(db: AnyDatabase) -> None:
    bus = EventBus(db, replay_events=10, replay_seconds=60)
    await bus.channel(1)
    await bus.start()
    held = await hold(db, "COMMIT")
    for i in range(500):  # a full batch wakes the log writer at once
        bus.publish(1, "chat", {"message": str(i)})
    await held.wait_reached()
    closing = asyncio.create_task(bus.close())  # cancels the writer mid-COMMIT, then writes what is left
    await asyncio.sleep(0)
    await held.release()
    await closing
    seqs = [r[0] for r in await db.fetchall("SELECT seq FROM events ORDER BY id")]
    assert seqs == list(range(1, 501))


@pytest.mark.both_backends
async def test_executed_count_is_counted_once_when_a_flush_is_cancelled_at_commit(
        db: AnyDatabase, tmp_path: Path) -> None:
    store = TriggerStore(db, make_config(tmp_path))
    trigger = await store.set(1, 10, TriggerSetSchema().load(
        {"event_type": "follow", "action": "tts", "action_params": {"text_template": "x"}}))
    store.count_fired(trigger.id)
    store.count_fired(trigger.id)
    held = await hold(db, "COMMIT")
    flushing = asyncio.create_task(store.flush())
    await held.wait_reached()
    flushing.cancel()
    await held.release()
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


async def test_workers_starting_together_on_postgresql_run_each_migration_step_once(pg_url: str) -> None:
    # The write lock keeps the second out until the first has migrated: it then finds nothing to do (a step run
    # twice would fail on its CREATE TABLE).
    starting = [PostgresDatabase(pg_url) for _ in range(3)]
    await asyncio.gather(*(db.open() for db in starting))
    try:
        for db in starting:
            assert await db.schema_version() == len(MIGRATIONS)
    finally:
        for db in starting:
            await db.close()


@pytest.mark.parametrize("url", ["postgresql://tt:Secr3t/part@127.0.0.1:5432/tt",
                                 "postgresql://tt:Secr3t#part@127.0.0.1:5432/tt",
                                 "postgresql://tt:Secr3t@[::1/tt"])
async def test_a_malformed_postgresql_url_fails_clearly_without_its_password(url) -> None:
    # A password with an unescaped / or # cuts the URL short: its first part is then read as the port, and
    # the parser's own message quoted it ("invalid literal for int(): 'Secr3t'") into the log.
    with pytest.raises(DatabaseUnavailable) as caught:
        await PostgresDatabase(url).open()
    assert "Secr3t" not in str(caught.value) and "percent-encode" in str(caught.value)
