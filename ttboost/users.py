"""The user record and its lookups; the token check that every authenticated route uses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .db import Database, Row


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str | None  # None for a key-only account (legacy login) not yet claimed
    password_hash: str | None
    token_version: int
    settings: dict[str, Any]
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> User:
        return cls(id=row["id"], username=row["username"], password_hash=row["password_hash"],
                   token_version=row["token_version"], settings=json.loads(row["settings"] or "{}"),
                   created_at=row["created_at"])


_COLUMNS = "id, username, password_hash, token_version, settings, created_at"


async def get_user(db: Database, user_id: int) -> User | None:
    """The user (from memory until the database changes: every token check reads it)."""
    async def load() -> User | None:
        row = await db.fetchone(f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return None if row is None else User.from_row(row)

    return await db.cached(("user", user_id), load)


async def get_user_by_name(db: Database, username: str) -> User | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM users WHERE username = ?", (username,))
    return None if row is None else User.from_row(row)
