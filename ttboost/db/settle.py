"""Statements whose outcome the caller must learn even when it is cancelled: BEGIN, COMMIT and ROLLBACK.

A cancel that reaches a task while its COMMIT is in flight would otherwise leave it not knowing whether the
transaction committed: a caller that re-queues on failure (the event log, trigger counters) then writes twice.
Both backends run these statements through `settle`, so a cancel is delivered only once the outcome is known.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable


async def settle(statement: Awaitable[Any]) -> BaseException | None:
    """Awaits `statement` to its end even if the caller is cancelled meanwhile; returns its error (None: done).

    The statement runs as a task of its own, so a cancel of the caller never reaches the driver (asyncpg would
    send the server a cancel request, aiosqlite could not stop it anyway). A cancel absorbed meanwhile is
    re-requested and reaches the caller at its next await, after the outcome is known.
    """
    task = asyncio.ensure_future(statement)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))  # unlike shield(), a cancel here leaves us waiting for it
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        _defer_cancel()
    return task.exception()


def _defer_cancel() -> None:
    """Re-requests a cancel that was absorbed while a statement ran to its end, so it reaches the task at its
    next await (uncancel first: the task's cancel count stays what its callers expect, asyncio.timeout's too)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
        task.cancel()
