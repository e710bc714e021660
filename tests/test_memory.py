"""Memory of users who went away: released after the replay window, reloaded on demand, replay promise kept."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from tests.fake_live import ScriptedSource
from tests.helpers import Clock, bearer, make_user
from tests.test_ws import recv, recv_type
from ttboost import keys
from ttboost.live.errors import UserNotFound
from ttboost.pipeline.events import LiveEvent

USERS = 8
LIKES = 200  # per user, each from another viewer: per-stream counters and a full-ish replay buffer
WINDOW = 600.0  # [limits] replay_seconds (the default)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(make_client, clock):
    source = ScriptedSource()
    client = await make_client(live_source=source, clock=clock)
    client.source = source
    return client


async def streamer(app, name: str) -> tuple[int, str]:
    """A user whose app starts the watch by hand (connect_tiktok), so that reconnecting only replays."""
    user_id, token = await make_user(app, name)
    await app[keys.DB].execute("UPDATE users SET settings = '{\"auto_connect\": false}' WHERE id = ?", (user_id,))
    return user_id, token


async def stream_and_leave(client, token: str, name: str) -> int:
    """An app connects and starts the watch, the LIVE sends likes, the streamer stops and the app closes;
    returns the last seq the app saw."""
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await ws.send_json({"action": "connect_tiktok"})
    watch = await client.source.next_watch()
    watch.connect()
    await recv_type(ws, "status", state="connected")
    watch.emit(*(LiveEvent("like", username=f"v{i}", user_id=f"{name}-{i}", count=1, total=i + 1)
                 for i in range(LIKES)))
    await ws.send_json({"action": "disconnect_tiktok"})
    last = await recv_type(ws, "status", state="idle")
    await ws.close()
    return last["seq"]


async def logged(app, rows: int) -> None:
    """Waits for the event log's batch writer, so that rows queued for it are not counted as kept memory."""
    async with asyncio.timeout(5):
        while await app[keys.DB].fetchval("SELECT COUNT(*) FROM events") < rows:
            await asyncio.sleep(0.05)


async def closed(app) -> None:
    """Waits until the server has let go of every socket (its handler runs a little past the client's close)."""
    async with asyncio.timeout(5):
        while len(app[keys.SOCKETS]):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


def held_by_the_server() -> int:
    """Bytes still allocated by the server's own code: the test's client side, and the bounded caches of the
    libraries under it (yarl's parsed URLs, say), are not what is measured here."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/ttboost/*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def test_idle_users_memory_returns_to_baseline_and_comes_back_on_demand(client, clock) -> None:
    app = client.server.app
    janitor = app[keys.JANITOR]
    users = [await streamer(app, f"streamer{i}") for i in range(USERS)]
    broken_id, broken_token = await streamer(app, "nobody_here")
    tracemalloc.start()
    try:
        baseline = held_by_the_server()
        assert janitor.cached_users() == set()
        seen = {user_id: await stream_and_leave(client, token, str(user_id)) for user_id, token in users}
        ws = await client.ws_connect(f"/v2/ws?token={broken_token}")  # a watch that ends in error is kept too
        await ws.send_json({"action": "connect_tiktok"})
        (await client.source.next_watch()).fail(UserNotFound("nobody"))
        await recv_type(ws, "status", state="error")
        await ws.close()
        await logged(app, USERS * (LIKES + 3))
        await closed(app)
        active = held_by_the_server()
        assert janitor.cached_users() == {user_id for user_id, _ in users} | {broken_id}

        clock.now += WINDOW - 1  # inside the replay window: nothing is released, every frame replays
        assert janitor.sweep() == 0
        user_id, token = users[0]
        ws = await client.ws_connect(f"/v2/ws?token={token}&since={seen[user_id] - LIKES - 1}")
        frames = [await recv(ws) for _ in range(LIKES + 1)]
        assert [f["type"] for f in frames] == ["like"] * LIKES + ["status"]
        assert frames[-1]["seq"] == seen[user_id]
        await ws.close()
        del frames
        await closed(app)

        clock.now += WINDOW + 1  # a whole window with no socket, no watch and no frame
        assert janitor.sweep() == USERS + 1
        assert janitor.cached_users() == set()
        released = held_by_the_server()
    finally:
        tracemalloc.stop()
    per_user_kept = (released - baseline) / (USERS + 1)
    per_user_active = (active - baseline) / (USERS + 1)
    print(f"memory per user: {per_user_active / 1024:.1f} KiB while active, {per_user_kept / 1024:.2f} KiB after")
    assert per_user_active > 20 * 1024  # the measurement sees the per-user state at all
    # What is left (~2 KiB a user here) is bounded caches keyed by token or request, not state of the user.
    assert per_user_kept < per_user_active / 10

    # Everything comes back on demand: seq goes on from the log, the rules apply, the watch starts again.
    user_id, token = users[1]
    resp = await client.post("/v2/triggers/set", headers=bearer(token),
                             json={"event_type": "follow", "action": "tts", "action_params": {"text_template": "hi"}})
    assert resp.status == 200
    ws = await client.ws_connect(f"/v2/ws?token={token}&since={seen[user_id]}")
    assert (await recv(ws))["state"] == "idle"  # a fresh state: the old one was released with the rest
    await ws.send_json({"action": "connect_tiktok"})
    watch = await client.source.next_watch()
    first = await recv(ws)
    assert (first["type"], first["state"]) == ("status", "connecting") and first["seq"] > seen[user_id]
    watch.connect()
    watch.emit(LiveEvent("follow", username="fan", user_id="9"))
    follow = await recv_type(ws, "follow")
    assert "tts_url" in follow and follow["seq"] > first["seq"]
    await ws.close()


async def test_buffers_are_trimmed_by_time_while_nothing_is_published(client, clock) -> None:
    app = client.server.app
    user_id, token = await streamer(app, "streamer")
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await ws.send_json({"action": "connect_tiktok"})
    watch = await client.source.next_watch()
    watch.connect()
    watch.emit(*(LiveEvent("like", username="v", user_id=str(i), count=1) for i in range(LIKES)))
    await ws.send_json({"action": "disconnect_tiktok"})
    await recv_type(ws, "status", state="idle")
    channel = app[keys.BUS].get(user_id)
    assert channel is not None and len(channel.buffer) == LIKES + 3
    clock.now += WINDOW + 1  # the app stays connected, the watch is stopped: nothing publishes or replays
    assert app[keys.JANITOR].sweep() == 0  # the socket keeps the user
    assert app[keys.BUS].get(user_id) is channel and len(channel.buffer) == 0  # but not 500 stale frames
    await ws.close()
    await closed(app)
    clock.now += WINDOW + 1
    app[keys.JANITOR].keep_while(lambda uid: uid == user_id)  # as a running rehearsal does
    assert app[keys.JANITOR].sweep() == 0 and app[keys.BUS].get(user_id) is channel
