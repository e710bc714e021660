"""The connection layer (ttboost/protocol.py): aiohttp's own parser errors in the envelope, the header read
timeout, the connection cap, accept errors logged once per interval. The real app on a local port, raw sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from tests.conftest import make_config
from tests.fake_live import ScriptedSource
from tests.fake_tts import FakeEngine
from tests.helpers import Clock, eventually, make_user
from ttboost.app import create_app
from ttboost.protocol import AcceptErrorLog, HardenedRunner

HEADER_TIMEOUT = 0.3  # seconds; shrunk so the header-timeout test waits little (that test sets it)
# Every other test: a ceiling. 0.3 s for all made a loaded machine's pause between a test client's connect and its
# first bytes close the connection under it (RST: the malformed-header cases failed CI with ECONNRESET).
HEADER_CEILING = 10.0
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


def send_after_the_answer(port: int, first: bytes, more: bytes) -> bytes:
    """A blocking client that goes on sending after the server has answered and closed its sending side, as one
    still uploading a large request does: sends `first`, waits for the server's FIN (after its answer), sends
    `more` a kilobyte at a time, then reads to EOF. A server that closed the whole socket answers `more` with RST:
    the next send fails (BrokenPipeError), or the answer is lost (ConnectionResetError)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(first)
        poller = select.poll()
        poller.register(sock, select.POLLRDHUP)
        assert poller.poll(10_000), "no FIN from the server"
        for start in range(0, len(more), 1024):
            sock.sendall(more[start:start + 1024])
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert len(body) == int(headers["content-length"]), raw  # the whole answer, then EOF
    return int(lines[0].split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    config = make_config(tmp_path / "data", server={"public_url": "http://testserver", "body_timeout": BODY_TIMEOUT})
    app = create_app(config, live_source=ScriptedSource(), tts_engine=FakeEngine())
    runner = HardenedRunner(app, header_timeout=HEADER_CEILING, max_connections=MAX_CONNECTIONS, access_log=None)
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


async def test_a_client_still_sending_after_a_parser_error_reads_the_answer(site: Site) -> None:
    # Headers past 8,190 bytes: aiohttp's parser fails while the client is still sending them. The server answers,
    # half-closes and drops the rest until the client closes, so the 400 is read instead of a reset.
    site.runner.server.linger_seconds = 30  # a ceiling only: the server closes as soon as this client does
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000
    answer = await asyncio.to_thread(send_after_the_answer, site.port, head, b"a" * 50_000 + b"\r\n\r\n")
    status, headers, body = split_response(answer)
    assert status == 400 and headers["server"] == "TTBoost"
    assert json.loads(body) == {"detail": "bad request", "code": "bad_request"}
    assert await eventually(lambda: len(site.runner.server.connections), lambda n: n == 0) == 0


async def test_a_lingering_connection_is_closed_after_linger_seconds(site: Site) -> None:
    site.runner.server.linger_seconds = 0.2
    reader, writer = await site.open()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: \x00\r\n\r\n")
    status, _headers, _body = await read_response(reader)
    assert status == 400
    assert await asyncio.wait_for(reader.read(), 5) == b""  # half-closed: the answer, then EOF
    # this client never closes its end: the server stops waiting for it after linger_seconds
    assert await eventually(lambda: len(site.runner.server.connections), lambda n: n == 0) == 0
    writer.close()


async def test_a_request_whose_headers_trickle_is_closed_and_others_are_served(site: Site) -> None:
    site.runner.server.header_timeout = HEADER_TIMEOUT
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


async def open_idle(site: Site, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Connections halfway through their request headers (idle: displaceable)."""
    idle = [await site.open() for _ in range(count)]
    for _reader, writer in idle:
        writer.write(b"GET /health HTTP/1.1\r\nX-Slow: ")
        await writer.drain()
    return idle


async def test_the_oldest_idle_connection_makes_room(site: Site) -> None:
    site.runner.server.header_timeout = 30  # a ceiling: the idle ones must not time out under a slow test
    idle = await open_idle(site, MAX_CONNECTIONS)
    status, _headers, body = await site.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert await closed_by_server(idle[0][0])  # the oldest went
    idle[1][1].write(b"1\r\nHost: x\r\n\r\n")  # the next one did not
    assert (await read_response(idle[1][0]))[0] == 200
    for _reader, writer in idle:
        writer.close()


async def test_a_lingering_connection_makes_room_before_an_idle_one(site: Site) -> None:
    site.runner.server.header_timeout = site.runner.server.linger_seconds = 30  # ceilings, as above
    idle = await open_idle(site, MAX_CONNECTIONS - 1)
    reader, writer = await site.open()  # answered 400, lingering: its client keeps its end open
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: \x00\r\n\r\n")
    assert (await read_response(reader))[0] == 400
    status, _headers, _body = await site.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert await eventually(lambda: len(site.runner.server.connections), lambda n: n == MAX_CONNECTIONS - 1)
    idle[0][1].write(b"1\r\nHost: x\r\n\r\n")  # the oldest idle one is still there
    assert (await read_response(idle[0][0]))[0] == 200
    for _reader, idle_writer in [*idle, (reader, writer)]:
        idle_writer.close()


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
    # the 503 goes out as the connection opens, likely before its request arrives: that must not reset it
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 4000 + b"\r\n\r\n"
    answer = await asyncio.to_thread(send_after_the_answer, site.port, b"", request)
    assert split_response(answer)[0] == 503
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
