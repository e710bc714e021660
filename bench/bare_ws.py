"""Baseline: a bare aiohttp WebSocket relay, the least any server could do on the same path.

GET /ws?src=<ws url> opens a WebSocket client to `src` (the fake TikTok push socket) and forwards every
binary message, unchanged, to the connected client: two WebSocket hops and one event loop, no parsing,
no pipeline. Run as its own process by bench_pipeline.py, on 127.0.0.1:$TTBOOST_SERVER_PORT.
"""

from __future__ import annotations

import os

import aiohttp
from aiohttp import web


async def relay(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(request.query["src"], protocols=("echo-protocol",)) as source:
            async for msg in source:
                if msg.type is not aiohttp.WSMsgType.BINARY or ws.closed:
                    break
                await ws.send_bytes(msg.data)
    await ws.close()
    return ws


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    app = web.Application()
    app.router.add_get("/ws", relay)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["TTBOOST_SERVER_PORT"]), access_log=None, print=None)


if __name__ == "__main__":
    main()
