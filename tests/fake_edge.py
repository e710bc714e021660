"""A local stand-in for the edge-tts service: enough of its WebSocket protocol for the real client to work."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import WSMsgType, web

_JSON = "Content-Type:application/json; charset=utf-8"
MODES = ("ok", "fail", "refuse", "empty", "slow")


class FakeEdge:
    """Answers every synthesis with `audio`, in `chunks` binary frames, the way the real service frames them.

    Modes: ok; fail (first chunk, then the socket closes without turn.end); refuse (HTTP 503 instead of the
    WebSocket); empty (turn.start and turn.end, no audio); slow (first chunk, then waits for `release`).
    """

    def __init__(self, audio: bytes, *, chunks: int = 3, mode: str = "ok") -> None:
        assert mode in MODES
        self.audio = audio
        self.chunks = chunks
        self.mode = mode
        self.release = asyncio.Event()  # slow mode: set it to let the rest of the audio go
        self.first_sent = asyncio.Event()  # set once a first audio frame is on the wire
        self.ssml: list[str] = []  # every SSML request received, to check voice, rate and text
        self.voice_list: list[dict[str, Any]] = [
            {"ShortName": "ru-RU-SvetlanaNeural", "Gender": "Female", "Locale": "ru-RU"},
            {"ShortName": "en-US-JennyNeural", "Gender": "Female", "Locale": "en-US"},
            {"ShortName": "de-DE-ConradNeural", "Gender": "Male", "Locale": "de-DE"},
        ]
        self.app = web.Application()
        self.app.router.add_get("/edge/v1", self._synthesize)
        self.app.router.add_get("/voices/list", self._voices)

    async def _voices(self, request: web.Request) -> web.Response:
        return web.json_response(self.voice_list)

    async def _synthesize(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "refuse":
            raise web.HTTPServiceUnavailable()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        request_id = ""
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            headers, _, body = msg.data.partition("\r\n\r\n")
            if "Path:ssml" not in headers:
                continue  # speech.config
            self.ssml.append(body)
            request_id = next((line.split(":", 1)[1] for line in headers.split("\r\n")
                               if line.startswith("X-RequestId:")), uuid.uuid4().hex)
            await self._answer(ws, request_id)
            if self.mode == "fail":
                break
        await ws.close()
        return ws

    async def _answer(self, ws: web.WebSocketResponse, request_id: str) -> None:
        await ws.send_str(f"X-RequestId:{request_id}\r\n{_JSON}\r\nPath:turn.start\r\n\r\n"
                          + json.dumps({"context": {"serviceTag": "fake"}}))
        if self.mode != "empty":
            size = -(-len(self.audio) // self.chunks)
            for index, start in enumerate(range(0, len(self.audio), size)):
                await ws.send_bytes(_audio_frame(request_id, self.audio[start:start + size]))
                self.first_sent.set()
                if self.mode == "fail":
                    return
                if self.mode == "slow" and index == 0:
                    await self.release.wait()
            await ws.send_bytes(_audio_frame(request_id, b""))  # the real service ends with an empty frame
        await ws.send_str(f"X-RequestId:{request_id}\r\n{_JSON}\r\nPath:turn.end\r\n\r\n{{}}")


def _audio_frame(request_id: str, data: bytes) -> bytes:
    """2-byte big-endian header length, the headers, then the MP3 bytes (no Content-Type on the last frame)."""
    content_type = "Content-Type:audio/mpeg\r\n" if data else ""
    headers = f"X-RequestId:{request_id}\r\n{content_type}X-StreamId:fake\r\nPath:audio\r\n".encode()
    return len(headers).to_bytes(2, "big") + headers + data
