"""Hostile WebSocket traffic: thousands of bad messages, oversized frames, protocol violations, and 500 sockets
opening and closing at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import struct
import time
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient

from tests.fake_live import ScriptedSource
from tests.helpers import make_user
from ttboost import keys
from ttboost.sockets import CLOSE_REPLACED
from ttboost.ws import MAX_CLIENT_MESSAGE

SEED: Final = 20240607
TIMEOUT: Final = aiohttp.ClientTimeout(total=10)

# --- hostile WebSocket frames ----------------------------------------------------------------------------

async def next_frame(ws: aiohttp.ClientWebSocketResponse, type_: str) -> dict[str, Any]:
    """The next frame of a type, skipping status frames; anything else fails."""
    while True:
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if frame["type"] == type_:
            return frame
        assert frame["type"] == "status", frame


async def assert_socket_works(client: TestClient, token: str) -> None:
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await ws.send_json({"action": "ping"})
    await next_frame(ws, "pong")
    await ws.close()


async def wait_no_sockets(client: TestClient, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        body = await (await client.get("/health")).json()
        if body["ws_clients"] == 0:
            return
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.01)


@pytest.fixture
async def ws_client(make_client) -> tuple[TestClient, str]:
    client = await make_client(live_source=ScriptedSource())
    user_id, token = await make_user(client.app)
    await client.app[keys.SETTINGS].update(user_id, {"auto_connect": False})
    return client, token


async def test_thousands_of_bad_messages_each_get_an_error_and_the_socket_stays(ws_client) -> None:
    client, token = ws_client
    rng = random.Random(SEED)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    junk = ["", "{", "[]", "null", "1", '"x"', "{}", '{"action": 5}', '{"action": "fly"}',
            '{"action": "resume", "since": "x"}', '{"action": "connect_tiktok", "username": 7}']
    count = 3000
    # One burst without reading: many messages arrive in one read, and the replies must not count the client
    # as too slow (the reader waits for them to drain instead).
    for i in range(count):
        if i % 3 == 0:
            await ws.send_bytes(rng.randbytes(rng.randint(0, 64)))
        elif i % 3 == 1:
            await ws.send_str(rng.choice(junk))
        else:
            await ws.send_str("".join(chr(rng.randint(32, 0x24F)) for _ in range(rng.randint(1, 40))))
    await ws.send_json({"action": "ping"})
    for _ in range(count):
        assert (await next_frame(ws, "error"))["code"] == "bad_request"
    await next_frame(ws, "pong")
    await ws.close()


async def test_message_under_the_limit_is_read_at_the_limit_closes_1009(ws_client) -> None:
    client, token = ws_client
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    # aiohttp's max_msg_size is exclusive: the largest message read is one byte under 64 KiB.
    await ws.send_str("x" * (MAX_CLIENT_MESSAGE - 1))
    assert (await next_frame(ws, "error"))["code"] == "bad_request"
    await ws.send_str("x" * MAX_CLIENT_MESSAGE)
    msg = await ws.receive(timeout=5)
    while msg.type is WSMsgType.TEXT:
        msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.MESSAGE_TOO_BIG
    await ws.close()
    await wait_no_sockets(client)
    await assert_socket_works(client, token)


class RawSocket:
    """A hand-built client for frames aiohttp's own client will not produce (bad opcodes, lengths, UTF-8)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: random.Random) -> None:
        self.reader, self.writer, self.rng = reader, writer, rng

    @classmethod
    async def connect(cls, client: TestClient, path: str) -> RawSocket:
        rng = random.Random(SEED)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        key = base64.b64encode(rng.randbytes(16)).decode()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     .encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer, rng)

    def send(self, opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
             declared: int | None = None) -> None:
        """One masked client frame; `declared` puts another length in the header (and sends no payload)."""
        length = len(payload) if declared is None else declared
        head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
        if length < 126:
            head += bytes([0x80 | length])
        elif length < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = self.rng.randbytes(4)
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def close_code(self) -> int:
        """Reads the server's frames up to its close frame; answers it and returns its code."""
        while True:
            b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 5)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
            if b0 & 0x0F == 0x8:
                self.send(0x8, payload[:2])
                self.writer.close()
                return struct.unpack("!H", payload[:2])[0]


OP_CONT, OP_TEXT, OP_PING, OP_CLOSE = 0x0, 0x1, 0x9, 0x8
FRAME_FAULTS: Final = {
    "invalid UTF-8 text": ([(OP_TEXT, b'{"action": "\xff\xfe"}', {})], WSCloseCode.INVALID_TEXT),
    "reserved opcode": ([(0x3, b"x", {})], WSCloseCode.PROTOCOL_ERROR),
    "reserved bit without an extension": ([(OP_TEXT, b"{}", {"rsv": 0b100})], WSCloseCode.PROTOCOL_ERROR),
    "control frame over 125 bytes": ([(OP_PING, b"p" * 126, {})], WSCloseCode.PROTOCOL_ERROR),
    "fragmented control frame": ([(OP_PING, b"p", {"fin": False})], WSCloseCode.PROTOCOL_ERROR),
    "continuation without a start": ([(OP_CONT, b"x", {})], WSCloseCode.PROTOCOL_ERROR),
    "new message inside a fragmented one": ([(OP_TEXT, b"{", {"fin": False}), (OP_TEXT, b"}", {})],
                                            WSCloseCode.PROTOCOL_ERROR),
    "fragments adding up past the limit": ([(OP_TEXT, b"x" * 40_000, {"fin": False}),
                                            (OP_CONT, b"x" * 30_000, {})], WSCloseCode.MESSAGE_TOO_BIG),
    "header declaring a terabyte": ([(OP_TEXT, b"", {"declared": 1 << 40})], WSCloseCode.MESSAGE_TOO_BIG),
    "close with an invalid code": ([(OP_CLOSE, struct.pack("!H", 999), {})], WSCloseCode.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("fault", list(FRAME_FAULTS))
async def test_protocol_violations_close_with_their_code(ws_client, fault: str) -> None:
    client, token = ws_client
    frames, expected = FRAME_FAULTS[fault]
    raw = await RawSocket.connect(client, f"/v2/ws?token={token}")
    for opcode, payload, options in frames:
        raw.send(opcode, payload, **options)
    assert await raw.close_code() == expected
    await wait_no_sockets(client)
    await assert_socket_works(client, token)


# --- 500 sockets at once ---------------------------------------------------------------------------------

USERS: Final = 100
SOCKETS_PER_USER: Final = 5  # 500 handshakes at once


async def test_500_concurrent_sockets_open_and_close_cleanly(make_client) -> None:
    client = await make_client(live_source=ScriptedSource())
    app = client.app
    users = [await make_user(app, f"user{i:03d}") for i in range(USERS)]
    for user_id, _ in users:
        await app[keys.SETTINGS].update(user_id, {"auto_connect": False})
    await wait_no_sockets(client)
    # The app's own workers, the test client's keep-alive handler, this test. Counted, not compared as a set:
    # a worker waiting with asyncio.wait_for gets a new inner task on each round.
    baseline = len(asyncio.all_tasks())
    url = str(client.make_url("/v2/ws"))

    async def outcome(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str | None]:
        while (msg := await ws.receive(timeout=20)).type is WSMsgType.TEXT:
            pass
        return (msg.data, msg.extra) if msg.type is WSMsgType.CLOSE else (None, None)

    # The test client's session caps connections at 100 and a socket holds its connection: no cap here.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=TIMEOUT) as session:
        # Phase 1: 500 handshakes at once; per user the last one registered stays, the other four get 4001.
        sockets = await asyncio.gather(*(session.ws_connect(f"{url}?token={token}")
                                         for _, token in users for _ in range(SOCKETS_PER_USER)))
        readers = [asyncio.create_task(outcome(ws)) for ws in sockets]
        deadline = time.monotonic() + 15
        while ((await (await client.get("/health")).json())["ws_clients"] != USERS
               or sum(r.done() for r in readers) < USERS * (SOCKETS_PER_USER - 1)):
            assert time.monotonic() < deadline, sum(r.done() for r in readers)
            await asyncio.sleep(0.02)
        survivors = []
        for u in range(USERS):
            mine = list(zip(sockets, readers))[u * SOCKETS_PER_USER:(u + 1) * SOCKETS_PER_USER]
            replaced = [r.result() for _, r in mine if r.done()]
            assert replaced == [(CLOSE_REPLACED, "replaced")] * (SOCKETS_PER_USER - 1), (u, replaced)
            survivors += [ws for ws, r in mine if not r.done()]
        await asyncio.gather(*(ws.close() for ws in survivors))
        await asyncio.wait_for(asyncio.gather(*readers), 10)

        # Phase 2: churn: each user connects and closes at once, five times in a row, all users in parallel.
        async def churn(token: str) -> None:
            for _ in range(SOCKETS_PER_USER):
                ws = await session.ws_connect(f"{url}?token={token}")
                await ws.close()
                assert ws.close_code in (WSCloseCode.OK, CLOSE_REPLACED), ws.close_code

        await asyncio.wait_for(asyncio.gather(*(churn(token) for _, token in users)), 30)

    await wait_no_sockets(client)
    assert app[keys.LIVE].active_count() == 0
    # Every task a socket started (handler, writer, closer) is gone; nothing new outlives the sockets.
    deadline = time.monotonic() + 5
    while len(tasks := asyncio.all_tasks()) > baseline or any(t.get_name().startswith("ws-") for t in tasks):
        assert time.monotonic() < deadline, (baseline, sorted(t.get_name() for t in tasks))
        await asyncio.sleep(0.01)
