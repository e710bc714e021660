"""Pipeline benchmark: event → WebSocket frame latency (p50/p99) at 500 events/s and the maximum sustained rate.

Four paths, each with its own server process and the same load generator / WebSocket client (this process):

  push      fake TikTok push socket → TikTokLive (protobuf, gzip, acks) → adapter → pipeline → WebSocket
            (`python run.py`, the production server, TikTok URLs pointed at tests/fake_tiktok.py)
  simulate  POST /v2/events/simulate → pipeline → WebSocket  (same server; HTTP + auth per event included)
  raw       a line-based local feed → pipeline → WebSocket   (bench/serve_raw.py: the real app with the
            TikTok source replaced, i.e. the server's own pipeline without the library)
  bare      fake push socket → a bare aiohttp relay → WebSocket (bench/bare_ws.py: the floor, no pipeline)

The user has the 100 triggers of bench/workload.py (set through the HTTP API) and the default settings (chat
speech on; speech goes to a local fake edge-tts that answers after 500 ms). Each event carries its index in the
viewer's nickname; the send time is taken right before the frame/line/request leaves this process and the
receive time when the WebSocket frame arrives (both time.perf_counter(), CLOCK_MONOTONIC).

A rate counts as sustained when every event arrived, the sender kept the pace (≥ 97 %), the median latency of
the last 20 % of events stayed ≤ 5 ms (a growing backlog shows up there first) and the p99 stayed ≤ 20 ms.
The push path is also ramped with 10 messages per push frame, as TikTok batches them in busy rooms (fewer
frames, acks and gzip streams per event).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Final

import aiohttp
from aiohttp import web

from bench.common import (
    Server, auth, cpu_seconds, insert_users, machine, percentile, rss_kb, summary_ms, tokens, write_result,
)
from bench.fake_push import BenchTikTok, FrameFactory
from bench.workload import STREAMER, EventSpec, configure_streamer, event_spec, index_in

LATENCY_RATE: Final = 500  # events/s for the latency figures
WARMUP_RATE: Final = 200  # events/s of the warm-up run before the figures (first parses, caches, first speech)
WARMUP_SECONDS: Final = 1.5
LADDER: Final = (1000, 2000, 3000, 4000, 5000, 6000, 8000, 10_000, 12_000, 15_000, 20_000, 25_000, 30_000, 40_000)
PUSH_LADDER: Final = (500, 750, 1000, 1250, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10_000)
PUSH_BATCH: Final = 10  # messages per push frame in the batched ramp (TikTok batches in busy rooms)
DRAIN_SECONDS: Final = 3.0  # after the last send, how long the client waits for the remaining frames
BACKLOG_P50_MS: Final = 5.0  # median latency of the last 20 % above this: the server is falling behind
SUSTAINED_P99_MS: Final = 20.0  # p99 above this: keeping up only with long queues, not sustained
PACE_MIN: Final = 0.97  # the sender must reach this share of the asked rate
EDGE_DELAY: Final = 0.5  # seconds the fake edge-tts takes per phrase (the real one: ~0.5-1.5 s)
SIMULATE_CONCURRENCY: Final = 32  # keep-alive connections for the simulate path
PROFILE_DIR: Path | None = None  # set by --py-spy


@dataclass
class Run:
    path: str
    rate: int
    seconds: float
    sent_at: list[float]
    recv_at: list[float]
    send_seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    closed: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        got = [(s, r) for s, r in zip(self.sent_at, self.recv_at) if r > 0]
        lat = [r - s for s, r in got]
        n = len(self.sent_at)
        tail = [r - s for s, r in got[int(len(got) * 0.8):]]
        achieved = n / self.send_seconds if self.send_seconds else 0.0
        received_span = (max(r for _, r in got) - min(s for s, _ in got)) if got else 0.0
        tail_p50 = percentile(tail, 50) * 1000 if tail else float("inf")
        sustained = (len(got) == n and achieved >= PACE_MIN * self.rate and tail_p50 <= BACKLOG_P50_MS
                     and percentile(lat, 99) * 1000 <= SUSTAINED_P99_MS and not self.closed)
        return {
            "path": self.path, "rate": self.rate, "events": n, "received": len(got),
            "achieved_send_rate": round(achieved), "delivered_rate": round(len(got) / received_span)
            if received_span else 0, "latency": summary_ms(lat), "tail_p50_ms": round(tail_p50, 3),
            "server_cpu_percent": round(100 * self.server_cpu / self.send_seconds, 1) if self.send_seconds else 0,
            "client_cpu_percent": round(100 * self.client_cpu / self.send_seconds, 1) if self.send_seconds else 0,
            "sustained": sustained, **({"closed": self.closed} if self.closed else {}), **self.extra,
        }


class Receiver:
    """Reads the client WebSocket; stamps the arrival of each expected event index."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, index: Callable[[aiohttp.WSMessage], int]) -> None:
        self._ws = ws
        self._index = index
        self._start = 0
        self._recv_at: list[float] = []
        self._left = 0
        self.done = asyncio.Event()
        self.closed = ""
        self.task = asyncio.create_task(self._run())

    def expect(self, start: int, n: int) -> list[float]:
        self._start, self._recv_at, self._left = start, [0.0] * n, n
        self.done.clear()
        return self._recv_at

    async def _run(self) -> None:
        ws, clock = self._ws, time.perf_counter
        while True:
            msg = await ws.receive()
            now = clock()
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                pos = self._index(msg) - self._start
                if 0 <= pos < len(self._recv_at) and not self._recv_at[pos]:
                    self._recv_at[pos] = now
                    self._left -= 1
                    if not self._left:
                        self.done.set()
            else:
                self.closed = f"{msg.type.name} {ws.close_code}"
                self.done.set()
                return

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self._ws.close()


def _text_index(msg: aiohttp.WSMessage) -> int:
    return index_in(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else -1


Send = Callable[[int], Awaitable[None] | None]


async def drive(path: str, receiver: Receiver, prepare: Callable[[list[EventSpec]], Send], *, start: int,
                rate: int, seconds: float, pid: int, after_send: Callable[[], Awaitable[None]] | None = None,
                batch: int = 1) -> Run:
    """Sends rate×seconds events at a steady pace, then waits for their frames."""
    n = max(1, int(rate * seconds))
    send = prepare([event_spec(start + i) for i in range(n)])
    sent_at = [0.0] * n
    recv_at = receiver.expect(start, n)
    cpu0, own0 = cpu_seconds(pid), _own_cpu()
    clock = time.perf_counter
    t0 = clock()
    i = 0
    while i < n:
        due = min(n, int((clock() - t0) * rate) + 1)
        while i < due:
            # With batch > 1, send(i) sends events i … i+batch-1 in one frame: they share the send time.
            end = min(n, i + batch)
            now = clock()
            for j in range(i, end):
                sent_at[j] = now
            pending = send(i)
            if pending is not None:
                await pending
            i = end
        delay = t0 + i / rate - clock()
        await asyncio.sleep(delay if delay > 0 else 0)
    send_seconds = clock() - t0
    if after_send is not None:
        await after_send()
    cpu, own = cpu_seconds(pid) - cpu0, _own_cpu() - own0
    try:
        await asyncio.wait_for(receiver.done.wait(), DRAIN_SECONDS)
    except asyncio.TimeoutError:
        pass
    return Run(path, rate, seconds, sent_at, recv_at, send_seconds, cpu, own, receiver.closed)


def _py_spy(path: str, pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """With --py-spy DIR: a sampling profile of the server during the 500 events/s run (GIL-holding samples,
    folded stacks: DIR/<path>.folded; `py-spy` must be installed)."""
    if PROFILE_DIR is None:
        return None
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = PROFILE_DIR / f"{path.replace('×', 'x')}.folded"
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--gil", "--rate", "500", "--format", "raw",
                             "--duration", str(max(1, int(seconds))), "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _own_cpu() -> float:
    """CPU seconds of this process (the load generator and client): it shares the machine with the server."""
    times = os.times()
    return times.user + times.system


async def latency_runs(path: str, receiver: Receiver, prepare: Callable[[list[EventSpec]], Send], *, start: int,
                       seconds: float, pid: int, after_send: Callable[[], Awaitable[None]] | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any], int]:
    """A warm-up run (reported apart: first parses, caches, the first phrases), then the 500 events/s run."""
    warm = await drive(path, receiver, prepare, start=start, rate=WARMUP_RATE, seconds=WARMUP_SECONDS, pid=pid,
                       after_send=after_send)
    start += len(warm.sent_at)
    profiler = _py_spy(path, pid, seconds)
    run = await drive(path, receiver, prepare, start=start, rate=LATENCY_RATE, seconds=seconds, pid=pid,
                      after_send=after_send)
    if profiler is not None:
        await asyncio.to_thread(profiler.wait)
    figures = run.figures()
    print(f"  {path} @{LATENCY_RATE}/s", figures["latency"], f"server cpu {figures['server_cpu_percent']}%",
          flush=True)
    return figures, warm.figures(), start + len(run.sent_at)


async def ramp(path: str, receiver: Receiver, prepare: Callable[[list[EventSpec]], Send], *, start: int,
               seconds: float, pid: int, ladder: tuple[int, ...] = LADDER,
               after_send: Callable[[], Awaitable[None]] | None = None,
               batch: int = 1) -> tuple[list[dict[str, Any]], int, int]:
    """Steps up the ladder until a rate is not sustained; returns the steps, the best rate and the next start."""
    steps: list[dict[str, Any]] = []
    best = 0
    for rate in ladder:
        run = await drive(path, receiver, prepare, start=start, rate=rate, seconds=seconds, pid=pid,
                          after_send=after_send, batch=batch)
        start += len(run.sent_at)
        figures = run.figures()
        steps.append(figures)
        print(f"  {path:8s} {rate:6d}/s  sent {figures['achieved_send_rate']:6d}/s  p50 "
              f"{figures['latency']['p50_ms']:8.2f} ms  p99 {figures['latency']['p99_ms']:8.2f} ms  tail p50 "
              f"{figures['tail_p50_ms']:8.2f} ms  cpu {figures['server_cpu_percent']:5.1f}%  "
              f"{'ok' if figures['sustained'] else 'NOT SUSTAINED'}", flush=True)
        if not figures["sustained"]:
            break
        best = rate
        await asyncio.sleep(0.3)
    return steps, best, start


# --- the paths ---------------------------------------------------------------------------------------------


class SlowEdge:
    """A local edge-tts stand-in answering each phrase after EDGE_DELAY (tests/fake_edge.py's protocol)."""

    def __init__(self) -> None:
        from tests.fake_edge import FakeEdge
        from bench.workload import make_mp3

        edge = FakeEdge(make_mp3(0.2))
        answer = edge._answer

        async def slow_answer(ws: web.WebSocketResponse, request_id: str) -> None:
            await asyncio.sleep(EDGE_DELAY)
            try:
                await answer(ws, request_id)
            except (aiohttp.ClientConnectionResetError, ConnectionError):
                pass  # the server shut down mid-phrase

        edge._answer = slow_answer  # type: ignore[method-assign]
        self.edge = edge
        self.runner = web.AppRunner(edge.app, access_log=None)
        self.url = ""

    async def __aenter__(self) -> SlowEdge:
        from bench.common import free_port

        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"ws://127.0.0.1:{port}/edge/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def _server_env(fake: BenchTikTok, edge_url: str) -> dict[str, str]:
    cfg = fake.config()
    return {
        "TTBOOST_TIKTOK_SIGN_API_URL": cfg.sign_api_url, "TTBOOST_TIKTOK_APP_URL": cfg.app_url,
        "TTBOOST_TIKTOK_WEBCAST_URL": cfg.webcast_url, "TTBOOST_TIKTOK_SIGN_API_KEY": "bench",
        "TTBOOST_TTS_EDGE_WSS_URL": edge_url,
        # The benchmark configures 100 triggers and sends thousands of simulations a minute: no rate limits.
        "TTBOOST_LIMITS_TRIGGERS_PER_MINUTE": "0", "TTBOOST_LIMITS_TTS_PER_MINUTE": "0",
        "TTBOOST_LIMITS_UPLOAD_PER_MINUTE": "0",
    }


async def _streamer_socket(session: aiohttp.ClientSession, server: Server) -> tuple[aiohttp.ClientWebSocketResponse,
                                                                                     str]:
    [user_id] = insert_users(server.db_path, ["benchuser"])
    [token] = tokens([user_id])
    setup = await configure_streamer(session, server.url, token)
    assert setup["triggers"] == 100, setup
    ws = await session.ws_connect(f"{server.url.replace('http', 'ws', 1)}/v2/ws?token={token}",
                                  max_msg_size=0)
    return ws, token


async def _wait_connected(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Status frames until "connected" (auto_connect started the LIVE watch when the socket opened)."""
    async with asyncio.timeout(20):
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"socket closed before the LIVE connected: {msg}")
            if '"type":"status"' in msg.data and '"state":"connected"' in msg.data:
                return
            if '"type":"error"' in msg.data:
                raise RuntimeError(msg.data)


async def bench_production(fake: BenchTikTok, edge: SlowEdge, args: argparse.Namespace) -> dict[str, Any]:
    """push and simulate, against `python run.py`."""
    out: dict[str, Any] = {}
    fake.set_user(STREAMER)
    async with Server(_server_env(fake, edge.url)) as server, aiohttp.ClientSession() as session:
        ws, token = await _streamer_socket(session, server)
        await _wait_connected(ws)
        await fake.wait_connected()
        factory = FrameFactory(fake.room_id)
        receiver = Receiver(ws, _text_index)

        def push(specs: list[EventSpec]) -> Send:
            frames = [factory.frame(s) for s in specs]
            socket = fake.push_socket()
            return lambda i: socket.send_bytes(frames[i])

        out["push_latency"], out["push_warmup"], start = await latency_runs(
            "push", receiver, push, start=0, seconds=args.seconds, pid=server.pid)

        connector_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=SIMULATE_CONCURRENCY))
        pending: set[asyncio.Task[None]] = set()
        statuses: dict[int, int] = {}

        async def post(body: dict[str, Any]) -> None:
            async with connector_session.post(f"{server.url}/v2/events/simulate", json=body,
                                              headers=auth(token)) as resp:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                await resp.read()

        def simulate(specs: list[EventSpec]) -> Send:
            bodies = [_simulate_body(s) for s in specs]

            def send(i: int) -> None:
                task = asyncio.create_task(post(bodies[i]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            return send

        async def wait_posts() -> None:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

        try:
            figures, out["simulate_warmup"], start = await latency_runs(
                "simulate", receiver, simulate, start=start, seconds=args.seconds, pid=server.pid,
                after_send=wait_posts)
            out["simulate_latency"] = {**figures, "http_statuses": dict(statuses)}
        finally:
            await connector_session.close()

        steps, best, start = await ramp("push", receiver, push, start=start, seconds=args.step_seconds,
                                        pid=server.pid, ladder=PUSH_LADDER)
        out["push_ramp"], out["push_max_sustained"] = steps, best

        def push_batched(specs: list[EventSpec]) -> Send:
            frames = [factory.batch(specs[k:k + PUSH_BATCH]) for k in range(0, len(specs), PUSH_BATCH)]
            socket = fake.push_socket()
            return lambda i: socket.send_bytes(frames[i // PUSH_BATCH])

        await asyncio.sleep(1.0)  # let the previous step's backlog drain
        steps, best, start = await ramp(f"push×{PUSH_BATCH}", receiver, push_batched, start=start,
                                        seconds=args.step_seconds, pid=server.pid, ladder=PUSH_LADDER,
                                        batch=PUSH_BATCH)
        out["push_batched_ramp"], out["push_batched_max_sustained"] = steps, best
        out["push_batch"] = PUSH_BATCH
        await receiver.close()
    return out


def _simulate_body(spec: EventSpec) -> dict[str, Any]:
    body: dict[str, Any] = {"type": spec.type, "user": spec.nickname}
    if spec.type == "chat":
        body["message"] = spec.message
    elif spec.type == "gift":
        body.update(gift_id=spec.gift_id, gift_name=spec.gift_name, diamond_count=spec.diamonds)
    else:
        body["likes"] = spec.like_count
    return body


def _raw_line(spec: EventSpec) -> bytes:
    head = f"{spec.type}\t{spec.nickname}\t{spec.handle}\t{spec.user_id}\t"
    if spec.type == "chat":
        return (head + spec.message + "\n").encode()
    if spec.type == "gift":
        return (head + f"{spec.gift_id}\t{spec.gift_name}\t{spec.diamonds}\n").encode()
    return (head + f"{spec.like_count}\t{spec.like_total}\n").encode()


async def bench_raw(edge: SlowEdge, args: argparse.Namespace) -> dict[str, Any]:
    """The server's own pipeline (bench/serve_raw.py): no TikTokLive in the path."""
    out: dict[str, Any] = {}
    feed: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_feed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await feed.put(writer)

    feed_server = await asyncio.start_server(on_feed, "127.0.0.1", 0)
    port = feed_server.sockets[0].getsockname()[1]
    env = {**_server_env_offline(edge.url), "BENCH_RAW_PORT": str(port)}
    try:
        async with Server(env, script="bench/serve_raw.py") as server, aiohttp.ClientSession() as session:
            ws, _ = await _streamer_socket(session, server)
            await _wait_connected(ws)
            writer = await asyncio.wait_for(feed.get(), 10)
            receiver = Receiver(ws, _text_index)

            def raw(specs: list[EventSpec]) -> Send:
                lines = [_raw_line(s) for s in specs]
                return lambda i: writer.write(lines[i])

            async def drain() -> None:
                await writer.drain()

            out["raw_latency"], out["raw_warmup"], start = await latency_runs(
                "raw", receiver, raw, start=0, seconds=args.seconds, pid=server.pid, after_send=drain)
            steps, best, start = await ramp("raw", receiver, raw, start=start, seconds=args.step_seconds,
                                            pid=server.pid, after_send=drain)
            out["raw_ramp"], out["raw_max_sustained"] = steps, best
            out["rss_after_raw_kb"] = rss_kb(server.pid)
            await receiver.close()
            writer.close()
    finally:
        feed_server.close()
        await feed_server.wait_closed()
    return out


def _server_env_offline(edge_url: str) -> dict[str, str]:
    return {"TTBOOST_TTS_EDGE_WSS_URL": edge_url, "TTBOOST_LIMITS_TRIGGERS_PER_MINUTE": "0",
            "TTBOOST_LIMITS_TTS_PER_MINUTE": "0", "TTBOOST_LIMITS_UPLOAD_PER_MINUTE": "0"}


async def bench_bare(fake: BenchTikTok, args: argparse.Namespace) -> dict[str, Any]:
    """The floor: the same fake push frames relayed by a bare aiohttp server."""
    out: dict[str, Any] = {}
    fake.set_user("bare")
    async with Server(script="bench/bare_ws.py") as server, aiohttp.ClientSession() as session:
        push_url = fake.tiktok_url.replace("http", "ws", 1) + "/webcast/im/push/v2/?room_id=1"
        before = fake.connections
        ws = await session.ws_connect(f"{server.url.replace('http', 'ws', 1)}/ws",
                                      params={"src": push_url}, max_msg_size=0)
        async with asyncio.timeout(10):
            while fake.connections == before:
                await asyncio.sleep(0.01)
        factory = FrameFactory(1)
        index_of: dict[bytes, int] = {}
        receiver = Receiver(ws, lambda msg: index_of.get(msg.data, -1) if msg.type is aiohttp.WSMsgType.BINARY
                            else -1)

        def push(specs: list[EventSpec]) -> Send:
            frames = [factory.frame(s) for s in specs]
            index_of.clear()
            index_of.update((frame, spec.idx) for frame, spec in zip(frames, specs))
            socket = fake.push_socket()
            return lambda i: socket.send_bytes(frames[i])

        out["bare_latency"], out["bare_warmup"], start = await latency_runs(
            "bare", receiver, push, start=0, seconds=args.seconds, pid=server.pid)
        steps, best, _ = await ramp("bare", receiver, push, start=start, seconds=args.step_seconds,
                                    pid=server.pid)
        out["bare_ramp"], out["bare_max_sustained"] = steps, best
        await receiver.close()
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    global PROFILE_DIR
    PROFILE_DIR = getattr(args, "py_spy", None)
    result: dict[str, Any] = {"benchmark": "pipeline", "machine": machine(), "latency_rate": LATENCY_RATE,
                              "seconds_per_latency_run": args.seconds, "seconds_per_ramp_step": args.step_seconds,
                              "triggers": 100}
    paths = set(args.paths.split(","))
    async with BenchTikTok() as fake, SlowEdge() as edge:
        if "bare" in paths:
            print("bare aiohttp relay (baseline)", flush=True)
            result.update(await bench_bare(fake, args))
        if "push" in paths:
            print("python run.py: fake TikTok push (TikTokLive) and simulate", flush=True)
            result.update(await bench_production(fake, edge, args))
    if "raw" in paths:
        async with SlowEdge() as edge:
            print("server pipeline without TikTokLive (bench/serve_raw.py)", flush=True)
            result.update(await bench_raw(edge, args))
    write_result("pipeline", result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each 500 events/s run")
    parser.add_argument("--step-seconds", type=float, default=2.0, help="length of each ramp step")
    parser.add_argument("--paths", default="bare,push,raw", help="comma-separated: bare,push,raw")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile each server's 500 events/s run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
