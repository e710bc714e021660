"""PostgreSQL through an asyncpg pool, behind the same methods as the SQLite Database (cluster mode, SPEC §11)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
from contextlib import asynccontextmanager, nullcontext
from typing import Any, AsyncIterator, Awaitable, Callable, Final, Hashable, Iterable, Sequence, TypeVar
from urllib.parse import urlsplit

import asyncpg

from . import dialect
from .migrations import MIGRATIONS
from .settle import settle

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

POOL_MAX: Final = 10  # connections per process; PostgreSQL's default limit is 100 for the whole cluster
SECRET_BYTES: Final = 48  # as security.load_or_create_secret
CONNECT_TIMEOUT: Final = 10.0  # seconds for one connection attempt; start-up fails clearly after it
QUERY_TIMEOUT: Final = 30.0  # seconds one statement may take ([storage] query_timeout_seconds)
POOL_TIMEOUT: Final = 10.0  # seconds to wait for a pooled connection, connecting included ([storage] pool_timeout_seconds)
# A schema step may rewrite or index a large table: far longer than a request's statement, still not for ever.
MIGRATION_TIMEOUT: Final = 3600.0  # seconds
# Every write unit takes this transaction-scoped advisory lock first: PostgreSQL's stand-in for SQLite's
# BEGIN IMMEDIATE, so read-then-write units (redeem, issue-web, trigger and sound quotas) stay race-free
# across every worker of the cluster exactly as they are across the tasks of one process.
WRITE_LOCK: Final = 0x7474_6273  # "ttbs"; any constant no other program on the database uses

_BEGIN: Final = "BEGIN ISOLATION LEVEL READ COMMITTED"
_BEGIN_READ_ONLY: Final = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

# The connection of the transaction the current task is in; its statements go there, not to the pool.
_TX_CONN: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar("ttboost_pg_tx", default=None)


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached or refused us at start; the message holds no password."""


class DatabaseTimeout(TimeoutError):
    """PostgreSQL did not answer in time (a lock held too long, a dead or partitioned server): the statement
    was cancelled, or no pooled connection came free. A request answers 500, as for any database error."""


def _where(url: str) -> str:
    """host[:port]/database of a URL, for messages: the user and password stay out of logs."""
    parts = urlsplit(url)
    host = parts.hostname or dict(p.partition("=")[::2] for p in parts.query.split("&")).get("host", "localhost")
    return f"{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on hand-back, after its own ROLLBACK of a transaction left open: nothing more. Its
    default (UNLISTEN, RESET ALL, pg_advisory_unlock_all, CLOSE ALL) is one more round trip after every
    statement, and undoes nothing here: no session setting, listener, cursor or session lock is ever taken."""


_SECRETS_TABLE: Final = "CREATE TABLE IF NOT EXISTS cluster_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)"


class PostgresDatabase:
    """A pool of asyncpg connections; statements are written in SQLite's dialect and translated (dialect.py)."""

    def __init__(self, url: str, *, query_timeout: float = QUERY_TIMEOUT, pool_timeout: float = POOL_TIMEOUT) -> None:
        self.url = url
        self._query_timeout = query_timeout
        self._pool_timeout = pool_timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            # command_timeout bounds every statement: without it one that waits on a dead server (no RST ever
            # comes through a partition) holds its request, and its pooled connection, for ever.
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT,
                                                   command_timeout=self._query_timeout, reset=_keep_session)
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
        # The write lock also keeps two workers from migrating at once: one waits while the other migrates.
        async with self.transaction(lock_timeout=MIGRATION_TIMEOUT):
            version = await self.schema_version()
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number <= version:
                    continue
                for statement in statements:
                    await self._execute_within(MIGRATION_TIMEOUT, dialect.ddl(statement))
                await self.execute("DELETE FROM schema_version")
                await self.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                _LOGGER.info("database migrated to version %d", number)

    async def _execute_within(self, timeout: float | None, sql: str, *args: Any) -> None:
        """One statement (in PostgreSQL's dialect) with its own time limit; None: query_timeout."""
        async with self._conn() as conn:
            await conn.execute(sql, *args, timeout=timeout)

    @asynccontextmanager
    async def transaction(self, *, read_only: bool = False,
                          lock_timeout: float | None = None) -> AsyncIterator[None]:
        """One connection, BEGIN … COMMIT under the cluster-wide write lock, ROLLBACK on any exception.

        The promise is SQLite's (database.py): if the block exits normally its writes are committed; if it
        raises, none of them are. BEGIN, COMMIT and ROLLBACK run to their end even under a cancel (which then
        reaches the caller at its next await): asyncpg's own Transaction would have the server cancel a COMMIT
        in flight and raise CancelledError whether or not it had committed, and a caller that re-queues its
        rows on failure would write them twice. A COMMIT that gets no answer (it timed out, the connection
        was lost) is settled by asking the server, on another connection, what became of the transaction; only
        when that cannot be learnt either is it reported as failed, though it may have committed.

        read_only: a REPEATABLE READ snapshot without the lock (backups and copies read one moment).
        lock_timeout: seconds to wait for the write lock; None: query_timeout, as any statement.
        """
        if _TX_CONN.get() is not None:
            raise RuntimeError("nested transaction")
        async with self._pooled() as conn:
            token = _TX_CONN.set(conn)
            try:
                xid = None
                try:
                    await self._settled(conn, _BEGIN_READ_ONLY if read_only else _BEGIN)
                    if not read_only:
                        async with self._conn() as locked:
                            # Its id too, in the same round trip: what an unanswered COMMIT is asked about.
                            xid = await locked.fetchval("SELECT txid_current() FROM pg_advisory_xact_lock($1)",
                                                        WRITE_LOCK, timeout=lock_timeout)
                    yield
                except BaseException:
                    await self._rollback(conn)
                    raise
                # A COMMIT that failed has ended the transaction: nothing to undo.
                error = await settle(self._control(conn, "COMMIT"))
                if error is not None and not await self._committed_after_all(error, xid):
                    raise self._timed_out(error)
            finally:
                _TX_CONN.reset(token)

    async def _control(self, conn: asyncpg.Connection, sql: str) -> None:
        """Runs BEGIN, COMMIT, ROLLBACK and the savepoint statements (fault tests hold some of them here)."""
        await conn.execute(sql)

    async def _settled(self, conn: asyncpg.Connection, sql: str) -> None:
        """A control statement run to its end whatever cancels arrive meanwhile (settle.py); raises its error."""
        error = await settle(self._control(conn, sql))
        if error is not None:
            raise self._timed_out(error)

    async def _committed_after_all(self, error: BaseException, xid: int | None) -> bool:
        """Whether a COMMIT that raised `error` committed all the same: PostgreSQL's answer, when none came."""
        if xid is None or isinstance(error, asyncpg.PostgresError):
            return False  # the server answered: that COMMIT failed
        try:
            async with self._pooled() as conn:
                status = await conn.fetchval("SELECT txid_status($1)", xid)
        except Exception as exc:  # the server is still away: the outcome stays unknown
            _LOGGER.error("database: a COMMIT got no answer (%s), nor did the question whether it committed (%s)",
                          self._timed_out(error), self._timed_out(exc))
            return False
        # "in progress": its backend is still at it (it has not yet noticed that we gave up), and the COMMIT may
        # yet land: that stays unknown, and is reported as a failure.
        _LOGGER.warning("database: a COMMIT got no answer (%s); PostgreSQL says the transaction %s",
                        self._timed_out(error), "committed" if status == "committed" else f"is {status}")
        return status == "committed"

    async def _rollback(self, conn: asyncpg.Connection) -> None:
        try:
            await self._settled(conn, "ROLLBACK")  # "no transaction in progress" is only a warning
        except Exception as exc:
            # The pool resets the connection when it comes back (ROLLBACK again), or closes it if that fails.
            _LOGGER.error("database: ROLLBACK failed: %s", exc)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """Inside a transaction: a statement that fails here is undone alone and the transaction goes on."""
        conn = _TX_CONN.get()
        if conn is None:
            raise RuntimeError("savepoint outside a transaction")
        await self._settled(conn, "SAVEPOINT ttboost_sp")
        try:
            yield
        except BaseException:
            await self._settled(conn, "ROLLBACK TO SAVEPOINT ttboost_sp")
            await self._settled(conn, "RELEASE SAVEPOINT ttboost_sp")
            raise
        await self._settled(conn, "RELEASE SAVEPOINT ttboost_sp")

    @asynccontextmanager
    async def _pooled(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            conn = await self.pool.acquire(timeout=self._pool_timeout)
        except TimeoutError:
            raise DatabaseTimeout(f"no PostgreSQL connection came free within {self._pool_timeout:g} s "
                                  f"({_where(self.url)})") from None
        try:
            yield conn
        finally:
            # Handed back (reset, or closed if that fails) to its end, keeping a cancel for the caller's next
            # await: a transaction whose COMMIT worked must not then raise CancelledError on its way out.
            error = await settle(self.pool.release(conn))
            if error is not None:
                _LOGGER.error("database: a connection could not be handed back to the pool: %s", error)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection for one statement: the current transaction's, or one from the pool."""
        tx = _TX_CONN.get()
        async with nullcontext(tx) if tx is not None else self._pooled() as conn:
            try:
                yield conn
            except TimeoutError as exc:  # the statement's own command_timeout: it is one statement's block
                raise self._timed_out(exc) from None

    def _timed_out(self, error: BaseException) -> BaseException:
        """asyncpg's bare TimeoutError of a statement as a DatabaseTimeout that says what and where."""
        if isinstance(error, TimeoutError) and not isinstance(error, DatabaseTimeout):
            return DatabaseTimeout(f"PostgreSQL did not answer within {self._query_timeout:g} s ({_where(self.url)})")
        return error

    async def shared_secret(self, name: str) -> str:
        """A generated secret every worker reads alike (no shared disk for data/*.secret), made once.

        Kept beside, not in, the numbered schema: SQLite keeps these as files, and backups leave them out.
        """
        async with self.transaction():
            await self.execute(_SECRETS_TABLE)
            value = await self.fetchval("SELECT value FROM cluster_secrets WHERE name = ?", (name,))
            if value is None:
                value = secrets.token_urlsafe(SECRET_BYTES)
                await self.execute("INSERT INTO cluster_secrets (name, value) VALUES (?, ?)", (name, value))
        return str(value)

    async def set_shared_secret(self, name: str, value: str) -> None:
        """`db import`: the secret of the SQLite server being moved here, so that its tokens stay valid."""
        async with self.transaction():
            await self.execute(_SECRETS_TABLE)
            await self.execute("INSERT INTO cluster_secrets (name, value) VALUES (?, ?) "
                               "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))

    async def cached(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """Always `load()` (one round trip, ~0.2 ms): other workers and the CLI commit too, and PostgreSQL has
        no change counter like SQLite's WAL index that a worker could read for free to tell when a remembered
        row went stale. A message after the commit (NATS `ttboost.changes`, or LISTEN/NOTIFY) would still leave
        a window in which another worker accepts a revoked token or licence, and the CLI sends none."""
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
