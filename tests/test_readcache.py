"""Database.cached: a read is reused until any commit, by this connection or another process's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
