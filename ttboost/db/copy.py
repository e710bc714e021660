"""Every row of one database into another, SQLite ↔ PostgreSQL: the move to PostgreSQL and its backups.

Tables go in creation order (parents before children), each in id/rowid order so that SQLite's implicit rowid
order (sounds are listed by it) survives the trip; ids keep their values and the id counters their high-water
marks, so an id handed out once is never handed out again (AUTOINCREMENT's promise) on either side.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import Final

from . import dialect
from .database import Database
from .postgres import PostgresDatabase

_LOGGER = logging.getLogger(__name__)

PAGE_ROWS: Final = 2000  # rows read and written per round trip; bounds memory whatever the table's size


def _snapshot(db: Database | PostgresDatabase) -> AbstractAsyncContextManager[None]:
    """One consistent moment of the source: a read-only snapshot on PostgreSQL, the write lock on SQLite."""
    if isinstance(db, PostgresDatabase):
        return db.transaction(read_only=True)
    return db.transaction()


async def _high_water(db: Database | PostgresDatabase, table: str) -> int:
    """The largest id the table has handed out: its counter (deleted rows included) or its largest id."""
    largest = int(await db.fetchval(f"SELECT COALESCE(MAX(id), 0) FROM {table}"))
    if isinstance(db, PostgresDatabase):
        sequence = await db.fetchval("SELECT pg_get_serial_sequence(?, 'id')", (table,))
        # The name comes from the catalogue, quoted by PostgreSQL itself.
        counter = await db.fetchval(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}")
    else:  # only AUTOINCREMENT tables have a counter row
        counter = await db.fetchval("SELECT MAX(seq) FROM sqlite_sequence WHERE name = ?", (table,))
    return max(largest, int(counter or 0))


async def _set_high_water(db: Database | PostgresDatabase, table: str, value: int) -> None:
    if value <= 0:
        return
    if isinstance(db, PostgresDatabase):
        await db.fetchval("SELECT setval(pg_get_serial_sequence(?, 'id')::regclass, ?)", (table, value))
        return
    # Tables with a plain INTEGER PRIMARY KEY have no counter row: their next id is MAX(id) + 1 anyway.
    await db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?", (value, table))


async def copy_database(source: Database | PostgresDatabase, target: Database | PostgresDatabase) -> dict[str, int]:
    """Copies every row of source into target (open, migrated, empty); returns rows copied per table."""
    if isinstance(source, PostgresDatabase) == isinstance(target, PostgresDatabase):
        raise ValueError("copy goes between SQLite and PostgreSQL (use backup or pg_dump within one kind)")
    tables = dialect.table_definitions()
    for table, _ in tables:
        if await target.fetchval(f"SELECT 1 FROM {table} LIMIT 1"):
            raise ValueError(f"the target database is not empty (table {table} has rows)")
    ids = dialect.id_tables()
    copied: dict[str, int] = {}
    async with _snapshot(source), target.transaction():
        for table, _ in tables:
            order = "id" if table in ids else "rowid"
            count, last = 0, None
            while True:
                # Pages by the ordering key: the snapshot holds still, so no row is seen twice or missed.
                where, params = ("", ()) if last is None else (f" WHERE {order} > ?", (last,))
                rows = await source.fetchall(
                    f"SELECT *, {order} AS copy_key FROM {table}{where} ORDER BY {order} LIMIT {PAGE_ROWS}", params)
                if not rows:
                    break
                columns = [name for name in rows[0].keys() if name not in ("rowid", "copy_key")]
                await target.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    [tuple(row[name] for name in columns) for row in rows])
                count += len(rows)
                last = rows[-1]["copy_key"]
            if table in ids:
                await _set_high_water(target, table, await _high_water(source, table))
            copied[table] = count
    _LOGGER.info("database copied: %s", ", ".join(f"{t} {n}" for t, n in copied.items()))
    return copied
