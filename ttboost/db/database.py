"""One aiosqlite connection in autocommit mode, with a transaction helper that never interleaves."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Final, Iterable, Sequence

import aiosqlite

from .migrations import MIGRATIONS

_LOGGER = logging.getLogger(__name__)

BUSY_TIMEOUT_MS: Final = 5000  # the CLI may write while the server runs; wait this long for its lock

# Set while the current task holds the connection inside a transaction: its statements skip the lock.
_IN_TRANSACTION: contextvars.ContextVar[bool] = contextvars.ContextVar("ttboost_db_tx", default=False)

Row = aiosqlite.Row


class Database:
    """The app's one SQLite connection.

    With a single shared connection a statement issued by one task while another task has a transaction
    open would silently run inside that transaction, so every statement outside a transaction takes the
    same lock a transaction holds.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        self._conn.row_factory = aiosqlite.Row
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL",
                       f"busy_timeout={BUSY_TIMEOUT_MS}"):
            await self._conn.execute(f"PRAGMA {pragma}")
        await self._migrate()

    async def close(self) -> None:
        if self._conn is not None:
            async with self._lock:
                await self._conn.close()
                self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def _migrate(self) -> None:
        version = await self.fetchval("PRAGMA user_version")
        for number, statements in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            async with self.transaction():
                for statement in statements:
                    await self.execute(statement)
                # PRAGMA takes no parameters; number is our own int.
                await self.execute(f"PRAGMA user_version = {number:d}")
            _LOGGER.info("database migrated to version %d", number)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception: for read-then-write units."""
        if _IN_TRANSACTION.get():
            raise RuntimeError("nested transaction")
        async with self._lock:
            token = _IN_TRANSACTION.set(True)
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    await asyncio.shield(self.conn.execute("ROLLBACK"))
                    raise
                await asyncio.shield(self.conn.execute("COMMIT"))
            finally:
                _IN_TRANSACTION.reset(token)

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if _IN_TRANSACTION.get():
            yield
        else:
            async with self._lock:
                yield

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement; returns lastrowid for INSERT, else the number of changed rows."""
        async with self._turn():
            cursor = await self.conn.execute(sql, params)
            try:
                return cursor.lastrowid if sql.lstrip()[:6].upper() == "INSERT" else cursor.rowcount
            finally:
                await cursor.close()

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._turn():
            await self.conn.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        # execute_fetchall is one trip to the database thread; execute + fetch + close would be three, and
        # on a small VPS each trip (a cross-core wake-up) costs more than the query itself.
        async with self._turn():
            return list(await self.conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def backup(self, target: Path | str) -> None:
        """SQLite online backup into a new file (consistent while the server writes)."""
        async with self._turn():
            dest = await aiosqlite.connect(str(target))
            try:
                await self.conn.backup(dest)
            finally:
                await dest.close()
