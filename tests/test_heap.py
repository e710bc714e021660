"""HeapFreezer: after session changes, one full collection, then the survivors frozen; nothing leaks."""

from __future__ import annotations

import asyncio
import gc
import weakref

from ttboost.live.heap import HeapFreezer


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


async def test_refreeze_collects_what_a_frozen_session_left_and_freezes_the_rest() -> None:
    heap = HeapFreezer(after=0.01, at_most_after=1.0)
    ended, alive = Node(), Node()
    gone = weakref.ref(ended)
    gc.freeze()  # as after an earlier refreeze: both were alive then
    try:
        del ended  # the session ends: its cycle is garbage, but frozen
        gc.collect()
        assert gone() is not None  # a routine full pass does not see it
        for _ in range(3):  # debounced: one refreeze after the last change
            heap.changed()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert gone() is None
        assert gc.get_freeze_count() > 0 and alive.me is alive
    finally:
        gc.unfreeze()


async def test_constant_churn_still_refreezes() -> None:
    heap = HeapFreezer(after=0.05, at_most_after=0.1)
    garbage = Node()
    gone = weakref.ref(garbage)
    gc.freeze()
    try:
        del garbage
        for _ in range(15):  # a change every 20 ms never leaves 50 ms of quiet
            heap.changed()
            await asyncio.sleep(0.02)
        assert gone() is None
    finally:
        gc.unfreeze()
