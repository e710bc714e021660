"""Database.cached: a read is reused until any commit, by this connection or another process's; on PostgreSQL,
a change committed through one worker is seen through every other at once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers import bearer, make_user
from ttboost import keys
from ttboost.db import Database


async def test_reads_are_reused_until_a_commit_from_anywhere(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    await db.open()
    loads: list[int] = []

    async def load() -> int:
        loads.append(1)
        return int(await db.fetchval("SELECT COUNT(*) FROM users"))

    try:
        assert [await db.cached("n", load) for _ in range(3)] == [0, 0, 0] and len(loads) == 1
        await db.execute("INSERT INTO users (username, created_at) VALUES ('a', 'now')")  # this connection
        assert await db.cached("n", load) == 1 and len(loads) == 2
        other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)  # another process's, as the CLI's
        other.execute("INSERT INTO users (username, created_at) VALUES ('b', 'now')")
        other.close()
        assert await db.cached("n", load) == 2 and len(loads) == 3
        other = sqlite3.connect(tmp_path / "t.db")
        assert other.execute("SELECT COUNT(*) FROM users").fetchone() == (2,)  # a read moves nothing
        other.close()
        assert await db.cached("n", load) == 2 and len(loads) == 3
        async with db.transaction():  # uncommitted writes are not behind the counter: no cache inside
            await db.execute("INSERT INTO users (username, created_at) VALUES ('c', 'now')")
            assert await db.cached("n", load) == 3
        assert await db.cached("n", load) == 3
    finally:
        await db.close()


async def test_an_in_memory_database_is_never_cached() -> None:
    db = Database(":memory:")
    await db.open()
    loads: list[int] = []

    async def load() -> None:
        loads.append(1)

    try:
        for _ in range(2):
            await db.cached("k", load)
        assert len(loads) == 2
    finally:
        await db.close()


async def test_a_database_reached_through_a_symlink_is_keyed_on_the_files_sqlite_uses(tmp_path: Path) -> None:
    # SQLite keeps -wal and -shm beside the symlink's target. A -shm left beside the link (the database moved
    # after a crash, a link put in its place) never changes: keyed on it, a cached account would never reload,
    # and a changed password or a revoked licence would not reach the server.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").mkdir()
    sqlite3.connect(tmp_path / "real" / "t.db").close()
    (tmp_path / "link" / "t.db").symlink_to(tmp_path / "real" / "t.db")
    (tmp_path / "link" / "t.db-shm").write_bytes(b"\x01" * 32768)
    db = Database(tmp_path / "link" / "t.db")
    await db.open()

    async def load() -> int:
        return int(await db.fetchval("SELECT COUNT(*) FROM users"))

    try:
        assert await db.cached("n", load) == 0
        other = sqlite3.connect(tmp_path / "real" / "t.db", isolation_level=None)  # the CLI, by the real path
        other.execute("INSERT INTO users (username, created_at) VALUES ('b', 'now')")
        other.close()
        assert await db.cached("n", load) == 1
    finally:
        await db.close()


@pytest.mark.both_backends
async def test_a_change_committed_through_another_worker_is_seen_at_once(make_client) -> None:
    # Two workers on one database, and no message between them: what worker A read before worker B committed
    # must not be served after. (PostgreSQL has no change counter a worker could read for free, so
    # PostgresDatabase.cached loads every time; the NATS change feed arrives only after the commit.)
    a, b = await make_client(), await make_client()
    user_id, token = await make_user(a.app)

    async def me_on_a() -> tuple[int, bool | None]:
        resp = await a.get("/v2/auth/me", headers=bearer(token))
        return resp.status, (await resp.json()).get("license_active")

    assert [await me_on_a() for _ in range(2)] == [(200, True), (200, True)]
    await b.app[keys.DB].execute("UPDATE licenses SET status = 'revoked' WHERE user_id = ?", (user_id,))
    assert await me_on_a() == (200, False)
    # What a password change does (token_version + 1): the old token stops working on A at once.
    await b.app[keys.DB].execute("UPDATE users SET token_version = token_version + 1 WHERE id = ?", (user_id,))
    assert await me_on_a() == (401, None)
