"""In-process micro-benchmark: CPU per event of the server's own pipeline, without any socket.

The real components (SettingsStore, TriggerStore with the 100 triggers of bench/workload.py, SpeechService,
ActionEngine, EventBus, Dispatcher, LiveSession's combo step) on a temp database; one subscriber that takes
the encoded frames, as sockets.Connection.deliver does. Times Dispatcher.dispatch for the workload's event mix
and reports µs per event: the ceiling the pipeline puts on events/s before any I/O. In-process figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, AsyncIterator

from bench.common import insert_users, machine, write_result
from bench.workload import SOUNDS, EventSpec, event_spec, trigger_bodies
from ttboost.config import Config, load_config
from ttboost.db import Database
from ttboost.pipeline.actions import ActionEngine
from ttboost.pipeline.bus import EventBus, FrameTiming
from ttboost.pipeline.combos import ComboTracker
from ttboost.pipeline.dispatch import Dispatcher
from ttboost.pipeline.events import LiveEvent
from ttboost.settings import SettingsStore
from ttboost.trigger_schemas import TriggerSetSchema
from ttboost.triggers import TriggerStore
from ttboost.tts.service import SpeechService


class _SilentEngine:
    """Never finishes a phrase: the benchmark times the request path, not synthesis."""

    name = "bench"

    async def stream(self, text: str, voice: str, rate: int) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    def voices(self) -> list[Any]:
        return []

    async def refresh_voices(self) -> None:
        return None

    def resolve_voice(self, voice_id: str) -> str:
        return voice_id


class _Collector:
    def __init__(self) -> None:
        self.frames = 0

    def deliver(self, frame: str, timing: FrameTiming | None = None) -> None:
        self.frames += 1


def live_event(spec: EventSpec) -> LiveEvent:
    """What the TikTok adapter would make of the event."""
    event = LiveEvent(spec.type, user=spec.nickname, username=spec.handle, user_id=str(spec.user_id),
                      msg_id=str(1 << 36 | spec.idx))
    if spec.type == "chat":
        event.message = spec.message
    elif spec.type == "gift":
        event.gift_id, event.gift_name, event.diamond_count = spec.gift_id, spec.gift_name, spec.diamonds
        event.count, event.repeat_end = 1, True
    else:
        event.count, event.total = spec.like_count, spec.like_total
    return event


@dataclass(slots=True)
class Parts:
    """The benchmark user's real stores on a temp database (see rules_for())."""

    config: Config
    db: Database
    user_id: int
    triggers: TriggerStore
    settings: SettingsStore
    speech: SpeechService

    async def close(self) -> None:
        await self.speech.close()
        await self.triggers.close()
        await self.db.close()


async def rules_for(tmp: str) -> Parts:
    """A user with the workload's sounds and 100 triggers, default settings, speech that never finishes."""
    config = load_config(None, env={})
    db = Database(Path(tmp) / "ttboost.db")
    await db.open()
    [user_id] = await asyncio.to_thread(insert_users, Path(tmp) / "ttboost.db", ["bench"])
    for i in range(SOUNDS):
        await db.execute("INSERT INTO sounds (user_id, filename, size, duration_ms, format, created_at)"
                         " VALUES (?, ?, 1000, 300, 'mp3', '2026-01-01T00:00:00Z')", (user_id, f"sound{i}.mp3"))
    triggers = TriggerStore(db, config)
    for body in trigger_bodies():
        await triggers.set(user_id, 100, TriggerSetSchema().load(body))
    settings = SettingsStore(db, default_voice=config.tts.default_voice, voice_known=lambda _v: True)
    speech = SpeechService(_SilentEngine(), Path(tmp) / "tts", b"bench-secret", max_bytes=10**9,
                           max_concurrency=4, max_pending=20)
    await speech.start()
    return Parts(config, db, user_id, triggers, settings, speech)


async def measure(events: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ttboost-dispatch-") as tmp:
        parts = await rules_for(tmp)
        config, db, user_id, triggers, settings, speech = (parts.config, parts.db, parts.user_id, parts.triggers,
                                                           parts.settings, parts.speech)
        actions = ActionEngine(settings, triggers, speech, media_url="http://127.0.0.1:8000",
                               default_voice=config.tts.default_voice)
        bus = EventBus(db, replay_events=config.limits.replay_events, replay_seconds=config.limits.replay_seconds)
        dispatcher = Dispatcher(bus, actions)
        await dispatcher.prepare(user_id)
        collector = _Collector()
        bus.attach(user_id, collector)
        combos = ComboTracker(config.tiktok.combo_timeout_seconds)
        batches = [[live_event(event_spec(r * events + i)) for i in range(events)] for r in range(rounds)]
        per_event: list[float] = []
        clock = time.perf_counter
        for batch in batches:
            gc.collect()
            t0 = clock()
            for event in batch:
                for ready in combos.feed(event, 0.0):
                    dispatcher.dispatch(user_id, ready)
            per_event.append((clock() - t0) / len(batch))
            await asyncio.sleep(0)  # let the speech workers and the log writer run between rounds
        await bus.close()
        await parts.close()
    best = min(per_event)
    return {"benchmark": "dispatch (in-process)", "machine": machine(), "events_per_round": events,
            "rounds": rounds, "frames": collector.frames, "us_per_event_best": round(best * 1e6, 2),
            "us_per_event_median": round(sorted(per_event)[len(per_event) // 2] * 1e6, 2),
            "events_per_s_one_core": round(1 / best)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=5000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.events, args.rounds))
    write_result("dispatch", result)
    return result


if __name__ == "__main__":
    main()
