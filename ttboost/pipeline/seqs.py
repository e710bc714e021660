"""Per-user seq numbers reserved in blocks ahead of use and persisted, so that no number is handed out twice:
not across restarts, a kill -9, retention pruning or a user idle for months. Gaps are allowed."""

from __future__ import annotations

from typing import Final

from ..db import AnyDatabase

SEQ_BLOCK: Final = 10_000  # numbers reserved at a time; a restart skips whatever was left of the block
# A renewal is asked for when fewer than this many numbers are left: the database then has that many events'
# time (a fraction of a second to minutes) to store it before the numbers run past the stored reservation.
RENEW_BELOW: Final = SEQ_BLOCK // 2


class SeqReservations:
    """The seq_blocks table: per user, the highest number that may have been handed out."""

    def __init__(self, db: AnyDatabase) -> None:
        self._db = db

    async def open(self, user_id: int, at_least: int = 0) -> tuple[int, int]:
        """For a channel being created: (the last number that may have been used, the top of a new block
        reserved above it). `at_least`: numbers this process holds that may not be stored yet."""
        async with self._db.transaction():
            reserved = await self._db.fetchval("SELECT reserved FROM seq_blocks WHERE user_id = ?", (user_id,))
            # The log as well: it holds numbers past the reservation if they ran past it while the database
            # could not store a renewal.
            logged = await self._db.fetchval("SELECT MAX(seq) FROM events WHERE user_id = ?", (user_id,))
            last = max(reserved or 0, logged or 0, at_least)
            top = last + SEQ_BLOCK
            if reserved is None:
                await self._db.execute("INSERT INTO seq_blocks (user_id, reserved) VALUES (?, ?)", (user_id, top))
            else:
                await self._db.execute("UPDATE seq_blocks SET reserved = ? WHERE user_id = ?", (top, user_id))
        return last, top

    async def extend(self, user_id: int, top: int) -> None:
        """Raises the user's reservation to `top` (never lowers it)."""
        await self._db.execute("UPDATE seq_blocks SET reserved = ? WHERE user_id = ? AND reserved < ?",
                               (top, user_id, top))

    async def give_back(self, used: list[tuple[int, int]]) -> None:
        """At a clean shutdown, after the last publish: each (user, last seq used) lowers the reservation to
        what was used, so a graceful restart continues without a gap. Only a crash leaves one."""
        if used:
            async with self._db.transaction():
                await self._db.executemany("UPDATE seq_blocks SET reserved = ? WHERE user_id = ?",
                                           [(seq, user_id) for user_id, seq in used])
