"""Handover times of the cluster benchmark: kill -9 of a worker that is home to LIVE sessions, then SIGTERM of
another.

Of the streamers whose home the worker is, half first move their app to a surviving worker ("app elsewhere": a
socket there replaces the one on the home, 4001, and the frames come through NATS); the other half keep their
app on the home, and it reconnects (with `since`) to a surviving worker as soon as its socket closes ("app reconnects"). From
the signal on, the benchmark watches the fake TikTok: when a streamer's room gets a new push socket (another
worker took the LIVE over), one event goes into it at once. Figures, from the signal: the new TikTok
connection, that event on the app's socket, and the app's `connected` status after a state that was not (when
the app was told of the interruption at all). After kill -9 the dead home's leases must expire first
(lease_seconds after its last renewal); after SIGTERM they are released at once.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from typing import Any, Final

import aiohttp

from bench.cluster_setup import Deployment, Follow, Streamer
from bench.common import RESULTS_DIR, summary_ms
from bench.fake_push import BenchTikTok, FrameFactory
from bench.workload import event_spec

CONNECT_CONCURRENCY: Final = 25
EVENT_BASE: Final = 500_000_000  # indices of the events sent after a handover (above the ladder's)
POLL: Final = 0.02  # how often the fake's rooms are looked at for a new push socket
GROUPS: Final = (("app_elsewhere", "app on another worker"), ("app_reconnects", "app reconnecting"))


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
    groups = {"app_elsewhere": moving[0::2], "app_reconnects": moving[1::2]}
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    app: dict[int, Follow] = {}  # id(streamer) -> the app's socket after the handover
    worker_of: dict[int, int] = {}

    async def open_on(worker: int, streamer: Streamer, since: int = 0) -> Follow:
        async with limit:
            follow = Follow(await http.ws_connect(dep.ws_url(worker, streamer.token, since), max_msg_size=0))
        follows.append(follow)
        app[id(streamer)], worker_of[id(streamer)] = follow, worker
        return follow

    async def move_app(j: int, streamer: Streamer) -> None:
        follow = await open_on(survivors[j % len(survivors)], streamer)
        assert streamer.reader is not None
        async with asyncio.timeout(30):
            await follow.status.wait()  # the socket is the user's now; its frames come from the home
            await asyncio.wait({streamer.reader})  # and the older one, on the home, was closed (4001)

    print(f"  handover, {name} of w{victim + 1}: {len(moving)} sessions ({len(groups['app_elsewhere'])} with "
          f"the app moved to another worker first)", flush=True)
    await asyncio.gather(*(move_app(j, s) for j, s in enumerate(groups["app_elsewhere"])))
    old_sockets = {s.room: fake.room_sockets.get(s.room) for s in moving}
    connections0 = fake.connections
    proc = dep.servers[victim].proc
    assert proc is not None
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)

    async def exit_after() -> float:
        await asyncio.to_thread(proc.wait, 30)
        return round(time.perf_counter() - t0, 2)

    exited = asyncio.create_task(exit_after())

    async def reconnect(j: int, streamer: Streamer) -> None:
        assert streamer.reader is not None
        await asyncio.wait({streamer.reader})  # the app's socket to the victim closed
        # As the app does: back with `since`, so a frame made while it was away is replayed, not lost.
        since = streamer.follow.last_seq if streamer.follow else streamer.last_seq
        await open_on(survivors[j % len(survivors)], streamer, since)

    reconnects = asyncio.gather(*(reconnect(j, s) for j, s in enumerate(groups["app_reconnects"])))
    factory = FrameFactory(0)
    back: dict[int, float] = {}  # id(streamer) -> when its room got a new push socket
    sent: dict[int, int] = {}  # id(streamer) -> the index of the event sent into it
    ceiling = t0 + 3 * dep.lease_seconds + 20
    while time.perf_counter() < ceiling and not all(
            id(s) in sent and id(s) in app and sent[id(s)] in app[id(s)].seen for s in moving):
        for k, streamer in enumerate(moving):
            socket = fake.room_sockets.get(streamer.room)
            if id(streamer) in back or socket is None or socket is old_sockets[streamer.room] or socket.closed:
                continue
            back[id(streamer)] = time.perf_counter()
            sent[id(streamer)] = idx = EVENT_BASE + 1000 * victim + k
            await socket.send_bytes(factory.frame(event_spec(idx)))
        await asyncio.sleep(POLL)
    await reconnects
    exit_s = await exited
    missed = [s for s in moving if id(s) in sent and sent[id(s)] not in app[id(s)].seen]
    again = await _again(fake, missed, app, EVENT_BASE + 500 + 1000 * victim)

    def figures(group: list[Streamer]) -> dict[str, Any]:
        tiktok = [back[id(s)] - t0 for s in group if id(s) in back]
        events = [app[id(s)].seen[sent[id(s)]] - t0 for s in group if sent.get(id(s), -1) in app[id(s)].seen]
        statuses = [at - t0 for s in group if (at := app[id(s)].connected_after(t0))]
        return {"tiktok_back": summary_s(tiktok, len(group)), "event_at_app": summary_s(events, len(group)),
                "connected_status": summary_s(statuses, len(group))}

    out: dict[str, Any] = {"sessions": len(moving), "tiktok_connections_opened": fake.connections - connections0,
                           **{key: figures(group) for key, group in groups.items()}}
    if missed:  # what those apps got instead, and the workers' logs: the product's side of a lost event
        keep_logs(dep, "sigterm" if graceful else "kill")
        out["event_lost"] = {"streamers": len(missed), "a_second_event_arrived": again,
                             "examples": [{"streamer": s.name, "app_on": f"w{worker_of[id(s)] + 1}",
                                           "states": app[id(s)].states, "last_frames": list(app[id(s)].recent)}
                                          for s in missed[:3]]}
    if graceful:
        out["process_exit_s"] = exit_s
    for streamer in moving:
        follow = app[id(streamer)]
        streamer.worker, streamer.ws, streamer.reader = worker_of[id(streamer)], follow.ws, follow.task
        streamer.follow = follow
    print(f"  {describe_phase(name, out)}", flush=True)
    return out


def keep_logs(dep: Deployment, phase: str) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for i, server in enumerate(dep.servers):
        if server.log_path.exists():
            shutil.copyfile(server.log_path, RESULTS_DIR / f"cluster-{phase}-w{i + 1}.log")


async def _again(fake: BenchTikTok, missed: list[Streamer], app: dict[int, Follow], base: int) -> int:
    """A second event to each streamer whose first one after the handover never arrived: is the app cut off, or
    was one event lost?"""
    factory = FrameFactory(0)
    expected = []
    for k, streamer in enumerate(missed):
        socket = fake.room_sockets.get(streamer.room)
        if socket is not None and not socket.closed:
            await socket.send_bytes(factory.frame(event_spec(base + k)))
            expected.append((app[id(streamer)], base + k))
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline and not all(idx in f.seen for f, idx in expected):
        await asyncio.sleep(POLL)
    return sum(idx in f.seen for f, idx in expected)


def summary_s(seconds: list[float], expected: int) -> dict[str, Any]:
    figures = summary_ms(seconds)
    return {"count": len(seconds), "of": expected, **{k.replace("_ms", "_s"): round(v / 1000, 2)
                                                      for k, v in figures.items() if k != "n"}}


def describe_phase(name: str, phase: dict[str, Any]) -> str:
    def fig(f: dict[str, Any]) -> str:
        return f"{f['count']}/{f['of']} p50 {f.get('p50_s')} s, max {f.get('max_s')} s"

    parts = [f"{label}: TikTok back {fig(phase[key]['tiktok_back'])}; an event at the app "
             f"{fig(phase[key]['event_at_app'])}; `connected` status {fig(phase[key]['connected_status'])}"
             for key, label in GROUPS]
    exit_text = f" (the process exited after {phase['process_exit_s']} s)" if "process_exit_s" in phase else ""
    if "event_lost" in phase:
        lost = phase["event_lost"]
        parts.append(f"LOST: the first event after the handover never reached {lost['streamers']} apps; a second "
                     f"one reached {lost['a_second_event_arrived']} of them (examples in bench/results/cluster.json, the workers' logs beside it)")
    return (f"{name}{exit_text}: {phase['sessions']} sessions moved, {phase['tiktok_connections_opened']} TikTok "
            f"connections opened.\n    " + "\n    ".join(parts))


def describe(handover: dict[str, Any]) -> str:
    lines = [f"Handover (lease_seconds = {handover['lease_seconds']:g}), time from the signal:"]
    for key, name in (("kill_9", "kill -9"), ("sigterm", "SIGTERM")):
        if key in handover:
            lines.append("  " + describe_phase(name, handover[key]))
    return "\n".join(lines)
