"""Cluster mode: two workers (two apps in this process) on one real PostgreSQL and one real NATS server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.audio_samples import make_mp3
from tests.conftest import make_config
from tests.fake_live import ScriptedSource
from tests.fake_tts import FakeEngine, audio_for
from tests.helpers import bearer, eventually
from tests.test_revocation import FAST, closed_with
from tests.test_sounds_api import upload
from tests.test_ws import recv, recv_type, register
from ttboost import keys
from ttboost.app import create_app
from ttboost.config import ConfigError, load_config
from ttboost.home import OPERATIONS
from ttboost.pipeline.events import LiveEvent

ROSE = LiveEvent("gift", user="Bob", username="bob", gift_id=5655, gift_name="Rose", count=1, diamond_count=1)


@pytest.fixture
def workers(pg_url: str, nats_url: str, aiohttp_client: Any, tmp_path: Path):
    """worker(name, live_source=None) → a client of one more worker; each has its own data folder (no shared
    disk), all share the database and the broker. pg_url first: its database outlives the apps."""

    async def worker(name: str, live_source: Any = None, tts_engine: Any = None, lease_seconds: float = 3,
                     **sections: dict[str, Any]) -> TestClient:
        config = make_config(tmp_path / name, storage={"database_url": pg_url},
                             cluster={"nats_url": nats_url, "worker_id": name, "lease_seconds": lease_seconds},
                             **sections)
        return await aiohttp_client(create_app(config, live_source=live_source, tts_engine=tts_engine or FakeEngine(),
                                               reconnect_min_seconds=0.01))

    return worker


async def _until(frames_of: Any, ok: Any, tries: int = 40) -> dict[str, Any]:
    """The first frame (one per try, 50 ms apart) for which ok holds: a change made elsewhere lands async."""
    frame: dict[str, Any] = {}
    for _ in range(tries):
        frame = await frames_of()
        if ok(frame):
            return frame
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: last frame {frame}")


async def test_accounts_triggers_and_settings_work_through_any_worker(workers) -> None:
    source = ScriptedSource()
    a = await workers("a", live_source=source)
    b = await workers("b")
    user_id, token = await register(a)  # redeemed on a …
    login = await b.post("/v2/auth/login", json={"username": "streamer", "password": "secret-pw"})
    assert login.status == 200  # … logs in on b
    me = await b.get("/v2/auth/me", headers=bearer(token))  # a's token is good on b: one signing secret
    assert me.status == 200 and (await me.json())["id"] == user_id

    ws = await a.ws_connect(f"/v2/ws?token={token}")  # the app and its LIVE on a
    watch = await source.next_watch()
    watch.connect()
    await recv_type(ws, "status", state="connected")
    watch.emit(ROSE)
    assert "tts_url" not in await recv_type(ws, "gift")  # no trigger yet

    resp = await b.post("/v2/triggers/set", headers=bearer(token),  # the trigger is set through b
                        json={"event_type": "gift", "condition_key": "gift_name", "condition_value": "Rose",
                              "action": "tts", "action_params": {"text_template": "thanks {user}"}})
    assert resp.status == 200

    async def next_gift() -> dict[str, Any]:
        watch.emit(ROSE)
        return await recv_type(ws, "gift")

    fired = await _until(next_gift, lambda f: "tts_url" in f)  # and fires in a's session
    assert fired["tts_url"].startswith("http://testserver/static/tts/")

    resp = await b.post("/v2/settings/update", headers=bearer(token), json={"tts_volume": 33})
    assert resp.status == 200

    async def next_chat() -> dict[str, Any]:
        watch.emit(LiveEvent("chat", user="Аня", username="anya", message="привет"))
        return await recv_type(ws, "chat")

    assert (await _until(next_chat, lambda f: f.get("volume") == 33))["volume"] == 33
    await ws.close()


async def test_a_sound_uploaded_through_one_worker_is_served_by_every_other(workers) -> None:
    a = await workers("a")
    b = await workers("b")
    c = await workers("c")
    user_id, token = await register(a)
    first, second = make_mp3(0.3), make_mp3(0.6)
    url = (await upload(a, token, first, name="rose"))["url"]
    path = url.removeprefix("http://testserver")

    async def body_on(worker: TestClient) -> tuple[int, bytes]:
        resp = await worker.get(path)
        return resp.status, await resp.read()

    assert await body_on(b) == (200, first)  # b has no file of its own: fetched from the cluster
    await upload(a, token, second, name="rose")  # replaced through a: b's cached copy must not be served
    assert await _until(lambda: body_on(b), lambda got: got == (200, second))
    assert await body_on(c) == (200, second)
    resp = await c.post("/v2/sounds/delete", headers=bearer(token), json={"filename": "rose.mp3"})
    assert resp.status == 200  # deleted through c: gone everywhere
    for worker in (a, b, c):
        assert (await _until(lambda w=worker: body_on(w), lambda got: got[0] == 404))[0] == 404


async def test_speech_made_by_one_worker_is_served_by_every_other(workers) -> None:
    engine = FakeEngine()
    a = await workers("a", tts_engine=engine)
    b = await workers("b")
    _, token = await register(a)
    resp = await a.post("/v2/tts/generate", headers=bearer(token), json={"text": "hello there"})
    path = (await resp.json())["url"].removeprefix("http://testserver")
    got = await b.get(path)  # b never synthesized it
    assert got.status == 200 and await got.read() == audio_for("hello there")

    speech = a.app[keys.SPEECH]
    release = engine.hold("still speaking")
    key = speech.request("still speaking", "ru-RU-SvetlanaNeural", 0, sheddable=False, owner=1)
    waiting = asyncio.create_task(b.get(f"/static/tts/{key}.mp3"))  # asked of b while a is synthesizing
    await engine.reached["still speaking"].wait()
    release.set()
    got = await waiting
    assert got.status == 200 and await got.read() == audio_for("still speaking")

    engine.failing.add("broken")
    key = speech.request("broken", "ru-RU-SvetlanaNeural", 0, sheddable=False, owner=1)
    assert (await b.get(f"/static/tts/{key}.mp3")).status == 404  # failed on a: 404 everywhere
    assert (await b.get(f"/static/tts/{'0' * 32}.mp3")).status == 404  # unknown to the whole cluster


async def test_rate_limits_hold_across_workers(workers) -> None:
    a = await workers("a", limits={"triggers_per_minute": 3})
    b = await workers("b", limits={"triggers_per_minute": 3})
    _, token = await register(a)
    statuses = [(await w.get("/v2/triggers/list", headers=bearer(token))).status for w in (a, b, a)]
    assert statuses == [200, 200, 200]
    resp = await b.get("/v2/triggers/list", headers=bearer(token))  # b's own count is 1: the cluster's is 3
    assert resp.status == 429 and (await resp.json())["detail"] == "too many requests"
    assert 1 <= int(resp.headers["Retry-After"]) <= 20


async def test_a_password_changed_through_one_worker_closes_the_socket_on_another(workers) -> None:
    a = await workers("a", live_source=ScriptedSource(), **FAST)
    b = await workers("b", **FAST)
    _, token = await register(a)
    ws = await a.ws_connect(f"/v2/ws?token={token}&demo=0")
    assert (await recv_type(ws, "status"))["type"] == "status"
    resp = await b.post("/v2/auth/password", headers=bearer(token),
                        json={"current_password": "secret-pw", "new_password": "another-pw"})
    assert resp.status == 200
    code, _ = await closed_with(ws)
    assert code == 4002  # token_revoked, on a worker the change never went through


async def _seqs_rise(frames: list[dict[str, Any]]) -> None:
    seqs = [f["seq"] for f in frames if "seq" in f]
    assert seqs == sorted(set(seqs)), seqs  # increasing, no repeats


async def test_a_socket_on_any_worker_gets_the_frames_and_reaches_the_session(workers) -> None:
    """The app's socket on b, its LIVE session on a (the worker where the app first connected)."""
    source_a, source_b = ScriptedSource(), ScriptedSource()
    a = await workers("a", live_source=source_a)
    b = await workers("b", live_source=source_b)
    user_id, token = await register(a)
    first = await a.ws_connect(f"/v2/ws?token={token}")  # auto_connect: a becomes the home and watches
    watch = await source_a.next_watch()
    watch.connect()
    connected = await recv_type(first, "status", state="connected")
    on_b = await b.ws_connect(f"/v2/ws?token={token}&since=0")
    code, _ = await closed_with(first)
    assert code == 4001  # one app socket per user across the cluster
    replayed = await recv_type(on_b, "status", state="connected")
    assert replayed["seq"] == connected["seq"]  # the window came along from a
    watch.emit(ROSE)
    gift = await recv_type(on_b, "gift")
    assert gift["gift_name"] == "Rose" and gift["seq"] > connected["seq"]
    resp = await b.post("/v2/events/simulate", headers=bearer(token), json={"type": "chat", "message": "hi"})
    assert resp.status == 200
    simulated = await resp.json()
    chat = await recv_type(on_b, "chat")
    assert chat["seq"] == simulated["seq"] > gift["seq"]  # numbered by the home, returned through b
    await on_b.send_json({"action": "resume", "since": connected["seq"]})
    again = [await recv_type(on_b, "gift"), await recv_type(on_b, "chat")]
    assert [f["seq"] for f in again] == [gift["seq"], chat["seq"]]  # resume on b replays from b's copy
    await on_b.send_json({"action": "disconnect_tiktok"})
    await recv_type(on_b, "status", state="idle")
    assert watch.cancelled and not source_b.started  # a's connection closed; b never opened one
    await on_b.send_json({"action": "connect_tiktok", "username": "other_streamer"})
    assert (await source_a.next_watch()).unique_id == "other_streamer"  # started where the home is
    await on_b.close()
    assert user_id


async def test_frames_made_on_another_worker_are_numbered_by_the_home(workers) -> None:
    """A demo socket on b while the user's home is a: b's demo events go to a to be numbered, and come back."""
    a = await workers("a", live_source=ScriptedSource())
    b = await workers("b", live_source=ScriptedSource(), limits={"demo_min_seconds": 0.01, "demo_max_seconds": 0.02})
    user_id, token = await register(a)
    on_a = await a.ws_connect(f"/v2/ws?token={token}")
    status = await recv_type(on_a, "status")  # a is the home now
    await on_a.close()
    demo = await b.ws_connect(f"/v2/ws?token={token}&demo=1")
    events = []
    while len(events) < 3:
        frame = await recv(demo)
        if frame["type"] in ("chat", "gift"):
            events.append(frame)
    seqs = [status["seq"]] + [f["seq"] for f in events]
    assert seqs == sorted(set(seqs))  # numbered in a's sequence, after a's status
    assert a.app[keys.HOME].holds(user_id) and not b.app[keys.HOME].holds(user_id)
    await demo.close()


async def test_a_worker_shut_down_hands_its_streamers_over_at_once(workers) -> None:
    """The lease outlives this test (30 s): b takes over only because a handed the user over."""
    source_a, source_b = ScriptedSource(), ScriptedSource()
    a = await workers("a", live_source=source_a, lease_seconds=30)
    _, token = await register(a)
    on_a = await a.ws_connect(f"/v2/ws?token={token}")  # auto_connect: a watches @streamer
    (await source_a.next_watch()).connect()
    await recv_type(on_a, "status", state="connected")

    async def current() -> tuple[int, Any]:
        resp = await a.get("/v2/streams/current", headers=bearer(token))
        return resp.status, await resp.json()

    live_row = (await eventually(current, lambda r: r[0] == 200))[1]
    b = await workers("b", live_source=source_b, lease_seconds=30)  # starts while a's LIVE is on
    resp = await b.get("/v2/streams/current", headers=bearer(token))
    assert resp.status == 200 and (await resp.json())["id"] == live_row["id"]  # not closed as dangling by b
    await on_a.close()
    on_b = await b.ws_connect(f"/v2/ws?token={token}&since=0")  # no sticky routing: the app comes back on b
    frames = [await recv_type(on_b, "status", state="connected")]
    assert not source_b.started  # a still watches; b only relays
    await a.close()  # a graceful shutdown (SIGTERM): the user is handed over, not left to a lease expiry
    watch = await source_b.next_watch()
    frames.append(await recv_type(on_b, "status", state="reconnecting"))
    watch.connect()
    frames.append(await recv_type(on_b, "status", state="connected"))
    watch.emit(ROSE)
    frames.append(await recv_type(on_b, "gift"))
    await _seqs_rise(frames)
    await on_b.close()


async def test_an_app_that_reconnects_while_its_home_shuts_down_finds_the_new_home(workers) -> None:
    """SIGTERM: the stopping worker hands its users over before it closes their sockets, so the app coming back
    through another worker at once never reaches it as a home (it opened a second TikTok connection there)."""
    source_a, source_b = ScriptedSource(), ScriptedSource()
    a = await workers("a", live_source=source_a, lease_seconds=30)
    b = await workers("b", live_source=source_b, lease_seconds=30)
    _, token = await register(a)
    async with aiohttp.ClientSession() as app_http:  # the app's own connection: a's test client closes with a
        on_a = await app_http.ws_connect(a.make_url(f"/v2/ws?token={token}"))
        (await source_a.next_watch()).connect()
        before = await recv_type(on_a, "status", state="connected")
        closing = asyncio.create_task(a.server.close())  # SIGTERM's graceful shutdown
        code, _ = await closed_with(on_a)
    assert code == 1001
    on_b = await b.ws_connect(f"/v2/ws?token={token}&since={before['seq']}")  # at once, as the app does
    watch = await source_b.next_watch()
    await recv_type(on_b, "status", state="reconnecting")  # after a's last status, sent again on connect
    watch.connect()
    after = await recv_type(on_b, "status", state="connected")
    await closing
    assert source_a.started == ["streamer"]  # a never watched again while it stopped
    assert after["seq"] > before["seq"]
    await on_b.close()


async def test_a_watch_whose_home_went_silent_is_adopted_with_no_app_anywhere(workers) -> None:
    source_a, source_b = ScriptedSource(), ScriptedSource()
    a = await workers("a", live_source=source_a, lease_seconds=1)
    b = await workers("b", live_source=source_b, lease_seconds=1)
    _, token = await register(a)
    ws = await a.ws_connect(f"/v2/ws?token={token}")
    (await source_a.next_watch()).connect()
    await recv_type(ws, "status", state="connected")
    await ws.close()  # no app anywhere now; the watch goes on (idle_stop_minutes)
    for loop in (a.app[keys.HOME]._keeper, a.app[keys.HOME]._rounds):
        await loop.close()  # a stops renewing and looking around, as a frozen or killed worker would
    watch = await source_b.next_watch(timeout=10)  # b's sweep finds the watch without a home
    assert watch.unique_id == "streamer"


async def test_a_socket_whose_home_dies_while_answering_its_opening_gets_the_next_home(workers, monkeypatch) -> None:
    # The app's socket opens on b while a is the home; a takes the "app opened" call and dies before answering
    # (kill -9 drops its NATS subscription, and no one tells b). b asks again and becomes the home once a's lease
    # lapsed; the socket got `busy` (before that, a 1011 close) after CALL_TIMEOUT (10 s) instead.
    a = await workers("a", live_source=ScriptedSource(), lease_seconds=1)
    b = await workers("b", live_source=ScriptedSource(), lease_seconds=1)
    user_id, token = await register(a)
    on_a = await a.ws_connect(f"/v2/ws?token={token}")
    await recv_type(on_a, "status")  # a is the home
    taken, dying = asyncio.Event(), asyncio.Event()
    opened = OPERATIONS["app_opened"]

    async def app_opened(app: Any, user: int, args: dict[str, Any]) -> dict[str, Any]:
        if app is a.app:  # the call reached a, which never answers it
            taken.set()
            await dying.wait()
        return await opened(app, user, args)

    monkeypatch.setitem(OPERATIONS, "app_opened", app_opened)
    on_b = await b.ws_connect(f"/v2/ws?token={token}")
    await on_b.send_json({"action": "ping"})  # read once the socket's opening is through
    await asyncio.wait_for(taken.wait(), 10)
    home_a = a.app[keys.HOME]
    for loop in (home_a._keeper, home_a._rounds):
        await loop.close()  # a dies: no more renewals or rounds, and nothing answers for the user there
    await home_a._subs[user_id].unsubscribe()  # at once, not drained: a killed worker answers nothing more
    try:
        frames = [await recv(on_b, timeout=15)]  # a ceiling: a's 1 s lease lapses, then b answers itself
        while frames[-1]["type"] != "pong":
            frames.append(await recv(on_b, timeout=15))
        assert [f for f in frames if f["type"] == "error"] == []  # was `busy` (or a 1011 close) after 10 s
        assert b.app[keys.HOME].holds(user_id)
    finally:
        dying.set()
    await on_b.close()
    await on_a.close()


async def test_a_home_whose_lease_was_taken_closes_its_connection_and_comes_back(workers) -> None:
    source = ScriptedSource()
    a = await workers("a", live_source=source)  # renews every lease_seconds / 3 = 1 s
    user_id, token = await register(a)
    ws = await a.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()
    watch.connect()
    before = await recv_type(ws, "status", state="connected")
    leases = a.app[keys.LEASES]
    await leases.kv.put(f"user.{user_id}", b"intruder")  # as if a's lease had expired and another took it
    try:
        for _ in range(100):
            if watch.cancelled:
                break
            await asyncio.sleep(0.05)
        assert watch.cancelled  # the TikTok connection is closed: never two at once
    finally:
        await leases.kv.delete(f"user.{user_id}")  # the intruder is gone without a word
    again = await source.next_watch(timeout=10)  # a's app socket finds no home, a takes it back
    again.connect()
    after = await recv_type(ws, "status", state="connected")
    assert after["seq"] > before["seq"]
    await ws.close()


async def test_health_shows_the_cluster(workers) -> None:
    a = await workers("a")
    b = await workers("b")
    for client, name in ((a, "a"), (b, "b")):
        body = await (await client.get("/health")).json()
        assert body["cluster"] == {"worker_id": name, "workers": 2, "sessions_here": 0}
    await b.close()  # a worker that stops leaves the registry at once, not a lease later
    assert (await (await a.get("/health")).json())["cluster"]["workers"] == 1


async def test_one_process_has_no_cluster_block(client) -> None:
    assert "cluster" not in await (await client.get("/health")).json()


@pytest.mark.parametrize(("env", "needle"), [
    ({"TTBOOST_CLUSTER_NATS_URL": "nats://127.0.0.1:4222"}, "needs PostgreSQL"),
    ({"TTBOOST_CLUSTER_NATS_URL": "http://nats", "DATABASE_URL": "postgresql://db/tt"}, "nats://"),
    ({"TTBOOST_CLUSTER_NATS_URL": "nats://n:4222", "DATABASE_URL": "postgresql://db/tt",
      "TTBOOST_CLUSTER_LEASE_SECONDS": "0.5"}, "lease_seconds"),
])
def test_cluster_config_is_checked_at_start(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, env=env)


async def test_the_registry_lists_every_worker_while_they_beat(nats_url: str) -> None:
    """Reads racing a storm of heartbeats: each lists every worker (KeyValue.keys() answered [] in such a race)."""
    from ttboost.cluster.broker import Broker

    brokers = [Broker(nats_url, f"storm-{n}", lease_seconds=30) for n in range(4)]
    for broker in brokers:
        await broker.open()

    async def storm() -> None:
        while True:
            await asyncio.gather(*(broker._beat() for broker in brokers[:3]))

    beating = asyncio.create_task(storm())
    try:
        for _ in range(60):
            assert {f"storm-{n}" for n in range(4)} <= set(await brokers[0].workers())
        await brokers[3].close()
        assert "storm-3" not in await brokers[0].workers()  # a goodbye is not a worker
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        for broker in brokers:
            await broker.close()


async def test_a_lease_released_after_another_worker_took_it_is_left_alone(nats_url: str) -> None:
    """An expired lease taken by another worker: the late release is a no-op, not an error, and theirs stays."""
    from ttboost.cluster.broker import Broker
    from ttboost.cluster.leases import SessionLeases

    a, b = Broker(nats_url, "a", lease_seconds=30), Broker(nats_url, "b", lease_seconds=30)
    for broker in (a, b):
        await broker.open()
    try:
        leases_a, leases_b = SessionLeases(a), SessionLeases(b)
        await leases_a.start()
        await leases_b.start()
        old = await leases_a.acquire(7)
        assert old is not None
        await leases_b.kv.delete("user.7")  # as if it had expired
        assert await leases_b.acquire(7) is not None
        await leases_a.release(7, old)  # raised BadRequestError 10071 before
        assert await leases_a.holder(7) == "b"
    finally:
        for broker in (a, b):
            await broker.close()
