"""Handover times of the cluster benchmark: kill -9 of a worker holding LIVE sessions, then SIGTERM of another.

For the sessions of the worker that goes, half the streamers already have a second app socket open on a
surviving worker ("waiting": that worker's watch found the lease taken and reports `reconnecting`); the other
half have none, and their app reconnects to a surviving worker as soon as its socket to the dead one closes
("rejoining"). The figure is the time from the signal to each of those sockets' `connected` status: after
kill -9 the dead worker's leases must expire first (lease_seconds after its last renewal) and the waiting
watches come back on their back-off (capped at one lease); after SIGTERM the leases are deleted at once.
Then one event goes to every moved streamer's room: it must arrive on the socket that took over.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, Final

import aiohttp

from bench.cluster_setup import Deployment, Follow, Streamer
from bench.common import summary_ms
from bench.fake_push import BenchTikTok, FrameFactory
from bench.workload import event_spec

CONNECT_CONCURRENCY: Final = 25
EVENT_BASE: Final = 500_000_000  # indices of the events sent after a handover (above the ladder's)
ARRIVAL_WAIT: Final = 10.0  # ceiling for those events


async def run(http: aiohttp.ClientSession, fake: BenchTikTok, dep: Deployment, streamers: list[Streamer],
              follows: list[Follow]) -> dict[str, Any]:
    out: dict[str, Any] = {"lease_seconds": dep.lease_seconds}
    out["kill_9"] = await _phase(http, fake, dep, streamers, follows, victim=0, graceful=False)
    if len(dep.pids()) >= 2:
        out["sigterm"] = await _phase(http, fake, dep, streamers, follows, victim=1, graceful=True)
    return out


async def _phase(http: aiohttp.ClientSession, fake: BenchTikTok, dep: Deployment, streamers: list[Streamer],
                 follows: list[Follow], *, victim: int, graceful: bool) -> dict[str, Any]:
    name = "SIGTERM" if graceful else "kill -9"
    survivors = [i for i in range(len(dep.servers)) if i != victim and dep.alive(i)]
    moving = [s for s in streamers if s.worker == victim]
    waiting, rejoining = moving[0::2], moving[1::2]
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    took: dict[int, tuple[int, Follow]] = {}  # id(streamer) -> (worker, socket that took over)

    async def open_on(worker: int, streamer: Streamer) -> Follow:
        async with limit:
            follow = Follow(await http.ws_connect(dep.ws_url(worker, streamer.token), max_msg_size=0))
        follows.append(follow)
        took[id(streamer)] = (worker, follow)
        return follow

    async def wait_behind(j: int, streamer: Streamer) -> None:
        follow = await open_on(survivors[j % len(survivors)], streamer)
        await follow.wait_state("reconnecting")  # its worker's watch found the lease held by the victim

    print(f"  handover, {name} of w{victim + 1}: {len(moving)} sessions ({len(waiting)} with a socket waiting on "
          f"another worker)", flush=True)
    await asyncio.gather(*(wait_behind(j, s) for j, s in enumerate(waiting)))
    proc = dep.servers[victim].proc
    assert proc is not None
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    exited = asyncio.create_task(asyncio.to_thread(proc.wait, 30))
    closed_after: list[float] = []

    async def rejoin(j: int, streamer: Streamer) -> None:
        assert streamer.reader is not None
        await asyncio.wait({streamer.reader})  # the app's socket to the victim closed
        closed_after.append(time.perf_counter() - t0)
        await open_on(survivors[j % len(survivors)], streamer)

    await asyncio.gather(*(rejoin(j, s) for j, s in enumerate(rejoining)))
    ceiling = t0 + 3 * dep.lease_seconds + 20
    while time.perf_counter() < ceiling and not all(f.connected_at for _, f in took.values()):
        await asyncio.sleep(0.05)
    await exited
    exit_s = time.perf_counter() - t0 if graceful else None

    def after(group: list[Streamer]) -> list[float]:
        return [took[id(s)][1].connected_at - t0 for s in group if took[id(s)][1].connected_at]

    out: dict[str, Any] = {"sessions": len(moving), "waiting": summary_s(after(waiting), len(waiting)),
                           "rejoining": summary_s(after(rejoining), len(rejoining)),
                           "app_socket_closed": summary_s(closed_after, len(rejoining))}
    if exit_s is not None:
        out["process_exit_s"] = round(exit_s, 2)
    for streamer in moving:
        worker, follow = took[id(streamer)]
        streamer.worker, streamer.ws, streamer.reader = worker, follow.ws, follow.task
    out["events_after"] = await _events_after(fake, moving, took)
    print(f"  {describe_phase(name, out)}", flush=True)
    return out


async def _events_after(fake: BenchTikTok, moving: list[Streamer], took: dict[int, tuple[int, Follow]]
                        ) -> dict[str, int]:
    """One event to each moved streamer's room: it must arrive on the socket that took the session over."""
    factory = FrameFactory(0)
    expected: list[tuple[Follow, int]] = []
    for k, streamer in enumerate(moving):
        socket = fake.room_sockets.get(streamer.room)
        if socket is None or socket.closed:
            continue
        idx = EVENT_BASE + k
        await socket.send_bytes(factory.frame(event_spec(idx)))
        expected.append((took[id(streamer)][1], idx))
    deadline = time.perf_counter() + ARRIVAL_WAIT
    while time.perf_counter() < deadline and not all(idx in f.seen for f, idx in expected):
        await asyncio.sleep(0.05)
    return {"sent": len(expected), "received": sum(idx in f.seen for f, idx in expected), "streamers": len(moving)}


def summary_s(seconds: list[float], expected: int) -> dict[str, Any]:
    figures = summary_ms(seconds)
    return {"count": len(seconds), "of": expected, **{k.replace("_ms", "_s"): round(v / 1000, 2)
                                                      for k, v in figures.items() if k != "n"}}


def describe_phase(name: str, phase: dict[str, Any]) -> str:
    def fig(key: str) -> str:
        f = phase[key]
        return f"{f['count']}/{f['of']}, p50 {f.get('p50_s')} s, max {f.get('max_s')} s"

    exit_text = f"; the process exited after {phase['process_exit_s']} s" if "process_exit_s" in phase else ""
    events = phase["events_after"]
    return (f"{name}: {phase['sessions']} sessions moved. `connected` again on a socket already waiting on another "
            f"worker: {fig('waiting')}; on the app's new socket to another worker: {fig('rejoining')} "
            f"(its old socket closed after p50 {phase['app_socket_closed'].get('p50_s')} s){exit_text}; "
            f"an event after: {events['received']}/{events['sent']} arrived ({events['streamers']} streamers)")


def describe(handover: dict[str, Any]) -> str:
    lines = [f"Handover (lease_seconds = {handover['lease_seconds']:g}), time from the signal:"]
    for key, name in (("kill_9", "kill -9"), ("sigterm", "SIGTERM")):
        if key in handover:
            lines.append("  " + describe_phase(name, handover[key]))
    return "\n".join(lines)
