"""In-process: what stream history costs the event path, and how closely a rehearsal keeps its pace.

1. The recorder: µs per frame of StreamRecorder.record() (the only work added on the event path) for the
   workload's event mix, and the time of one batch write (1 s of frames at 500 events/s, and 5,000 frames).
2. Rehearsal pace: a recorded stream (events with random gaps, some bursts) is written into the event log,
   then rehearsed with the real clock at each speed through the real action engine (100 triggers); each
   frame's arrival is compared with its schedule (recorded offset ÷ speed). Reports lateness p50/p99/max and
   the whole run's length against the expected one.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from bench.bench_dispatch import live_event, rules_for
from bench.common import machine, percentile, write_result
from bench.workload import event_spec
from ttboost.config import load_config
from ttboost.db import Database
from ttboost.pipeline.actions import ActionEngine
from ttboost.pipeline.bus import EventBus, FrameTiming, StreamRef, frame_ts
from ttboost.streams.recorder import StreamRecorder
from ttboost.streams.rehearsal import NotCounted, Rehearsals


class _Arrivals:
    """The app socket: notes when each rehearsal frame arrives (perf_counter)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.done = asyncio.Event()

    def deliver(self, frame: str, timing: FrameTiming | None = None) -> None:
        if '"type":"rehearsal"' in frame:
            if '"state":"finished"' in frame:
                self.done.set()
            return
        self.times.append(time.perf_counter())


def _payloads(n: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(n):
        event = live_event(event_spec(i))
        out.append((event.type, event.to_payload()))
    return out


async def recorder_cost(db: Database, user_id: int, frames: int) -> dict[str, Any]:
    session_id = await db.execute("INSERT INTO stream_sessions (user_id, tiktok_username, started_at) "
                                  "VALUES (?, 'bench', '2026-01-01T00:00:00Z')", (user_id,))
    recorder = StreamRecorder(db)
    ref = StreamRef(session_id)
    payloads = _payloads(frames)
    ts = frame_ts(time.time())
    gc.collect()
    t0 = time.perf_counter()
    for type_, payload in payloads:
        recorder.record(ref, type_, payload, ts)
    per_frame = (time.perf_counter() - t0) / frames
    writes = {}
    for label, n in (("500_frames", 500), (f"{frames}_frames", frames)):
        for type_, payload in payloads[:n]:
            recorder.record(ref, type_, payload, ts)
        t0 = time.perf_counter()
        await recorder.flush()
        writes[f"flush_{label}_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return {"record_us_per_frame": round(per_frame * 1e6, 2), **writes}


async def rehearsal_pace(db: Database, user_id: int, engine: Callable[[Callable[[], float]], Any],
                         events: int, seconds: float, speed: int) -> dict[str, Any]:
    """A stream of `events` over `seconds` of recorded time, rehearsed at `speed`."""
    rng = random.Random(speed)
    session_id = await db.execute("INSERT INTO stream_sessions (user_id, tiktok_username, started_at, ended_at) "
                                  "VALUES (?, 'bench', '2026-01-01T00:00:00Z', '2026-01-01T01:00:00Z')",
                                  (user_id,))
    offsets = sorted(rng.uniform(0, seconds) for _ in range(events))
    offsets = [round(o, 3) for o in offsets]  # the log keeps milliseconds
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    seq0 = 10_000_000 * speed
    rows = []
    for i, offset in enumerate(offsets):
        event = live_event(event_spec(i))
        ts = (start + timedelta(seconds=offset)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rows.append((user_id, session_id, seq0 + i, event.type, ts, json.dumps(event.to_payload())))
    async with db.transaction():
        await db.executemany("INSERT INTO events (user_id, session_id, seq, type, ts, payload) "
                             "VALUES (?, ?, ?, ?, ?, ?)", rows)
    config = load_config(None, env={})
    bus = EventBus(db, replay_events=config.limits.replay_events, replay_seconds=config.limits.replay_seconds)
    await bus.channel(user_id)
    arrivals = _Arrivals()
    bus.attach(user_id, arrivals)
    rehearsals = Rehearsals(db, bus, engine)
    t0 = time.perf_counter()
    await rehearsals.start(user_id, session_id, speed)
    await arrivals.done.wait()
    total = time.perf_counter() - t0
    await rehearsals.close()
    await bus.close()
    first = arrivals.times[0]
    late_ms = [((at - first) - (offset - offsets[0]) / speed) * 1000 for at, offset in zip(arrivals.times, offsets)]
    return {"speed": speed, "events": events, "recorded_s": seconds, "frames": len(arrivals.times),
            "expected_s": round((offsets[-1] - offsets[0]) / speed, 3), "took_s": round(total, 3),
            "late_ms_p50": round(percentile(late_ms, 50), 2), "late_ms_p99": round(percentile(late_ms, 99), 2),
            "late_ms_max": round(max(late_ms), 2), "early_ms_max": round(max(0.0, -min(late_ms)), 2)}


async def measure(frames: int, events: int, seconds: float, speeds: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ttboost-streams-") as tmp:
        parts = await rules_for(tmp)
        db, user_id = parts.db, parts.user_id

        def engine(clock: Callable[[], float]) -> Any:
            triggers: Any = NotCounted(parts.triggers)
            return ActionEngine(parts.settings, triggers, parts.speech, media_url="http://127.0.0.1:8000",
                                default_voice=parts.config.tts.default_voice, clock=clock)

        result: dict[str, Any] = {"benchmark": "streams (in-process)", "machine": machine()}
        result["recorder"] = await recorder_cost(db, user_id, frames)
        result["rehearsal"] = [await rehearsal_pace(db, user_id, engine, events, seconds, speed)
                               for speed in speeds]
        await parts.close()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=5000, help="frames for the recorder's figures")
    parser.add_argument("--events", type=int, default=400, help="events of the rehearsed stream")
    parser.add_argument("--seconds", type=float, default=60.0, help="recorded length of that stream")
    parser.add_argument("--speeds", type=int, nargs="+", default=[20, 10])
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.frames, args.events, args.seconds, args.speeds))
    write_result("streams", result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return result


if __name__ == "__main__":
    main()
