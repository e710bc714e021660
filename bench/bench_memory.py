"""Memory benchmark: the server's RSS (/proc/<pid>/status VmRSS) idle, with one LIVE session, with 1,000 sockets.

`python run.py` in its own process, TikTok pointed at the fake (bench/fake_push.py) in this process:
  1. idle: after start-up and a short settle;
  2. one LIVE session: one streamer (100 triggers, 5 sounds, chat speech to a local fake edge-tts), its app
     socket open, the LIVE connected through TikTokLive (imported now), and a few thousand events pushed;
  3. 1,000 WebSocket clients more: 1,000 other accounts (made by direct inserts: no bcrypt), one socket each,
     auto-connect off (an idle app), each socket open and past its first frame; the LIVE session still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Final

import aiohttp

from bench.bench_pipeline import Receiver, SlowEdge, _server_env, _streamer_socket, _text_index, _wait_connected, drive
from bench.common import Server, insert_users, machine, maps_library, tokens, write_result
from bench.fake_push import BenchTikTok, FrameFactory
from bench.workload import STREAMER, EventSpec

SETTLE: Final = 1.5  # seconds before each reading
OPEN_CONCURRENCY: Final = 50  # sockets being opened at once


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


async def _open_clients(session: aiohttp.ClientSession, base: str, user_tokens: list[str]
                        ) -> list[aiohttp.ClientWebSocketResponse]:
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one(token: str) -> aiohttp.ClientWebSocketResponse:
        async with gate:
            ws = await session.ws_connect(f"{base}/v2/ws?token={token}")
            msg = await ws.receive(timeout=30)  # the idle status frame: the server has set the socket up
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"socket closed at once: {msg}")
            return ws

    return list(await asyncio.gather(*(open_one(t) for t in user_tokens)))


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=5000, help="events pushed through the LIVE session")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "memory", "machine": machine(), "clients": args.clients}
    async with BenchTikTok() as fake, SlowEdge() as edge:
        fake.set_user(STREAMER)
        async with Server(_server_env(fake, edge.url)) as server:
            await asyncio.sleep(SETTLE)
            result["idle_mb"] = _mb(server.rss_kb())
            result["tiktoklive_loaded_when_idle"] = maps_library(server.pid, "pydantic_core")
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                ws, _ = await _streamer_socket(session, server)
                await _wait_connected(ws)
                await fake.wait_connected()
                result["live_connected_mb"] = _mb(server.rss_kb())
                result["tiktoklive_loaded_with_live"] = maps_library(server.pid, "pydantic_core")
                factory = FrameFactory(fake.room_id)
                receiver = Receiver(ws, _text_index)

                def push(specs: list[EventSpec]):  # type: ignore[no-untyped-def]
                    frames = [factory.frame(s) for s in specs]
                    socket = fake.push_socket()
                    return lambda i: socket.send_bytes(frames[i])

                run = await drive("push", receiver, push, start=0, rate=1000, seconds=args.events / 1000,
                                  pid=server.pid)
                result["events_pushed"] = len(run.sent_at)
                result["events_received"] = sum(1 for r in run.recv_at if r)
                await asyncio.sleep(SETTLE)
                result["live_session_mb"] = _mb(server.rss_kb())

                ids = insert_users(server.db_path, [f"idle{i:04d}" for i in range(args.clients)],
                                   settings={"auto_connect": False})
                began = time.perf_counter()
                clients = await _open_clients(session, server.url.replace("http", "ws", 1), tokens(ids))
                result["open_clients_s"] = round(time.perf_counter() - began, 2)
                await asyncio.sleep(SETTLE)
                async with session.get(server.url + "/health") as resp:
                    health = await resp.json()
                result["server_ws_clients"] = health["ws_clients"]
                result["server_live_sessions"] = health["live_sessions"]
                result["live_session_and_clients_mb"] = _mb(server.rss_kb())
                result["per_client_kb"] = round(
                    (result["live_session_and_clients_mb"] - result["live_session_mb"]) * 1024 / args.clients, 1)
                await asyncio.gather(*(c.close() for c in clients))
                await receiver.close()
    write_result("memory", result)
    return result


if __name__ == "__main__":
    asyncio.run(main())
