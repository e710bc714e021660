"""Hostile clients against the real server process (`python run.py` under `ulimit -n 256`): a flood of trickling
connections leaves /health answering and the log clean; the CLI, another process, revokes a licence and sets a
password, and the open sockets learn it within seconds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Final

import aiohttp
import pytest

from tests.server_process import ServerProcess

NOFILE: Final = 256  # the server's open-file limit: the cap (80 %) sits below it
TRICKLERS: Final = 400  # more connections than the server has file descriptors
PLAN: Final = "nova_streamer_one_mobile"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    env = {"TTBOOST_SERVER_HEADER_TIMEOUT": "2", "TTBOOST_AUTH_REVOCATION_CHECK_SECONDS": "0.2"}
    proc = ServerProcess(tmp_path / "data", env=env, nofile=NOFILE)
    await proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def _account(session: aiohttp.ClientSession, server: ServerProcess, username: str) -> tuple[str, str]:
    key = await server.issue_license(PLAN)
    async with session.post(server.url + "/v2/auth/redeem-license",
                            json={"username": username, "password": "secret-pw", "license_key": key}) as resp:
        assert resp.status == 200, await resp.text()
        return key, (await resp.json())["access_token"]


async def _trickle(port: int, stop: asyncio.Event) -> None:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        while not stop.is_set():
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(0.2)
    except (OSError, ConnectionError):
        pass  # displaced or timed out by the server: what it should do
    finally:
        writer.close()


async def test_trickling_connections_past_the_fd_limit_leave_health_answering(server: ServerProcess) -> None:
    stop = asyncio.Event()
    tricklers = [asyncio.create_task(_trickle(server.port, stop)) for _ in range(TRICKLERS)]
    try:
        await asyncio.sleep(0.5)  # all of them opened and trickling
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(server.url + "/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    assert resp.status == 200
                    assert resp.headers["Server"] == "TTBoost"
    finally:
        stop.set()
        await asyncio.gather(*tricklers)
    # and aiohttp's parser errors, through the real serve() path, are in the envelope
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 400 Bad Request") and b"Server: TTBoost" in head
    assert b"application/json" in head and body == b'{"detail": "bad request", "code": "bad_request"}'
    log = server.log_tail(2_000_000)
    assert "Traceback" not in log
    assert log.count("cannot accept connections") <= 1


async def _close_code(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, list[str]]:
    codes = []
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type is aiohttp.WSMsgType.TEXT:
            codes.append(msg.json().get("code", ""))
        else:
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            return msg.data, codes


async def test_the_cli_revokes_from_another_process_and_sockets_close(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as session:
        key, token = await _account(session, server, "revoked_one")
        _key2, token2 = await _account(session, server, "passwd_one")
        ws = await session.ws_connect(f"{server.ws_url}/v2/ws?token={token}&demo=1")
        ws2 = await session.ws_connect(f"{server.ws_url}/v2/ws?token={token2}&demo=1")
        await server.cli("license", "revoke", key)
        code, frame_codes = await _close_code(ws)
        assert code == 4003 and frame_codes[-1] == "license_expired"
        await asyncio.to_thread(_passwd, server, "passwd_one", "a-new-password")
        code, _ = await _close_code(ws2)
        assert code == 4002


def _passwd(server: ServerProcess, username: str, password: str) -> None:
    import subprocess

    done = subprocess.run(server._argv("user", "passwd", username), cwd=server.cwd, env=server.env(),
                          input=password + "\n", capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
