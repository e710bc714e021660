"""The periodic background task behind the memory janitor and the revocation watch."""

from __future__ import annotations

import asyncio

from ttboost.periodic import Periodic


async def test_a_failing_round_does_not_end_the_loop_and_close_stops_it() -> None:
    rounds: list[int] = []
    third = asyncio.Event()

    async def step() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 3:
            third.set()
        if len(rounds) == 1:
            raise RuntimeError("a database hiccup")

    periodic = Periodic("test-loop", 0.001, step)
    periodic.start()
    await asyncio.wait_for(third.wait(), 5)  # the round after the failing one ran
    await periodic.close()
    seen = len(rounds)
    await asyncio.sleep(0.01)
    assert seen >= 3 and len(rounds) == seen  # nothing runs after close()


async def test_a_plain_function_step_runs_too() -> None:
    calls = asyncio.Event()
    periodic = Periodic("test-sync", 0.001, calls.set)
    periodic.start()
    await asyncio.wait_for(calls.wait(), 5)
    await periodic.close()
