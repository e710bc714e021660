"""Storage: SQLite (the default) or PostgreSQL (cluster mode) behind the same methods, and the schema steps."""

from __future__ import annotations

import sqlite3

import asyncpg

from ..config import Config
from .database import Database, Row
from .postgres import DatabaseTimeout, DatabaseUnavailable, PostgresDatabase

# What a failed statement raises, whichever backend ran it (a PostgreSQL connection lost mid-call, or a statement
# that timed out, included).
DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError,
                                              DatabaseTimeout)
# A UNIQUE, FOREIGN KEY or CHECK constraint said no.
IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError,
                                               asyncpg.IntegrityConstraintViolationError)
# A value that can never be stored (text that is not UTF-8, a number out of range, a constraint): unlike a full
# disk or a lost connection, retrying the same row cannot help.
ValueNotStorable: tuple[type[Exception], ...] = (ValueError, UnicodeError, OverflowError, *IntegrityError,
                                                 sqlite3.InterfaceError, sqlite3.ProgrammingError, asyncpg.DataError)

AnyDatabase = Database | PostgresDatabase


def make_database(config: Config) -> AnyDatabase:
    """PostgreSQL when the config names it (config.postgres_url), else the SQLite file (not opened yet)."""
    if config.postgres_url:
        return PostgresDatabase(config.postgres_url, query_timeout=config.storage.query_timeout_seconds,
                                pool_timeout=config.storage.pool_timeout_seconds)
    return Database(config.database_path)


__all__ = ["AnyDatabase", "Database", "DatabaseError", "DatabaseTimeout", "DatabaseUnavailable", "IntegrityError", "PostgresDatabase", "Row", "ValueNotStorable", "make_database"]
