"""Cluster mode: a user's home changing hands while channels are kept, forgotten or made again on the workers."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.fake_live import ScriptedSource
from tests.helpers import eventually
from tests.test_cluster import ROSE, workers  # noqa: F401 (the fixture)
from tests.test_revocation import FAST, closed_with
from tests.test_ws import recv_type, register
from ttboost import keys


def _forgettable(worker: Any, user_id: int) -> None:
    """As if the user's channel on this worker had been idle for the whole replay window."""
    worker.app[keys.BUS].get(user_id).touched -= 10**6


async def test_a_worker_that_lost_a_lease_feeds_an_app_that_comes_back_to_it(workers) -> None:  # noqa: F811
    """a lost the user (its lease was taken) with no socket there: its channel stays a copy, and an app socket
    opening on a later must get the new home's frames through it."""
    source_a, source_b = ScriptedSource(), ScriptedSource()
    a = await workers("a", live_source=source_a)
    b = await workers("b", live_source=source_b)
    user_id, token = await register(a)
    first = await a.ws_connect(f"/v2/ws?token={token}")  # a is the home and watches
    (await source_a.next_watch()).connect()
    before = await recv_type(first, "status", state="connected")
    await first.close()
    leases = a.app[keys.LEASES]
    await leases.kv.put(f"user.{user_id}", b"intruder")  # a cannot renew: the lease is lost
    await eventually(lambda: a.app[keys.HOME].holds(user_id), lambda held: not held, timeout=10)
    await leases.kv.delete(f"user.{user_id}")
    on_b = await b.ws_connect(f"/v2/ws?token={token}")  # b becomes the home and takes the watch over
    watch = await source_b.next_watch(timeout=10)
    watch.connect()
    connected = await recv_type(on_b, "status", state="connected")
    if connected["seq"] == before["seq"]:  # the window's replay first
        connected = await recv_type(on_b, "status", state="connected")
    on_a = await a.ws_connect(f"/v2/ws?token={token}&since={connected['seq']}")  # the app moves back to a
    assert (await closed_with(on_b))[0] == 4001
    watch.emit(ROSE)
    gift = await recv_type(on_a, "gift")
    assert gift["seq"] > connected["seq"]
    await on_a.close()


async def test_an_edge_channel_made_again_as_it_is_forgotten_is_fed(workers) -> None:  # noqa: F811
    """The janitor forgets b's copy channel and a socket makes it again before the unfollow has run."""
    source = ScriptedSource()
    a = await workers("a", live_source=source)
    b = await workers("b")
    user_id, token = await register(a)
    ws = await a.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()
    watch.connect()
    await recv_type(ws, "status", state="connected")
    bus_b = b.app[keys.BUS]
    await bus_b.channel(user_id)  # a copy on b (a route or a socket used it)
    _forgettable(b, user_id)
    assert bus_b.forget(user_id)
    channel = await bus_b.channel(user_id)  # made again at once, as by a socket opening then
    await asyncio.sleep(0.2)  # whatever the forget left to do has run
    watch.emit(ROSE)
    gift = await recv_type(ws, "gift")
    seq = await eventually(lambda: channel.seq, lambda seq: seq >= gift["seq"])
    assert seq == gift["seq"]  # b's copy got the home's frame
    await ws.close()


async def test_an_operation_as_the_home_forgets_the_user_finds_a_home(workers) -> None:  # noqa: F811
    """a forgets an idle user it is the home of; an operation arriving before the lease is released must not run
    on a as if it were still the home (its frames would go nowhere)."""
    source_a = ScriptedSource()
    a = await workers("a", live_source=source_a)
    b = await workers("b")
    user_id, token = await register(a)
    resp = await a.post("/v2/settings/update", headers={"Authorization": f"Bearer {token}"},
                        json={"auto_connect": False})
    assert resp.status == 200
    first = await a.ws_connect(f"/v2/ws?token={token}")  # a is the home; no watch
    await recv_type(first, "status", state="idle")
    await first.close()
    homes = a.app[keys.HOME]
    await eventually(lambda: a.app[keys.LIVE].busy(user_id), lambda busy: not busy)
    _forgettable(a, user_id)
    assert a.app[keys.BUS].forget(user_id)
    await homes.run(user_id, "connect", {"username": "streamer"})  # before the release has run
    watch = await source_a.next_watch()
    watch.connect()
    on_b = await b.ws_connect(f"/v2/ws?token={token}")
    await recv_type(on_b, "status", state="connected")
    watch.emit(ROSE)
    assert (await recv_type(on_b, "gift"))["gift_name"] == "Rose"
    assert homes.holds(user_id) and a.app[keys.BUS].get(user_id).home
    await on_b.close()


async def test_a_licence_ending_with_the_app_on_an_edge_stops_the_watch_on_the_home(workers) -> None:  # noqa: F811
    source_a = ScriptedSource()
    a = await workers("a", live_source=source_a, tiktok={"idle_stop_minutes": 0.05}, **FAST)
    b = await workers("b", live_source=ScriptedSource(), **FAST)
    user_id, token = await register(a)
    first = await a.ws_connect(f"/v2/ws?token={token}")  # a becomes the home and watches
    watch = await source_a.next_watch()
    watch.connect()
    await recv_type(first, "status", state="connected")
    on_b = await b.ws_connect(f"/v2/ws?token={token}")  # the app moves to b
    assert (await closed_with(first))[0] == 4001
    await a.app[keys.DB].execute("UPDATE licenses SET expires_at = '2000-01-01T00:00:00Z' WHERE user_id = ?",
                                 (user_id,))
    code, frames = await closed_with(on_b)
    assert code == 4003 and ("error", "license_expired") in [(f["type"], f.get("code")) for f in frames]
    await eventually(lambda: watch.cancelled, bool, timeout=10)
    assert watch.cancelled


async def test_settings_changed_through_a_third_worker_reach_the_home(workers) -> None:  # noqa: F811
    source_a, source_b, source_c = ScriptedSource(), ScriptedSource(), ScriptedSource()
    a = await workers("a", live_source=source_a)
    b = await workers("b", live_source=source_b)
    c = await workers("c", live_source=source_c)
    _, token = await register(a)
    first = await a.ws_connect(f"/v2/ws?token={token}")  # a is the home and watches @streamer
    (await source_a.next_watch()).connect()
    await recv_type(first, "status", state="connected")
    on_b = await b.ws_connect(f"/v2/ws?token={token}")  # the app on b
    headers = {"Authorization": f"Bearer {token}"}
    resp = await c.post("/v2/settings/update", headers=headers, json={"tiktok_username": "fixed_typo"})
    assert resp.status == 200
    assert (await source_a.next_watch()).unique_id == "fixed_typo"  # switched where the watch runs
    resp = await c.post("/v2/settings/update", headers=headers, json={"auto_connect": False})
    assert resp.status == 200  # the watch auto_connect started stops
    await recv_type(on_b, "status", state="idle")
    resp = await c.post("/v2/settings/update", headers=headers, json={"auto_connect": True})
    assert resp.status == 200  # on again with the app on b: it starts again, on a
    assert (await source_a.next_watch()).unique_id == "fixed_typo"
    assert not source_b.started and not source_c.started
    await on_b.close()


async def test_an_overlay_on_a_worker_that_is_not_the_home_gets_the_frames(workers) -> None:  # noqa: F811
    a = await workers("a", live_source=ScriptedSource())
    b = await workers("b", live_source=ScriptedSource())
    user_id, token = await register(a)
    headers = {"Authorization": f"Bearer {token}"}
    key = (await (await a.post("/v2/overlay/key", headers=headers)).json())["key"]
    overlay = await b.ws_connect(f"/v2/overlay/ws?key={key}")  # no app, no home anywhere yet
    await eventually(lambda: a.app[keys.HOME].holds(user_id) or b.app[keys.HOME].holds(user_id), bool)
    for worker in (a, b):  # simulated through the home and through the other worker
        resp = await worker.post("/v2/events/simulate", headers=headers, json={"type": "chat", "message": "hi"})
        assert resp.status == 200
        chat = await recv_type(overlay, "chat")
        assert chat["seq"] == (await resp.json())["seq"]
    await overlay.close()


async def test_a_home_that_cannot_be_reached_is_an_error_frame_not_a_closed_socket(workers) -> None:  # noqa: F811
    """The lease is held by a worker that never answers (hung): the app's socket hears `busy` and stays open."""
    a = await workers("a", live_source=ScriptedSource(), lease_seconds=1)
    user_id, token = await register(a)
    leases = a.app[keys.LEASES]

    async def hold() -> None:
        while True:
            await leases.kv.put(f"user.{user_id}", b"hung")
            await asyncio.sleep(0.2)

    holding = asyncio.create_task(hold())
    try:
        await eventually(lambda: leases.holder(user_id), lambda holder: holder == "hung")
        ws = await a.ws_connect(f"/v2/ws?token={token}")  # app_opened waits for a home, in vain
        error = await recv_type(ws, "error")
        assert error["code"] == "busy"
        await ws.send_json({"action": "ping"})
        assert (await recv_type(ws, "pong"))["type"] == "pong"  # still open
    finally:
        holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)
    await ws.close()
