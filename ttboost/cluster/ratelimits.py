"""Rate limits that hold across the cluster: the token buckets live in PostgreSQL, one atomic statement a take.

Without this each worker would count alone and N workers would allow N times a limit. The bucket rule is the
one of ratelimit.RateLimiter (a burst of `limit`, then one per period/limit), on the wall clock every worker
shares. Only the rate-limited routes (logins, uploads, trigger edits, speech) pay the round trip.
"""

from __future__ import annotations

import time
from typing import Callable, Final

from ..db import PostgresDatabase
from ..ratelimit import RateLimiter

PRUNE_EVERY: Final = 1000  # takes between two deletions of buckets that have refilled completely

_TAKE: Final = """
INSERT INTO cluster_rate_buckets AS b (key, tokens, updated, allowed) VALUES (?, ? - 1, ?, TRUE)
ON CONFLICT (key) DO UPDATE SET
    allowed = LEAST(?, b.tokens + (excluded.updated - b.updated) * ?) >= 1,
    tokens = LEAST(?, b.tokens + (excluded.updated - b.updated) * ?)
             - CASE WHEN LEAST(?, b.tokens + (excluded.updated - b.updated) * ?) >= 1 THEN 1 ELSE 0 END,
    updated = excluded.updated
RETURNING allowed, tokens"""


class PostgresBuckets:
    """The SharedBuckets of a cluster (ratelimit.py)."""

    def __init__(self, db: PostgresDatabase, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._takes = 0

    async def start(self, limiters: dict[str, RateLimiter]) -> None:
        # Under the write lock: workers starting together would race even on IF NOT EXISTS.
        async with self._db.transaction():
            await self._db.execute("CREATE TABLE IF NOT EXISTS cluster_rate_buckets (key TEXT PRIMARY KEY, "
                                   "tokens DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL, "
                                   "allowed BOOLEAN NOT NULL)")
        for limiter in limiters.values():
            limiter.shared = self

    async def take(self, key: str, limit: int, period: float) -> float | None:
        """One token of key's bucket; None when allowed, else seconds until the next token."""
        rate, now, top = limit / period, self._clock(), float(limit)
        row = await self._db.fetchone(_TAKE, (key, top, now, top, rate, top, rate, top, rate))
        assert row is not None  # INSERT … ON CONFLICT DO UPDATE always returns its row
        self._takes += 1
        if self._takes % PRUNE_EVERY == 0:  # a full bucket is the same as no bucket: keep the table small
            await self._db.execute("DELETE FROM cluster_rate_buckets WHERE updated < ?", (now - period,))
        return None if row["allowed"] else (1.0 - row["tokens"]) / rate
