"""Revocation reaches open sockets (spec §6) and costly routes need a licence (spec §5, §6)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.fake_live import ScriptedSource
from tests.helpers import bearer, make_user
from tests.test_ws import recv, recv_type, register
from ttboost import accounts, keys, licenses
from ttboost.security import PasswordHasher

FAST = {"auth": {"revocation_check_seconds": 0.05, "bcrypt_rounds": 4}}


@pytest.fixture
async def client(make_client):
    return await make_client(live_source=ScriptedSource(), **FAST)


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, list[dict]]:
    """Reads to the close; returns the close code and the frames that came before it."""
    frames = []
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is aiohttp.WSMsgType.TEXT:
            frames.append(msg.json())
        else:
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            return msg.data, frames


async def test_password_change_closes_the_old_tokens_socket_with_4002(client) -> None:
    _, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}&demo=0")
    assert (await recv(ws))["type"] == "status"
    resp = await client.post("/v2/auth/password", headers=bearer(token),
                             json={"current_password": "secret-pw", "new_password": "another-pw"})
    assert resp.status == 200
    code, _frames = await closed_with(ws)
    assert code == 4002
    new_token = (await resp.json())["access_token"]
    ws = await client.ws_connect(f"/v2/ws?token={new_token}")  # the new token's socket is fine
    assert (await recv(ws))["type"] == "status"
    await asyncio.sleep(0.3)  # several rounds of the watch
    await ws.send_json({"action": "ping"})
    assert (await recv_type(ws, "pong"))["type"] == "pong"
    await ws.close()


async def test_a_password_set_elsewhere_reaches_the_socket(client) -> None:
    """As `run.py user passwd` does from another process: the server is not told, the watch sees it."""
    user_id, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    assert (await recv(ws))["type"] == "status"
    db = client.app[keys.DB]
    user = await accounts.get_user(db, user_id)
    await accounts.set_password(db, PasswordHasher(4), user, "set-by-cli")
    code, _frames = await closed_with(ws)
    assert code == 4002


@pytest.mark.both_backends  # the watch's one query must hold on PostgreSQL too (cluster mode)
@pytest.mark.parametrize("how", ["revoke", "expire"])
async def test_licence_end_sends_license_expired_then_4003(client, how: str) -> None:
    user_id, token = await make_user(client.app)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    assert (await recv(ws))["type"] == "status"
    db = client.app[keys.DB]
    if how == "revoke":
        key = await db.fetchval("SELECT key FROM licenses WHERE user_id = ?", (user_id,))
        await licenses.revoke(db, key)
    else:
        await db.execute("UPDATE licenses SET expires_at = '2000-01-01T00:00:00Z' WHERE user_id = ?", (user_id,))
    code, frames = await closed_with(ws)
    assert code == 4003
    assert [(f["type"], f.get("code")) for f in frames][-1:] == [("error", "license_expired")]
    # and a new socket is refused the same way at once
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    code, frames = await closed_with(ws)
    assert code == 4003 and frames[-1]["code"] == "license_expired"


@pytest.mark.parametrize(("state", "detail"), [("revoked", "license not active"), ("expired", "license expired"),
                                               ("none", "license not active")])
async def test_speech_and_simulate_need_an_active_licence(client, state: str, detail: str) -> None:
    user_id, token = await make_user(client.app, plan="" if state == "none" else None)
    db = client.app[keys.DB]
    if state == "revoked":
        await db.execute("UPDATE licenses SET status = 'revoked' WHERE user_id = ?", (user_id,))
    elif state == "expired":
        await db.execute("UPDATE licenses SET expires_at = '2000-01-01T00:00:00Z' WHERE user_id = ?", (user_id,))
    for path, body in (("/v2/tts/generate", {"text": "hello"}), ("/tts/generate", {"text": "hello"}),
                       ("/v2/events/simulate", {"type": "chat"})):
        resp = await client.post(path, json=body, headers=bearer(token))
        assert resp.status == 403, (path, await resp.text())
        assert (await resp.json())["detail"] == detail, path


@pytest.mark.both_backends
async def test_a_removed_account_closes_its_socket_with_4002(client) -> None:
    user_id, token = await make_user(client.app)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    assert (await recv(ws))["type"] == "status"
    db = client.app[keys.DB]
    async with db.transaction():  # as an operator would remove it: its licences unbound, then the row
        await db.execute("UPDATE licenses SET user_id = NULL WHERE user_id = ?", (user_id,))
        await db.execute("DELETE FROM users WHERE id = ?", (user_id,))
    code, _frames = await closed_with(ws)
    assert code == 4002


async def test_an_error_inside_the_socket_handler_closes_1011_never_http(client, caplog) -> None:
    """The database gone mid-connection (a real failure, nothing patched): the socket closes as a WebSocket."""
    _user_id, token = await make_user(client.app)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    assert (await recv(ws))["type"] == "status"
    await client.app[keys.DB].close()
    await ws.send_json({"action": "connect_tiktok", "username": "someone_else"})
    code, _frames = await closed_with(ws)
    assert code == 1011
    assert "error while serving the socket" in caplog.text
