"""The connection layer (ttboost/protocol.py): aiohttp's own parser errors in the envelope, the header read
timeout, the connection cap, accept errors logged once per interval. The real app on a local port, raw sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from tests.conftest import make_config
from tests.fake_live import ScriptedSource
from tests.fake_tts import FakeEngine
from tests.helpers import Clock, make_user
from ttboost.app import create_app
from ttboost.protocol import AcceptErrorLog, HardenedRunner

HEADER_TIMEOUT = 0.3  # seconds; shrunk so the test waits little
BODY_TIMEOUT = 0.3
MAX_CONNECTIONS = 6


class Site:
    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner, self.port = runner, port

    @property
    def app(self) -> web.Application:
        return self.runner.app  # type: ignore[attr-defined, no-any-return]

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """Sends raw bytes, reads one whole response (the server closes after an error)."""
        reader, writer = await self.open()
        try:
            writer.write(raw)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return status, headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    config = make_config(tmp_path / "data", server={"public_url": "http://testserver", "body_timeout": BODY_TIMEOUT})
    app = create_app(config, live_source=ScriptedSource(), tts_engine=FakeEngine())
    runner = HardenedRunner(app, header_timeout=HEADER_TIMEOUT, max_connections=MAX_CONNECTIONS, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Site(runner, port)
    finally:
        await runner.cleanup()


MARKER = "ZZMARKERZZ"


@pytest.mark.parametrize("raw", [
    f"GET /{MARKER}{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # request line over 8190 bytes
    f"GET / HTTP/1.1\r\nHost: x\r\nX-Long: {MARKER}{'b' * 9000}\r\n\r\n".encode(),  # header over 8190 bytes
    f"GET /{MARKER}\xff HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"),  # a byte that is no URL
    f"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: {MARKER}\x00\r\n\r\n".encode(),  # NUL in a header
    f"{MARKER} nonsense\r\n\r\n".encode(),  # no HTTP at all
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",  # too many headers
    b"POST /v2/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST /v2/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
])
async def test_parser_errors_answer_in_the_envelope(site: Site, raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, headers, body = await site.exchange(raw)
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    assert headers["server"] == "TTBoost"
    data = json.loads(body)
    assert set(data) == {"detail", "code"} and data["code"] == "bad_request"
    assert MARKER.encode() not in body
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert MARKER not in caplog.text


async def test_a_request_whose_headers_trickle_is_closed_and_others_are_served(site: Site) -> None:
    reader, writer = await site.open()
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    await writer.drain()
    assert await closed_by_server(reader)
    writer.close()
    # a kept-alive connection: the next request's headers are on the clock too, the first request's were not
    reader, writer = await site.open()
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _headers, _body = await read_response(reader)
    assert status == 200
    writer.write(b"GET /health HTTP/1.1\r\n")
    await writer.drain()
    assert await closed_by_server(reader)
    writer.close()


async def test_a_json_body_that_trickles_is_answered_408(site: Site) -> None:
    # Headers on time, then the body a byte now and then: the handler waited for it for ever, and such a
    # connection counts as busy, so a few hundred of them shut everyone else out (503) despite header_timeout.
    reader, writer = await site.open()
    writer.write(b"POST /v2/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 40\r\n\r\n{\"us")
    await writer.drain()
    status, headers, body = await read_response(reader)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body) == {"detail": "request timeout", "code": "request_timeout"}
    writer.close()
    status, _headers, _body = await site.exchange(b"POST /v2/auth/login HTTP/1.1\r\nHost: x\r\n"
                                                  b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    assert status == 422  # a body sent at once is read as ever


async def test_the_oldest_idle_connection_makes_room(site: Site) -> None:
    idle = [await site.open() for _ in range(MAX_CONNECTIONS)]
    for _reader, writer in idle:
        writer.write(b"GET /health HTTP/1.1\r\nX-Slow: ")
    status, _headers, body = await site.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert await closed_by_server(idle[0][0])  # the oldest went
    for _reader, writer in idle:
        writer.close()


async def test_with_every_connection_busy_a_new_one_gets_503(site: Site) -> None:
    """WebSockets are never displaced: with the cap taken by them, a new connection is refused in the envelope."""
    sockets = []
    for i in range(MAX_CONNECTIONS):
        _user_id, token = await make_user(site.app, f"user{i}")  # one socket per user: a user's second replaces
        reader, writer = await site.open()
        writer.write((f"GET /v2/ws?token={token}&demo=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        sockets.append(writer)
    status, headers, body = await site.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503 and headers["retry-after"] == "1" and headers["server"] == "TTBoost"
    assert json.loads(body) == {"detail": "busy, try again", "code": "busy"}
    for writer in sockets:
        writer.close()


def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    handler = AcceptErrorLog(interval=60, clock=clock)
    loop = asyncio.new_event_loop()
    try:
        context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many")}
        with caplog.at_level(logging.ERROR):
            for _ in range(5000):
                handler(loop, context)
            clock.now += 61
            handler(loop, context)
    finally:
        loop.close()
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 2 and "4999 more" in lines[1].getMessage()
    assert not [r for r in lines if r.exc_info]
