"""Overlay keys: one per user, rotated by issuing a new one, revocable; the database keeps only their hash."""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Final, Iterable

from ..db import Database
from ..timeutil import iso, utcnow

KEY_BYTES: Final = 24  # 192 bits from secrets: the URL is the only credential an OBS browser source can carry
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{32}")  # token_urlsafe(24): 32 characters


def digest(key: str) -> str:
    # A fast hash is enough: the key is random with 192 bits, nothing to brute-force from a stolen hash, and the
    # lookup by hash compares no secret byte by byte in Python.
    return hashlib.sha256(key.encode("ascii")).hexdigest()


async def issue(db: Database, user_id: int) -> str:
    """A new key for user_id, replacing any earlier one (which stops working at once)."""
    key = secrets.token_urlsafe(KEY_BYTES)
    await db.execute(
        "INSERT INTO overlay_keys (user_id, key_hash, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET key_hash = excluded.key_hash, created_at = excluded.created_at",
        (user_id, digest(key), iso(utcnow())))
    return key


async def revoke(db: Database, user_id: int) -> bool:
    """Removes user_id's key; False if there was none."""
    return await db.execute("DELETE FROM overlay_keys WHERE user_id = ?", (user_id,)) > 0


async def owner(db: Database, key: str) -> int | None:
    """The user whose current key this is, or None (unknown, rotated, revoked, or not shaped like a key)."""
    if not KEY_PATTERN.fullmatch(key):
        return None
    return await db.fetchval("SELECT user_id FROM overlay_keys WHERE key_hash = ?", (digest(key),))


async def current_digests(db: Database, user_ids: Iterable[int]) -> dict[int, str]:
    """{user id: digest of their current key} of those users that have one, in one query per 500 users."""
    ids = sorted(set(user_ids))
    out: dict[int, str] = {}
    for start in range(0, len(ids), 500):  # well under SQLite's limit of bound parameters
        chunk = ids[start:start + 500]
        rows = await db.fetchall(f"SELECT user_id, key_hash FROM overlay_keys WHERE user_id IN "
                                 f"({', '.join('?' * len(chunk))})", chunk)
        out.update((row["user_id"], row["key_hash"]) for row in rows)
    return out
