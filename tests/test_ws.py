"""The app's WebSocket: auth before upgrade, one socket per user, replay, slow clients, the client protocol."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.fake_live import ScriptedSource
from tests.helpers import sample_sum, scrape
from ttboost import keys, licenses
from ttboost.pipeline.events import LiveEvent

PLAN = "nova_streamer_one_mobile"


async def register(client: TestClient, username: str = "streamer", days: int = 30) -> tuple[int, str]:
    """A real account through the HTTP API: a CLI-style issued key redeemed with a password."""
    app = client.server.app
    [lic] = await licenses.issue(app[keys.DB], app[keys.CONFIG], PLAN, days)
    resp = await client.post("/v2/auth/redeem-license",
                             json={"username": username, "password": "secret-pw", "license_key": lic.key})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return body["user_id"], body["access_token"]


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def recv_type(ws: aiohttp.ClientWebSocketResponse, type_: str, **match: Any) -> dict[str, Any]:
    """Next frame of a type (and field values), skipping others such as status changes."""
    while True:
        frame = await recv(ws)
        if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def connected_socket(client: TestClient, source: ScriptedSource):
    """A registered user's socket whose LIVE watch has connected (its "connected" status already read)."""
    _, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()
    watch.connect()
    await recv_type(ws, "status", state="connected")
    return ws, watch, token


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


@pytest.fixture
async def app_client(make_client, source) -> TestClient:
    return await make_client(live_source=source, limits={"ws_send_queue": 8})


async def test_bad_token_is_refused_before_upgrade(app_client) -> None:
    for url in ("/v2/ws", "/v2/ws?token=nonsense", "/ws/nonsense"):
        resp = await app_client.get(url, headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                  "Sec-WebSocket-Version": "13",
                                                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert resp.status == 401
        assert await resp.json() == {"detail": "invalid token", "code": "invalid_token"}


async def test_auto_connect_reports_states_and_delivers_events_in_order(app_client, source) -> None:
    _, token = await register(app_client)
    ws = await app_client.ws_connect(f"/v2/ws?token={token}", headers={"Accept-Language": "en-US,en;q=0.9"})
    first = await recv(ws)
    assert first["type"] == "status" and first["state"] == "connecting"
    assert first["tiktok_username"] == "streamer" and first["connected"] is False
    assert "Connecting" in first["message"]  # English, from Accept-Language
    watch = await source.next_watch()
    assert watch.unique_id == "streamer"
    watch.connect()
    connected = await recv_type(ws, "status")
    assert connected["state"] == "connected" and connected["connected"] is True
    watch.emit(LiveEvent("chat", user="Аня", username="anya", user_id="1", message="привет"),
               LiveEvent("gift", user="", username="bob", user_id="2", gift_id=5655, gift_name="Rose",
                         count=1, diamond_count=1),
               LiveEvent("like", user="Cat", username="cat", user_id="3", count=15, total=100),
               LiveEvent("viewer", current=12, total=40))
    chat, gift, like, viewer = [await recv(ws) for _ in range(4)]
    assert chat["type"] == "chat" and chat["user"] == "Аня" and chat["message"] == "привет"
    assert gift["type"] == "gift" and gift["user"] == "bob" and gift["diamonds"] == 1
    assert like["count"] == 15 and like["total"] == 100
    assert viewer == {"type": "viewer", "seq": viewer["seq"], "ts": viewer["ts"], "current": 12, "total": 40}
    seqs = [connected["seq"], chat["seq"], gift["seq"], like["seq"], viewer["seq"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert chat["ts"].endswith("Z")
    await ws.close()


async def test_second_connection_replaces_the_first(app_client, source) -> None:
    _, token = await register(app_client)
    first = await app_client.ws_connect(f"/v2/ws?token={token}")
    await recv_type(first, "status")
    second = await app_client.ws_connect("/v2/ws", headers={"Authorization": f"Bearer {token}"})
    msg = await first.receive(timeout=5)
    while msg.type is aiohttp.WSMsgType.TEXT:
        msg = await first.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001 and msg.extra == "replaced"
    pong_request = {"action": "ping"}
    await second.send_json(pong_request)
    assert (await recv_type(second, "pong"))["ts"].endswith("Z")
    # The LIVE session survived the socket change: one watch, not two.
    assert source.started == ["streamer"]
    await second.close()


async def test_resume_replays_exactly_the_missed_events(app_client, source) -> None:
    ws, watch, token = await connected_socket(app_client, source)
    watch.emit(LiveEvent("chat", username="a", user_id="1", message="one"))
    seen = await recv_type(ws, "chat")
    await ws.close()
    await asyncio.sleep(0.05)
    watch.emit(*(LiveEvent("chat", username="a", user_id="1", message=m) for m in ("two", "three", "four")))
    ws = await app_client.ws_connect(f"/v2/ws?token={token}&since={seen['seq']}")
    replayed = [await recv(ws) for _ in range(4)]
    messages = [f.get("message") for f in replayed if f["type"] == "chat"]
    assert messages == ["two", "three", "four"]
    assert [f["seq"] for f in replayed if f["type"] == "chat"] == [seen["seq"] + 1, seen["seq"] + 2, seen["seq"] + 3]
    # The resume action replays the same from any point, in order.
    await ws.send_json({"action": "resume", "since": seen["seq"] + 1})
    again = [await recv(ws) for _ in range(2)]
    assert [f["message"] for f in again] == ["three", "four"]
    await ws.close()


async def test_malformed_messages_get_an_error_and_the_socket_stays(app_client) -> None:
    _, token = await register(app_client)
    ws = await app_client.ws_connect(f"/v2/ws?token={token}")
    for bad in ("not json", "[]", '{"action": "fly"}', '{"action": "resume", "since": -3}',
                '{"action": "connect_tiktok", "username": "x"}'):
        await ws.send_str(bad)
        frame = await recv_type(ws, "error")
        assert frame["code"] == "bad_request", bad
    await ws.send_bytes(b"\x00\x01")
    assert (await recv_type(ws, "error"))["code"] == "bad_request"
    await ws.send_json({"action": "ping"})
    assert (await recv_type(ws, "pong"))["type"] == "pong"
    await ws.close()


async def test_slow_client_is_closed_while_another_user_keeps_receiving(app_client, source) -> None:
    slow_id, slow_token = await register(app_client, "slowpoke")
    fast_id, fast_token = await register(app_client, "speedy")
    slow = await app_client.ws_connect(f"/v2/ws?token={slow_token}&demo=1")
    fast = await app_client.ws_connect(f"/v2/ws?token={fast_token}&demo=1")
    dispatcher = app_client.server.app[keys.DISPATCHER]
    big = "x" * 60_000
    # The slow socket is never read: its kernel buffers fill, then its 8-frame queue, then it is closed.
    for i in range(400):
        dispatcher.dispatch(slow_id, LiveEvent("chat", username="v", user_id="9", message=big))
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    dispatcher.dispatch(fast_id, LiveEvent("chat", username="v", user_id="9", message="still here"))
    assert (await recv_type(fast, "chat"))["message"] == "still here"
    closed = None
    for _ in range(500):
        msg = await slow.receive(timeout=5)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            closed = msg
            break
    assert closed is not None and closed.type is aiohttp.WSMsgType.CLOSE
    assert closed.data == 1008 and closed.extra == "too slow"
    assert sample_sum(await scrape(app_client), "ttboost_slow_client_closes_total", kind="app") == 1
    await fast.close()


async def test_disconnect_and_connect_tiktok_actions(app_client, source) -> None:
    _, token = await register(app_client)
    ws = await app_client.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()
    await ws.send_json({"action": "disconnect_tiktok"})
    assert (await recv_type(ws, "status", state="idle"))["connected"] is False
    assert watch.cancelled
    await ws.send_json({"action": "connect_tiktok", "username": "@Other.Streamer"})
    other = await source.next_watch()
    assert other.unique_id == "other.streamer"
    assert (await recv_type(ws, "status", state="connecting"))["tiktok_username"] == "other.streamer"
    await ws.close()


async def test_expired_license_gets_license_expired_and_no_live_session(app_client, source) -> None:
    user_id, token = await register(app_client)
    await app_client.server.app[keys.DB].execute("UPDATE licenses SET expires_at = '2000-01-01T00:00:00Z'")
    ws = await app_client.ws_connect(f"/v2/ws?token={token}")
    frame = await recv(ws)
    assert frame["type"] == "error" and frame["code"] == "license_expired"
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4003
    assert source.started == []


async def test_simulate_reaches_the_socket(app_client) -> None:
    _, token = await register(app_client)
    ws = await app_client.ws_connect(f"/v2/ws?token={token}&demo=0")
    resp = await app_client.post("/v2/events/simulate", headers={"Authorization": f"Bearer {token}"},
                                 json={"type": "gift", "user": "Bob", "gift_name": "Rose", "count": 5})
    assert resp.status == 200
    body = await resp.json()
    frame = await recv_type(ws, "gift")
    assert frame["seq"] == body["seq"]
    assert (frame["gift_name"], frame["count"], frame["diamonds"]) == ("Rose", 5, 5)
    bad = await app_client.post("/v2/events/simulate", headers={"Authorization": f"Bearer {token}"},
                                json={"type": "explosion"})
    assert bad.status == 422 and "type" in (await bad.json())["fields"]
    await ws.close()


async def test_demo_stream_sends_chat_and_gifts(make_client, source) -> None:
    client = await make_client(live_source=source, limits={"demo_min_seconds": 0.01, "demo_max_seconds": 0.02})
    _, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}&demo=1")
    types = set()
    while len(types) < 2:
        frame = await recv(ws)
        if frame["type"] in ("chat", "gift"):
            types.add(frame["type"])
    assert source.started == []  # demo never touches TikTok
    await ws.close()


async def test_legacy_socket_of_key_only_account_is_a_demo(make_client, source) -> None:
    client = await make_client(live_source=source, limits={"demo_min_seconds": 0.01, "demo_max_seconds": 0.02})
    app = client.server.app
    [lic] = await licenses.issue(app[keys.DB], app[keys.CONFIG], PLAN, 30)
    login = await (await client.post("/auth/login", json={"license_key": lic.key})).json()
    assert login["ws_url"].startswith("ws://testserver/ws/")
    path = login["ws_url"].removeprefix("ws://testserver")
    ws = await client.ws_connect(path)
    frame = await recv(ws)
    while frame["type"] not in ("chat", "gift"):
        frame = await recv(ws)
    assert source.started == []
    await ws.close()


async def test_status_is_resent_when_the_replay_no_longer_holds_it(make_client, source) -> None:
    client = await make_client(live_source=source, limits={"replay_events": 3})
    _, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()
    watch.connect()
    connected = await recv_type(ws, "status", state="connected")
    await ws.close()
    await asyncio.sleep(0.05)
    watch.emit(*(LiveEvent("chat", username="a", user_id="1", message=str(i)) for i in range(5)))
    ws = await client.ws_connect(f"/v2/ws?token={token}&since=0")
    frames = [await recv(ws) for _ in range(4)]
    assert frames[0] == connected  # the current state, with its original seq, although trimmed
    assert [f["message"] for f in frames[1:]] == ["2", "3", "4"]  # the 3 the buffer still holds
    await ws.close()


async def test_a_demo_socket_learns_the_idle_state_first(app_client) -> None:
    _, token = await register(app_client)
    ws = await app_client.ws_connect(f"/v2/ws?token={token}&demo=1")
    first = await recv(ws)
    assert (first["type"], first["state"], first["connected"]) == ("status", "idle", False)
    await ws.close()


async def test_a_watch_stopped_by_an_error_is_retried_when_the_app_returns(app_client, source) -> None:
    from ttboost.live.errors import UserNotFound

    _, token = await register(app_client)
    ws = await app_client.ws_connect(f"/v2/ws?token={token}")
    (await source.next_watch()).fail(UserNotFound("nobody"))
    assert (await recv_type(ws, "error"))["code"] == "tiktok_user_not_found"
    await recv_type(ws, "status", state="error")
    await ws.close()
    ws = await app_client.ws_connect(f"/v2/ws?token={token}")
    retried = await source.next_watch()
    assert retried.unique_id == "streamer"
    # What the README's lifecycle promises: the app learns the old state, then sees the new try.
    assert [(f["type"], f.get("state")) for f in [await recv(ws), await recv(ws)]] == [
        ("status", "error"), ("status", "connecting")]
    await ws.close()


async def test_viewer_counts_are_sent_only_when_they_change(app_client, source) -> None:
    ws, watch, _ = await connected_socket(app_client, source)
    watch.emit(LiveEvent("viewer", current=12, total=40), LiveEvent("viewer", current=12, total=40),
               LiveEvent("viewer", current=13, total=41), LiveEvent("chat", username="a", user_id="1", message="x"))
    frames = [await recv(ws) for _ in range(3)]
    assert [f["type"] for f in frames] == ["viewer", "viewer", "chat"]
    assert [f.get("current") for f in frames[:2]] == [12, 13]
    await ws.close()


async def test_a_license_revoked_during_a_watch_stops_it(make_client, source) -> None:
    client = await make_client(live_source=source, tiktok={"idle_stop_minutes": 0.01})  # checks every 0.15 s
    ws, watch, _ = await connected_socket(client, source)
    await client.server.app[keys.DB].execute("UPDATE licenses SET status = 'revoked'")
    assert (await recv_type(ws, "error"))["code"] == "license_expired"
    assert watch.cancelled
    await ws.close()


async def test_a_new_tiktok_username_in_the_settings_switches_a_running_watch(app_client, source) -> None:
    _, token = await register(app_client)
    ws = await app_client.ws_connect(f"/v2/ws?token={token}")
    first = await source.next_watch()
    resp = await app_client.post("/v2/settings/update", headers={"Authorization": f"Bearer {token}"},
                                 json={"tiktok_username": "@Real.Name"})
    assert resp.status == 200
    second = await source.next_watch()
    assert first.cancelled and second.unique_id == "real.name"
    same = await app_client.post("/v2/settings/update", headers={"Authorization": f"Bearer {token}"},
                                 json={"tts_volume": 50})
    assert same.status == 200 and source.started == ["streamer", "real.name"]  # other changes: no restart
    await ws.close()


async def test_disconnect_tiktok_is_always_answered_with_a_status(app_client, source) -> None:
    """The original app waits for a status frame after disconnect_tiktok, also when nothing was running."""
    user_id, token = await register(app_client)
    await app_client.server.app[keys.SETTINGS].update(user_id, {"auto_connect": False})
    ws = await app_client.ws_connect(f"/v2/ws?token={token}")
    first = await recv(ws)
    assert first["type"] == "status" and first["state"] == "idle"
    for _ in range(2):  # nothing ran, and again after that
        await ws.send_json({"action": "disconnect_tiktok"})
        frame = await recv(ws)
        assert frame["type"] == "status" and frame["state"] == "idle" and frame["seq"] > first["seq"]
        first = frame
    assert source.started == []
    await ws.close()


async def test_auto_connect_off_stops_the_watch_it_started_and_on_starts_it(app_client, source) -> None:
    user_id, token = await register(app_client)
    auth = {"Authorization": f"Bearer {token}"}
    ws = await app_client.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()  # started by auto_connect
    # The original app's switch, under its old name (auto_connect_live), stops it too.
    resp = await app_client.post("/v2/settings/update", headers=auth, json={"auto_connect_live": False})
    assert resp.status == 200
    await recv_type(ws, "status", state="idle")
    assert watch.cancelled
    resp = await app_client.post("/v2/settings/update", headers=auth, json={"auto_connect": True})
    assert resp.status == 200
    again = await source.next_watch()  # the app is connected: on again starts it, as a connection would
    assert again.unique_id == "streamer"
    await recv_type(ws, "status", state="connecting")
    # A watch the streamer asked for with connect_tiktok is theirs: switching auto_connect off leaves it running.
    await ws.send_json({"action": "connect_tiktok"})
    resp = await app_client.post("/v2/settings/update", headers=auth, json={"auto_connect": False})
    assert resp.status == 200
    await ws.send_json({"action": "ping"})
    assert (await recv(ws))["type"] == "pong"
    assert not again.cancelled and app_client.server.app[keys.LIVE].session(user_id).running
    await ws.close()


async def test_viewer_first_message_trigger_frame_follows_the_chat_frame(app_client) -> None:
    _, token = await register(app_client)
    auth = {"Authorization": f"Bearer {token}"}
    resp = await app_client.post("/v2/triggers/set", headers=auth, json={
        "event_type": "viewer_first_message", "condition_key": "always", "action": "tts",
        "action_params": {"text_template": "Welcome, {user}!"}})
    assert resp.status == 200, await resp.text()
    ws = await app_client.ws_connect(f"/v2/ws?token={token}&demo=0")
    first = await (await app_client.post("/v2/events/simulate", headers=auth,
                                         json={"type": "chat", "user": "Anna", "message": "hi"})).json()
    chat = await recv_type(ws, "chat")
    greeting = await recv(ws)  # the very next frame
    assert greeting["type"] == "viewer_first_message" and greeting["seq"] == chat["seq"] + 1
    assert (greeting["user"], greeting["username"], greeting["message"]) == ("Anna", "anna", "hi")
    assert greeting["tts_url"].startswith("http://testserver/static/tts/") and greeting["volume"] == 100
    assert first["viewer_first_message"]["seq"] == greeting["seq"]
    assert first["viewer_first_message"]["event"]["tts_url"] == greeting["tts_url"]
    # Anna's second message of the stream: a chat frame only.
    second = await (await app_client.post("/v2/events/simulate", headers=auth,
                                          json={"type": "chat", "user": "Anna", "message": "again"})).json()
    assert "viewer_first_message" not in second
    await ws.send_json({"action": "ping"})
    assert (await recv_type(ws, "chat"))["message"] == "again" and (await recv(ws))["type"] == "pong"
    # Simulating viewer_first_message is the "test this trigger" button: it fires every time.
    test = await (await app_client.post("/v2/events/simulate", headers=auth,
                                        json={"type": "viewer_first_message", "user": "Anna"})).json()
    assert test["event"]["type"] == "chat" and test["viewer_first_message"]["seq"] == test["seq"] + 1
    listed = await (await app_client.get("/v2/triggers/list", headers=auth)).json()
    assert [t["event_type"] for t in listed["triggers"]] == ["viewer_first_message"]
    bad = await app_client.post("/v2/triggers/set", headers=auth, json={
        "event_type": "viewer_first_message", "condition_key": "message_contains", "condition_value": "x",
        "action": "tts", "action_params": {"text_template": "x"}})
    assert bad.status == 422 and "condition_key" in (await bad.json())["fields"]
    await ws.close()
