"""Storage: SQLite (the default) or PostgreSQL (cluster mode) behind the same methods, and the schema steps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from .database import Database, Row
from .postgres import DatabaseUnavailable, PostgresDatabase

# What a failed statement raises, whichever backend ran it (a PostgreSQL connection lost mid-call included).
DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError)
# A UNIQUE, FOREIGN KEY or CHECK constraint said no.
IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError,
                                               asyncpg.IntegrityConstraintViolationError)
# A value that can never be stored (text that is not UTF-8, a number out of range, a constraint): unlike a full
# disk or a lost connection, retrying the same row cannot help.
ValueNotStorable: tuple[type[Exception], ...] = (ValueError, UnicodeError, OverflowError, *IntegrityError,
                                                 sqlite3.InterfaceError, sqlite3.ProgrammingError, asyncpg.DataError)

AnyDatabase = Database | PostgresDatabase


def make_database(postgres_url: str, sqlite_path: Path) -> AnyDatabase:
    """PostgreSQL when a URL is given (config.postgres_url), else the SQLite file (not opened yet)."""
    if postgres_url:
        return PostgresDatabase(postgres_url)
    return Database(sqlite_path)


__all__ = ["AnyDatabase", "Database", "DatabaseError", "DatabaseUnavailable", "IntegrityError", "PostgresDatabase", "Row", "ValueNotStorable", "make_database"]
