"""One aiosqlite connection in autocommit mode, with a transaction helper that never interleaves."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Final, Hashable, Iterable, Sequence, TypeVar

import aiosqlite

from ..fileio import create_private_file, make_private_dir
from .migrations import MIGRATIONS
from .readcache import ReadCache
from .settle import settle

_LOGGER = logging.getLogger(__name__)

BUSY_TIMEOUT_MS: Final = 5000  # the CLI may write while the server runs; wait this long for its lock

# Set while the current task holds the connection inside a transaction: its statements skip the lock.
_IN_TRANSACTION: contextvars.ContextVar[bool] = contextvars.ContextVar("ttboost_db_tx", default=False)

Row = aiosqlite.Row
T = TypeVar("T")


def _create_private(path: Path) -> None:
    make_private_dir(path.parent)
    create_private_file(path)


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
        self._reads = ReadCache()

    async def open(self) -> None:
        if self.path != ":memory:":
            # Owner-only whatever the umask: it holds password hashes and licence keys.
            await asyncio.to_thread(_create_private, Path(self.path))
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        self._conn.row_factory = aiosqlite.Row
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL",
                       f"busy_timeout={BUSY_TIMEOUT_MS}"):
            await self._conn.execute(f"PRAGMA {pragma}")
        await self._migrate()
        if self.path != ":memory:":
            # Beside the real file, as SQLite puts it when the path is a symlink: a stale -shm beside the link
            # would never change, and every cached read would stay as first loaded.
            shm = await asyncio.to_thread(os.path.realpath, self.path) + "-shm"
            self._reads.open(shm)  # exists once WAL mode is on, while a connection is open

    async def close(self) -> None:
        if self._conn is not None:
            async with self._lock:
                self._reads.close()
                await self._conn.close()
                self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def _migrate(self) -> None:
        if await self.fetchval("PRAGMA user_version") >= len(MIGRATIONS):
            return  # the usual start: nothing to do, and no write lock taken
        for number, statements in enumerate(MIGRATIONS, start=1):
            async with self.transaction():
                # Read under the write lock: a CLI and a server starting together would otherwise both see
                # the old version and both run the step.
                if await self.fetchval("PRAGMA user_version") >= number:
                    continue
                for statement in statements:
                    await self.execute(statement)
                # PRAGMA takes no parameters; number is our own int.
                await self.execute(f"PRAGMA user_version = {number:d}")
            _LOGGER.info("database migrated to version %d", number)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception: for read-then-write units.

        The promise callers build on: if the block exits normally its writes are committed; if it raises,
        none of them are, and the connection is out of the transaction either way. A statement handed to the
        database thread runs even when its awaiting task is cancelled, so BEGIN, COMMIT and ROLLBACK are
        awaited to their end (a cancel that arrives meanwhile is delivered at the caller's next await,
        after the outcome is known): a COMMIT that succeeded is never reported as failed, so a caller that
        re-queues on failure never writes a row twice.
        """
        if _IN_TRANSACTION.get():
            raise RuntimeError("nested transaction")
        async with self._lock:
            token = _IN_TRANSACTION.set(True)
            try:
                try:
                    # A cancel here may still leave BEGIN running in the thread: the ROLLBACK below is
                    # queued behind it, so it undoes it.
                    await self.conn.execute("BEGIN IMMEDIATE")
                    yield
                except BaseException:
                    await self._rollback()
                    raise
                error = await settle(self.conn.execute("COMMIT"))
                if error is not None:  # disk full, I/O error, a deferred constraint: some leave it open
                    await self._rollback()
                    raise error
            finally:
                _IN_TRANSACTION.reset(token)

    async def _rollback(self) -> None:
        error = await settle(self.conn.execute("ROLLBACK"))
        # "no transaction is active": BEGIN never ran, or SQLite already rolled back (e.g. disk full).
        if error is not None and self.conn.in_transaction:
            _LOGGER.error("database: ROLLBACK failed, the connection is still in a transaction: %s", error)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """Inside a transaction: a statement that fails here is undone alone and the transaction goes on."""
        if not _IN_TRANSACTION.get():
            raise RuntimeError("savepoint outside a transaction")
        await self.conn.execute("SAVEPOINT ttboost_sp")
        try:
            yield
        except BaseException:
            await asyncio.shield(self.conn.execute("ROLLBACK TO ttboost_sp"))
            await asyncio.shield(self.conn.execute("RELEASE ttboost_sp"))
            raise
        await self.conn.execute("RELEASE ttboost_sp")

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

    async def cached(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """`load()`'s value, reused until the next commit to the database (by this process or another).

        For hot reads whose rows rarely change (the account behind a token, its plan). Inside a transaction
        the cache is bypassed: the transaction's own uncommitted writes do not move the counter.
        """
        return await self._reads.get(key, load, bypass=_IN_TRANSACTION.get())

    async def backup(self, target: Path | str) -> None:
        """SQLite online backup into a new file (consistent while the server writes)."""
        async with self._turn():
            await asyncio.to_thread(create_private_file, Path(target))  # a copy of the hashes: owner-only
            dest = await aiosqlite.connect(str(target))
            try:
                await self.conn.backup(dest)
            finally:
                await dest.close()

