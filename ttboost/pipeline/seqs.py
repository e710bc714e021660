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

    async def extend(self, user_id: int, held: int, top: int) -> bool:
        """Raises the user's reservation from `held`, the top this channel stored, to `top`. False when the
        reservation is no longer this channel's: another worker's channel of the same user (cluster mode: a
        simulate or a rehearsal on one worker, the socket on another) reserved a block above it, and the
        numbers up to `top` are partly theirs; the caller goes on above them with open()."""
        return bool(await self._db.execute("UPDATE seq_blocks SET reserved = ? WHERE user_id = ? AND reserved = ?",
                                           (top, user_id, held)))

    async def give_back(self, used: list[tuple[int, int, int]]) -> None:
        """At a clean shutdown, after the last publish: each (user, last seq used, top the channel stored)
        lowers the reservation to what was used, so a graceful restart continues without a gap. Only a crash
        leaves one, and so does a block another worker reserved above this one's: that is never lowered."""
        if used:
            async with self._db.transaction():
                await self._db.executemany("UPDATE seq_blocks SET reserved = ? WHERE user_id = ? AND reserved = ?",
                                           [(seq, user_id, held) for user_id, seq, held in used])
