"""Holding one database statement until the test lets it go: a slow disk or a busy server at exactly that point.

SQLite: the connection's trace callback, which runs in the database thread just before the statement executes.
PostgreSQL: a COMMIT is held in the server itself (a deferred constraint trigger waits for an advisory lock the
test holds), so it is really in flight when the cancel comes; BEGIN and ROLLBACK, which run no trigger, are held
at PostgresDatabase's own seam for them (`_control`), never inside asyncpg.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Protocol

import asyncpg

from tests.helpers import eventually
from ttboost.db import AnyDatabase, Database, PostgresDatabase

WAIT: float = 10.0  # seconds a held statement waits at most before it goes on anyway
COMMIT_LOCK: int = 0x7474_4843  # the advisory lock a held COMMIT waits for ("ttHC"; not the write lock)
HELD_TABLES: tuple[str, ...] = ("users", "events", "triggers")  # a COMMIT after writing one of these is held


class Hold(Protocol):
    async def wait_reached(self) -> None: ...

    async def release(self) -> None: ...


class TraceHold:
    """SQLite: holds the database thread as it starts `sql`."""

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

    async def release(self) -> None:
        self._go.set()


class SeamHold:
    """PostgreSQL: holds the first `sql` at HeldPostgres._control, before it is sent."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.reached = asyncio.Event()
        self._go = asyncio.Event()

    async def wait(self) -> None:
        self.reached.set()
        await asyncio.wait_for(self._go.wait(), WAIT)

    async def wait_reached(self) -> None:
        await asyncio.wait_for(self.reached.wait(), WAIT)

    async def release(self) -> None:
        self._go.set()


class HeldPostgres(PostgresDatabase):
    """PostgresDatabase whose control statements (BEGIN, COMMIT, ROLLBACK, savepoints) a test can hold."""

    seam: SeamHold | None = None

    async def _control(self, conn: asyncpg.Connection, sql: str) -> None:
        seam = self.seam
        if seam is not None and sql.startswith(seam.sql):
            self.seam = None
            await seam.wait()
        await super()._control(conn, sql)


class CommitHold:
    """PostgreSQL: the next COMMIT of a transaction that wrote to HELD_TABLES waits, in the server, for a lock
    this test's own connection holds."""

    def __init__(self, admin: asyncpg.Connection) -> None:
        self._admin = admin

    @classmethod
    async def arm(cls, db: PostgresDatabase) -> CommitHold:
        admin = await asyncpg.connect(db.url)
        await admin.execute(f"""CREATE OR REPLACE FUNCTION ttboost_test_hold() RETURNS trigger AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared({COMMIT_LOCK}); RETURN NULL; END $$ LANGUAGE plpgsql""")
        for table in HELD_TABLES:
            await admin.execute(f"DROP TRIGGER IF EXISTS ttboost_test_hold ON {table}")
            await admin.execute(f"CREATE CONSTRAINT TRIGGER ttboost_test_hold AFTER INSERT OR UPDATE ON {table} "
                                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ttboost_test_hold()")
        await admin.execute("SELECT pg_advisory_lock($1)", COMMIT_LOCK)
        return cls(admin)

    async def _waiting(self) -> int:
        return int(await self._admin.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND (classid::bigint << 32) + objid::bigint = $1", COMMIT_LOCK))

    async def wait_reached(self) -> None:
        await eventually(self._waiting, lambda n: n > 0, timeout=WAIT)

    async def release(self) -> None:
        try:
            await self._admin.execute("SELECT pg_advisory_unlock($1)", COMMIT_LOCK)
        finally:
            await self._admin.close()


async def hold(db: AnyDatabase, sql: str) -> Hold:
    """Holds the next `sql` (BEGIN…, COMMIT or ROLLBACK) of `db` until the returned hold is released."""
    if isinstance(db, Database):
        held = TraceHold("BEGIN IMMEDIATE" if sql == "BEGIN" else sql)
        await db.conn.set_trace_callback(held)
        return held
    if sql == "COMMIT":
        return await CommitHold.arm(db)
    assert isinstance(db, HeldPostgres)
    db.seam = SeamHold(sql)
    return db.seam
