"""Capacity benchmark: N LIVE sessions × R events/s each, evenly spread, through the real TikTokLive path.

Each session is one account (active licence, chat speech off, no triggers) with its app WebSocket open; the
socket's auto_connect starts the account's LIVE watch, which connects the real TikTokLive client to its own
room of the fake TikTok (tests/fake_tiktok.py). Events are push frames of one message each (60 % chat, 25 %
gift, 15 % like: bench/workload.py); event k goes to session k mod N at t0 + k / (N × R).

Figures, per server:
  first events   latency of the first chat and the first gift of the first session (the process has just
                 loaded the library: the worst case), of the second session, and steady p50 for comparison
  RSS            per session: (RSS with N sessions − RSS with the first one) / (N − 1), app socket included
  CPU            server CPU seconds during the steady run ÷ events (heartbeats and acks included), and the
                 idle CPU of N connected sessions apart
  latency        p50 / p99 / max event → app frame during the steady run

`--before DIR` runs the same measurement first against another checkout (e.g. `git archive <commit> | tar
-x -C DIR`), `--bare` adds the floor: N fake push sockets relayed by a bare aiohttp server (bench/bare_ws.py).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import time
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.bench_pipeline import _server_env, _wait_connected
from bench.common import Server, cpu_seconds, insert_users, machine, summary_ms, tokens, write_result
from bench.fake_push import BenchTikTok, FrameFactory
from bench.workload import event_spec, index_in

CONNECT_CONCURRENCY: Final = 25  # sessions connecting at once (each costs a few HTTP calls to the fake)
IDLE_SECONDS: Final = 3.0
# After the last session connected: the server's one full collection and freeze (ttboost/live/heap.py) comes
# 10 s after the last session change; the steady run measures the state after it, as in a LIVE hours long.
SETTLE_SECONDS: Final = 12.0
DRAIN_SECONDS: Final = 3.0
BENCH_SETTINGS: Final = {"chat_tts_mode": "off"}  # as the figures in the issue: no speech per chat
ROOM_BASE: Final = 7_300_000_000  # FakeTikTok's first room id


class Sessions:
    """The app sockets of N sessions; one reader each stamps the arrival time of every expected event."""

    def __init__(self) -> None:
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.start, self.recv_at = 0, [0.0]
        self.left = 0
        self.done = asyncio.Event()

    def expect(self, start: int, n: int) -> list[float]:
        self.start, self.recv_at, self.left = start, [0.0] * n, n
        self.done.clear()
        return self.recv_at

    def add(self, ws: aiohttp.ClientWebSocketResponse, index: Any = None) -> None:
        self.sockets.append(ws)
        self.readers.append(asyncio.create_task(self._read(ws, index)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, index: Any) -> None:
        clock = time.perf_counter
        async for msg in ws:
            now = clock()
            pos = (index(msg) if index else index_in(msg.data)) - self.start
            if 0 <= pos < len(self.recv_at) and not self.recv_at[pos]:
                self.recv_at[pos] = now
                self.left -= 1
                if not self.left:
                    self.done.set()

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


async def send_and_wait(sessions: Sessions, sends: list[tuple[int, bytes]], rate: float, start: int
                        ) -> tuple[list[float], list[float], float]:
    """Sends (room socket index, frame) pairs at `rate` per second, evenly; returns send/receive times."""
    n = len(sends)
    recv_at = sessions.expect(start, n)
    sent_at = [0.0] * n
    clock = time.perf_counter
    # This process holds 2 × N sockets and the prepared frames: a full collection here takes 0.1-0.4 s, which
    # would show as the server's latency. The load generator must not pause: no collection while it measures.
    gc.collect()
    gc.disable()
    try:
        t0 = clock()
        for i, (socket, frame) in enumerate(sends):
            delay = t0 + i / rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[i] = clock()
            await socket.send_bytes(frame)
        elapsed = clock() - t0
        try:
            await asyncio.wait_for(sessions.done.wait(), DRAIN_SECONDS)
        except asyncio.TimeoutError:
            pass
    finally:
        gc.enable()
    return sent_at, recv_at, elapsed


def _latency(sent_at: list[float], recv_at: list[float]) -> dict[str, Any]:
    got = [r - s for s, r in zip(sent_at, recv_at) if r > 0]
    return {"events": len(sent_at), "received": len(got), **summary_ms(got)}


async def _one_ms(sessions: Sessions, socket: Any, factory: FrameFactory, idx: int) -> float:
    sent, recv, _ = await send_and_wait(sessions, [(socket, factory.frame(event_spec(idx)))], 1.0, idx)
    return round((recv[0] - sent[0]) * 1000, 2) if recv[0] else float("nan")


def _first_of(kind: str, after: int) -> int:
    return next(i for i in range(after, after + 100) if event_spec(i).type == kind)


async def measure_server(fake: BenchTikTok, args: argparse.Namespace, label: str, tree: Path | None) -> dict[str, Any]:
    env = _server_env(fake, "ws://127.0.0.1:9/edge/v1")
    names = [f"{label[:3]}{i:04d}" for i in range(args.sessions)]
    first_room = ROOM_BASE + len(fake._streamers)
    for name in names:
        fake.set_user(name)
    out: dict[str, Any] = {"label": label, "tree": str(tree or "this checkout")}
    factory = FrameFactory(0)
    sessions = Sessions()
    try:
        async with Server(env, tree=tree) as server, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0)) as http:  # not the default 100 connections
            ids = insert_users(server.db_path, names, settings=BENCH_SETTINGS)
            toks = tokens(ids)
            ws_url = server.url.replace("http", "ws", 1) + "/v2/ws?token="
            out["rss_idle_mb"] = round(server.rss_kb() / 1024, 1)

            async def connect(i: int) -> None:
                ws = await http.ws_connect(ws_url + toks[i], max_msg_size=0)
                await _wait_connected(ws)
                async with asyncio.timeout(10):
                    while first_room + i not in fake.room_sockets:
                        await asyncio.sleep(0.01)
                sessions.add(ws)

            def room(i: int) -> Any:
                return fake.room_sockets[first_room + i]

            await connect(0)
            out["rss_one_session_mb"] = round(server.rss_kb() / 1024, 1)
            chat, gift = _first_of("chat", 0), _first_of("gift", 0)
            out["first_chat_ms"] = await _one_ms(sessions, room(0), factory, chat)
            out["first_gift_ms"] = await _one_ms(sessions, room(0), factory, gift)
            out["second_chat_ms"] = await _one_ms(sessions, room(0), factory, _first_of("chat", chat + 1))
            out["second_gift_ms"] = await _one_ms(sessions, room(0), factory, _first_of("gift", gift + 1))
            await connect(1)
            out["second_session_first_chat_ms"] = await _one_ms(sessions, room(1), factory, _first_of("chat", 200))
            out["second_session_first_gift_ms"] = await _one_ms(sessions, room(1), factory, _first_of("gift", 200))
            limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

            async def connect_limited(i: int) -> None:
                async with limit:
                    await connect(i)

            began = time.perf_counter()
            await asyncio.gather(*(connect_limited(i) for i in range(2, args.sessions)))
            out["connect_all_s"] = round(time.perf_counter() - began, 1)
            await asyncio.sleep(SETTLE_SECONDS)
            rss_n = server.rss_kb() / 1024
            out["rss_all_sessions_mb"] = round(rss_n, 1)
            out["rss_per_session_mb"] = round((rss_n - out["rss_one_session_mb"]) / (args.sessions - 1), 3)
            cpu0 = cpu_seconds(server.pid)
            await asyncio.sleep(IDLE_SECONDS)
            out["idle_cpu_percent"] = round(100 * (cpu_seconds(server.pid) - cpu0) / IDLE_SECONDS, 1)
            start = 1000
            n = int(args.sessions * args.rate * args.seconds)
            sockets = [room(i) for i in range(args.sessions)]
            sends = [(sockets[k % args.sessions], factory.frame(event_spec(start + k))) for k in range(n)]
            cpu0 = cpu_seconds(server.pid)
            profile = _py_spy(args, label, server.pid)
            sent, recv, elapsed = await send_and_wait(sessions, sends, args.sessions * args.rate, start)
            cpu = cpu_seconds(server.pid) - cpu0
            if profile is not None:
                await asyncio.to_thread(profile.wait)
            out["steady"] = {"rate": args.sessions * args.rate, "seconds": round(elapsed, 1),
                             "latency": _latency(sent, recv), "server_cpu_s": round(cpu, 2),
                             "server_cpu_ms_per_event": round(cpu * 1000 / n, 3)}
            out["steady_p50_ms"] = out["steady"]["latency"].get("p50_ms")
    finally:
        await sessions.close()
    return out


def _py_spy(args: argparse.Namespace, label: str, pid: int) -> subprocess.Popen[bytes] | None:
    """With --py-spy DIR: the server's profile during the steady run (DIR/capacity-<label>.folded)."""
    if args.py_spy is None:
        return None
    args.py_spy.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--gil", "--rate", "250", "--format", "raw",
                             "--duration", str(max(1, int(args.seconds))),
                             "--output", str(args.py_spy / f"capacity-{label}.folded")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure_bare(fake: BenchTikTok, args: argparse.Namespace) -> dict[str, Any]:
    """The floor: N fake push sockets, each relayed unchanged by a bare aiohttp server to one client socket."""
    factory = FrameFactory(0)
    index_of: dict[bytes, int] = {}
    sessions = Sessions()
    rooms = [ROOM_BASE + 900_000 + i for i in range(args.sessions)]
    out: dict[str, Any] = {"label": "bare"}
    try:
        async with Server(script="bench/bare_ws.py") as server, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0)) as http:
            push = fake.tiktok_url.replace("http", "ws", 1) + "/webcast/im/push/v2/?room_id="
            for room in rooms:
                ws = await http.ws_connect(server.url.replace("http", "ws", 1) + "/ws",
                                           params={"src": push + str(room)}, max_msg_size=0)
                sessions.add(ws, lambda msg: index_of.get(msg.data, -1))
            async with asyncio.timeout(20):
                while not all(room in fake.room_sockets for room in rooms):
                    await asyncio.sleep(0.05)
            start = 1000
            n = int(args.sessions * args.rate * args.seconds)
            sends = []
            for k in range(n):
                frame = factory.frame(event_spec(start + k))
                index_of[frame] = start + k
                sends.append((fake.room_sockets[rooms[k % args.sessions]], frame))
            cpu0 = cpu_seconds(server.pid)
            sent, recv, elapsed = await send_and_wait(sessions, sends, args.sessions * args.rate, start)
            cpu = cpu_seconds(server.pid) - cpu0
            out["steady"] = {"rate": args.sessions * args.rate, "seconds": round(elapsed, 1),
                             "latency": _latency(sent, recv), "server_cpu_s": round(cpu, 2),
                             "server_cpu_ms_per_event": round(cpu * 1000 / n, 3)}
            out["rss_all_sessions_mb"] = round(server.rss_kb() / 1024, 1)
    finally:
        await sessions.close()
    return out


def _print(result: dict[str, Any]) -> None:
    steady = result["steady"]
    lat = steady["latency"]
    print(f"{result['label']:>7}: CPU {steady['server_cpu_ms_per_event']:.3f} ms/event, p50 {lat.get('p50_ms')} "
          f"p99 {lat.get('p99_ms')} max {lat.get('max_ms')} ms, received {lat['received']}/{lat['events']}",
          flush=True)
    if "rss_per_session_mb" in result:
        print(f"         RSS/session {result['rss_per_session_mb']} MB (all: {result['rss_all_sessions_mb']} MB), "
              f"idle CPU {result['idle_cpu_percent']} %, first chat/gift {result['first_chat_ms']}/"
              f"{result['first_gift_ms']} ms, second {result['second_chat_ms']}/{result['second_gift_ms']} ms, "
              f"second session's first {result['second_session_first_chat_ms']}/"
              f"{result['second_session_first_gift_ms']} ms", flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "capacity", "machine": machine(), "sessions": args.sessions,
                              "rate_per_session": args.rate, "seconds": args.seconds, "runs": []}
    async with BenchTikTok() as fake:
        plan: list[tuple[str, Path | None]] = ([("before", args.before)] if args.before else []) + [("after", None)]
        for label, tree in plan:
            run = await measure_server(fake, args, label, tree)
            result["runs"].append(run)
            _print(run)
        if args.bare:
            run = await measure_bare(fake, args)
            result["runs"].append(run)
            _print(run)
    write_result("capacity", result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1.0, help="events per second per session")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the steady run")
    parser.add_argument("--before", type=Path, help="also measure the server of this checkout, first")
    parser.add_argument("--bare", action="store_true", help="also measure the bare aiohttp relay (the floor)")
    parser.add_argument("--py-spy", type=Path, help="record the servers' profiles during the steady runs here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
