"""PostgreSQL through an asyncpg pool, behind the same methods as the SQLite Database (cluster mode, SPEC §11)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Final, Hashable, Iterable, Sequence, TypeVar
from urllib.parse import urlsplit

import asyncpg

from . import dialect
from .migrations import MIGRATIONS

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

POOL_MAX: Final = 10  # connections per process; PostgreSQL's default limit is 100 for the whole cluster
SECRET_BYTES: Final = 48  # as security.load_or_create_secret
CONNECT_TIMEOUT: Final = 10.0  # seconds for one connection attempt; start-up fails clearly after it
# Every write unit takes this transaction-scoped advisory lock first: PostgreSQL's stand-in for SQLite's
# BEGIN IMMEDIATE, so read-then-write units (redeem, issue-web, trigger and sound quotas) stay race-free
# across every worker of the cluster exactly as they are across the tasks of one process.
WRITE_LOCK: Final = 0x7474_6273  # "ttbs"; any constant no other program on the database uses

# The connection of the transaction the current task is in; its statements go there, not to the pool.
_TX_CONN: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar("ttboost_pg_tx", default=None)


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached or refused us at start; the message holds no password."""


def _where(url: str) -> str:
    """host[:port]/database of a URL, for messages: the user and password stay out of logs."""
    parts = urlsplit(url)
    host = parts.hostname or dict(p.partition("=")[::2] for p in parts.query.split("&")).get("host", "localhost")
    return f"{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


class PostgresDatabase:
    """A pool of asyncpg connections; statements are written in SQLite's dialect and translated (dialect.py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"cannot open PostgreSQL at {_where(self.url)}: "
                                      f"{str(exc).replace(self.url, '…') or type(exc).__name__}") from None
        except ValueError:  # (asyncpg's ClientConfigurationError, also a ValueError, is answered above)
            # The URL could not be parsed. Its text stays out: a password with an unescaped / or # cuts the URL
            # short and its first part is read as the port, which the parser's message then quotes.
            raise DatabaseUnavailable("cannot open PostgreSQL: storage.database_url is malformed (percent-encode "
                                      "/ # ? @ : and % in the user name and password)") from None
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    async def schema_version(self) -> int:
        await self.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        return int(await self.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

    async def _migrate(self) -> None:
        async with self.transaction():  # the write lock also keeps two workers from migrating at once
            version = await self.schema_version()
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number <= version:
                    continue
                for statement in statements:
                    await self.execute(dialect.ddl(statement))
                await self.execute("DELETE FROM schema_version")
                await self.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                _LOGGER.info("database migrated to version %d", number)

    @asynccontextmanager
    async def transaction(self, *, read_only: bool = False) -> AsyncIterator[None]:
        """One connection, BEGIN … COMMIT under the cluster-wide write lock, ROLLBACK on any exception.

        read_only: a REPEATABLE READ snapshot without the lock (backups and copies read one moment).
        """
        if _TX_CONN.get() is not None:
            raise RuntimeError("nested transaction")
        async with self.pool.acquire() as conn:
            tx = conn.transaction(isolation="repeatable_read" if read_only else "read_committed",
                                  readonly=read_only)
            token = _TX_CONN.set(conn)
            try:
                # asyncpg's Transaction rolls back on any exception, cancellation included, and a failed
                # COMMIT raises here: nothing half-done stays behind on the pooled connection.
                async with tx:
                    if not read_only:
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                    yield
            finally:
                _TX_CONN.reset(token)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """Inside a transaction: a statement that fails here is undone alone and the transaction goes on."""
        conn = _TX_CONN.get()
        if conn is None:
            raise RuntimeError("savepoint outside a transaction")
        async with conn.transaction():  # nested asyncpg transaction = SAVEPOINT … RELEASE / ROLLBACK TO
            yield

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        conn = _TX_CONN.get()
        if conn is not None:
            yield conn
        else:
            async with self.pool.acquire() as pooled:
                yield pooled

    async def shared_secret(self, name: str) -> str:
        """A generated secret every worker reads alike (no shared disk for data/*.secret), made once.

        Kept beside, not in, the numbered schema: SQLite keeps these as files, and backups leave them out.
        """
        async with self.transaction():
            await self.execute("CREATE TABLE IF NOT EXISTS cluster_secrets "
                               "(name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            value = await self.fetchval("SELECT value FROM cluster_secrets WHERE name = ?", (name,))
            if value is None:
                value = secrets.token_urlsafe(SECRET_BYTES)
                await self.execute("INSERT INTO cluster_secrets (name, value) VALUES (?, ?)", (name, value))
        return str(value)

    async def cached(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """Always `load()`: other workers commit too, and PostgreSQL has no cheap change counter like SQLite's
        WAL index to tell when a remembered row went stale (a revocation must reach every worker at once)."""
        return await load()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement; returns the new id for an INSERT into an id table, else the changed rows."""
        async with self._conn() as conn:
            if dialect.returns_id(sql):
                return int(await conn.fetchval(dialect.query(sql) + " RETURNING id", *params))
            status = await conn.execute(dialect.query(sql), *params)
        tail = status.rsplit(" ", 1)[-1]  # "UPDATE 3", "INSERT 0 1", "DELETE 0"
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._conn() as conn:
            await conn.executemany(dialect.query(sql), list(rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            return list(await conn.fetch(dialect.query(sql), *params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> asyncpg.Record | None:
        async with self._conn() as conn:
            return await conn.fetchrow(dialect.query(sql), *params)

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._conn() as conn:
            return await conn.fetchval(dialect.query(sql), *params)
