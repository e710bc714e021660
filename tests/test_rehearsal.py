"""Rehearsal: a recorded stream replayed through the current triggers, marked, paced, and counted nowhere."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.conftest import make_config
from tests.fake_live import ScriptedSource
from tests.fake_tts import FakeEngine
from tests.helpers import bearer, eventually
from tests.test_triggers_api import _add_sound
from tests.test_ws import connected_socket, recv, recv_type
from ttboost import keys
from ttboost.app import create_app
from ttboost.pipeline.events import LiveEvent

GAP_SECONDS = 2.0  # the recorded stream's events are spread this far apart before rehearsing


class FakePacer:
    """Records the waits instead of sleeping; `hold` makes every wait block until released."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []
        self.released = asyncio.Event()
        self.released.set()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await self.released.wait()


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


@pytest.fixture
def pacer() -> FakePacer:
    return FakePacer()


@pytest.fixture
async def client(aiohttp_client, tmp_path, source, pacer):
    app = create_app(make_config(tmp_path / "data"), live_source=source, tts_engine=FakeEngine(),
                     reconnect_min_seconds=0.01, rehearsal_pacer=pacer)
    return await aiohttp_client(app)


def recorded() -> list[LiveEvent]:
    """Fresh events each time: the pipeline writes each event's audio into it."""
    return [
        LiveEvent("viewer", current=4, total=4),
        LiveEvent("chat", user="Аня", username="anya", message="привет"),
        LiveEvent("gift", user="Bob", username="bob", gift_id=5655, gift_name="Rose", count=3, diamond_count=1),
        LiveEvent("like", user="Bob", username="bob", count=10, total=10),
        LiveEvent("gift", user="Kim", username="kim", gift_id=5655, gift_name="Rose", count=1, diamond_count=1),
        LiveEvent("viewer_join", user="Leo", username="leo"),
    ]


N = len(recorded())


async def record_stream(client, source, triggers: tuple[dict[str, Any], ...] = ()
                        ) -> tuple[Any, str, int, list[dict[str, Any]]]:
    """A LIVE with recorded() (and `triggers` set), ended; its events spread GAP_SECONDS apart in the log.
    Returns (ws, token, stream id, the frames the app got)."""
    ws, watch, token = await connected_socket(client, source)
    for trigger in triggers:
        assert (await client.post("/v2/triggers/set", json=trigger, headers=bearer(token))).status == 200
    async def current() -> tuple[int, Any]:
        resp = await client.get("/v2/streams/current", headers=bearer(token))
        return resp.status, await resp.json()

    # The stream's row is written just after "connected" goes out: waited for, not raced.
    stream_id = (await eventually(current, lambda r: r[0] == 200))[1]["id"]
    watch.emit(*recorded())
    live: list[dict[str, Any]] = []
    while sum(f["type"] != "viewer_first_message" for f in live) < N:
        live.append(await recv(ws))
    watch.end()
    await recv_type(ws, "status", state="waiting_for_live")
    path = f"/v2/streams/{stream_id}/events"

    async def logged() -> list[dict[str, Any]]:
        return (await (await client.get(path, headers=bearer(token))).json())["events"]

    assert len(await eventually(logged, lambda e: len(e) == len(live))) == len(live)
    start = datetime(2026, 11, 29, 20, 0, tzinfo=timezone.utc)
    db = client.server.app[keys.DB]
    for i, frame in enumerate(live):
        ts = (start + timedelta(seconds=GAP_SECONDS * i)).isoformat(timespec="milliseconds")[:-6] + "Z"
        await db.execute("UPDATE events SET ts = ? WHERE seq = ? AND session_id = ?", (ts, frame["seq"], stream_id))
    return ws, token, stream_id, live


async def snapshot(client, token: str, stream_id: int) -> tuple[Any, ...]:
    auth = bearer(token)
    detail = await (await client.get(f"/v2/streams/{stream_id}", headers=auth)).json()
    triggers = (await (await client.get("/v2/triggers/list", headers=auth)).json())["triggers"]
    events = (await (await client.get(f"/v2/streams/{stream_id}/events", headers=auth)).json())["events"]
    streams = (await (await client.get("/v2/streams", headers=auth)).json())["streams"]
    rows = await client.server.app[keys.DB].fetchval("SELECT COUNT(*) FROM events")
    return detail, [t["executed_count"] for t in triggers], events, streams, rows


async def test_rehearsal_replays_through_the_changed_trigger_in_order_and_counts_nothing(client, source,
                                                                                          pacer) -> None:
    app = client.server.app
    ws, token, stream_id, live = await record_stream(client, source)
    user_id = (await (await client.get("/v2/auth/me", headers=bearer(token))).json())["id"]
    for name in ("old.mp3", "new.mp3"):
        await _add_sound(app, user_id, name)
    rose = {"event_type": "gift", "condition_key": "gift_name", "condition_value": "Rose", "action": "play_sound",
            "action_params": {"sound_filename": "old.mp3"}, "cooldown_seconds": 3}
    resp = await client.post("/v2/triggers/set", json=rose, headers=bearer(token))
    trigger = (await resp.json())["trigger"]
    rose["action_params"] = {"sound_filename": "new.mp3", "volume": 40}
    resp = await client.post("/v2/triggers/set", json={**rose, "id": trigger["id"]}, headers=bearer(token))
    assert resp.status == 200
    await app[keys.BUS].log.flush()  # settled: nothing waits in a batch
    await app[keys.RECORDER].flush()
    before = await snapshot(client, token, stream_id)

    resp = await client.post(f"/v2/streams/{stream_id}/rehearse", json={"speed": 20}, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"status": "ok", "stream_id": stream_id, "speed": 20, "events": N,
                                 "duration_s": round(GAP_SECONDS * (N - 1) / 20, 1)}
    started = await recv(ws)
    assert (started["type"], started["state"], started["stream_id"]) == ("rehearsal", "started", stream_id)
    frames = [await recv(ws) for _ in range(N)]
    finished = await recv(ws)
    assert (finished["type"], finished["state"]) == ("rehearsal", "finished")

    assert all(f["rehearsal"] is True for f in frames)
    assert [f["type"] for f in frames] == [f["type"] for f in live]
    seqs = [started["seq"], *(f["seq"] for f in frames), finished["seq"]]
    assert seqs == sorted(seqs) and seqs[0] > max(f["seq"] for f in live)
    for old, new in zip(live, frames):
        strip = ("seq", "ts", "sound_url", "volume", "tts_url", "rehearsal")
        assert {k: v for k, v in new.items() if k not in strip} == {k: v for k, v in old.items() if k not in strip}
    bob, kim = frames[2], frames[4]
    assert bob["sound_url"].endswith(f"/static/sounds/{user_id}/new.mp3") and bob["volume"] == 40
    # The cooldown (3 s) runs on the recorded time: Kim's Rose came 4 s after Bob's, so it plays too.
    assert kim["sound_url"] == bob["sound_url"]
    assert "sound_url" not in live[2]  # that night no rule played anything
    # Paced at 20× the recorded gaps (a fake pacer: the figures, not the wall clock).
    assert pacer.sleeps == pytest.approx([GAP_SECONDS / 20] * (N - 1))

    await app[keys.BUS].log.flush()  # whatever the rehearsal may have queued is written now
    await app[keys.RECORDER].flush()
    assert await snapshot(client, token, stream_id) == before
    await ws.close()


async def test_a_first_message_greeting_is_decided_anew_not_replayed_twice(client, source) -> None:
    greet = {"event_type": "viewer_first_message", "condition_key": "always", "action": "tts",
             "action_params": {"text_template": "welcome {user}"}}
    ws, token, stream_id, live = await record_stream(client, source, (greet,))
    assert [f["type"] for f in live].count("viewer_first_message") == 1
    resp = await client.post(f"/v2/streams/{stream_id}/rehearse", json={"speed": 20}, headers=bearer(token))
    assert resp.status == 200
    await recv_type(ws, "rehearsal", state="started")
    frames = []
    while (frame := await recv(ws))["type"] != "rehearsal":
        frames.append(frame)
    assert frame["state"] == "finished"
    assert [f["type"] for f in frames] == [f["type"] for f in live]
    greeting = frames[[f["type"] for f in frames].index("viewer_first_message")]
    assert greeting["rehearsal"] is True and greeting["tts_url"] and greeting["username"] == "anya"
    await ws.close()


async def test_one_rehearsal_per_user_stop_and_edges(client, source, pacer) -> None:
    ws, token, stream_id, _live = await record_stream(client, source)
    auth = bearer(token)
    path = f"/v2/streams/{stream_id}/rehearse"
    for bad in (0, 21, -1, "5", True, 2.5, None):
        resp = await client.post(path, json={"speed": bad}, headers=auth)
        assert resp.status == 422 and list((await resp.json())["fields"]) == ["speed"], bad
    pacer.released.clear()  # the rehearsal waits before its second event until released
    resp = await client.post(path, json={"speed": 1}, headers=auth)
    assert resp.status == 200 and (await resp.json())["speed"] == 1
    await recv_type(ws, "rehearsal", state="started")
    first = await recv(ws)
    assert first["rehearsal"] is True and first["type"] == "viewer"
    again = await client.post(path, json={"speed": 20}, headers=auth)
    assert again.status == 409
    assert await again.json() == {"detail": "a rehearsal is already running", "code": "rehearsal_running"}
    stop = await client.post("/v2/streams/rehearse/stop", headers=auth)
    assert await stop.json() == {"status": "ok", "stopped": True}
    stopped = await recv(ws)
    assert (stopped["type"], stopped["state"]) == ("rehearsal", "stopped")
    stop = await client.post("/v2/streams/rehearse/stop", headers=auth)
    assert await stop.json() == {"status": "ok", "stopped": False}
    pacer.released.set()
    resp = await client.post(path, json={}, headers=auth)  # speed defaults to 1; a new one may start now
    assert resp.status == 200 and (await resp.json())["speed"] == 1
    await recv_type(ws, "rehearsal", state="finished")
    resp = await client.post(path, json={"speed": 20}, headers=auth)
    assert resp.status == 200
    pacer.released.clear()
    await recv_type(ws, "rehearsal", state="started")
    await ws.close()  # the app leaves and the server shuts down mid-rehearsal: the task is cancelled, not leaked


async def test_a_stream_whose_events_are_gone_cannot_be_rehearsed(client, source) -> None:
    ws, token, stream_id, _live = await record_stream(client, source)
    await client.server.app[keys.DB].execute("DELETE FROM events WHERE session_id = ?", (stream_id,))
    resp = await client.post(f"/v2/streams/{stream_id}/rehearse", json={"speed": 5}, headers=bearer(token))
    assert resp.status == 409
    assert await resp.json() == {"detail": "no recorded events to rehearse", "code": "no_events"}
    detail = await (await client.get(f"/v2/streams/{stream_id}", headers=bearer(token))).json()
    assert detail["gifts"] == 4  # the figures outlive the event log
    await ws.close()


async def test_rehearsal_needs_an_active_license(client, source) -> None:
    ws, token, stream_id, _live = await record_stream(client, source)
    await client.server.app[keys.DB].execute("UPDATE licenses SET status = 'revoked'")
    resp = await client.post(f"/v2/streams/{stream_id}/rehearse", json={"speed": 5}, headers=bearer(token))
    assert resp.status == 403 and (await resp.json())["code"] == "license_expired"
    await ws.close()


def test_recorded_payloads_round_trip_into_events() -> None:
    from ttboost.streams.rehearsal import event_of

    for event in recorded():
        payload = json.loads(json.dumps({"type": event.type, **event.to_payload()}))
        assert event_of(payload).to_payload() == event.to_payload()


async def test_after_a_restart_seq_stays_above_every_rehearsal_frame(aiohttp_client, tmp_path, source,
                                                                      pacer) -> None:
    """Rehearsal frames are not logged; their seq numbers must still never be handed out again."""
    config = make_config(tmp_path / "data")
    client = await aiohttp_client(create_app(config, live_source=source, tts_engine=FakeEngine(),
                                             reconnect_min_seconds=0.01, rehearsal_pacer=pacer))
    ws, token, stream_id, _live = await record_stream(client, source)
    resp = await client.post(f"/v2/streams/{stream_id}/rehearse", json={"speed": 20}, headers=bearer(token))
    assert resp.status == 200
    finished = await recv_type(ws, "rehearsal", state="finished")
    await ws.close()
    await client.close()
    again = await aiohttp_client(create_app(config, live_source=ScriptedSource(), tts_engine=FakeEngine()))
    ws = await again.ws_connect(f"/v2/ws?token={token}")
    assert (await recv(ws))["seq"] > finished["seq"]
    await ws.close()


async def test_a_burst_recorded_in_one_instant_reaches_the_app_whole(client, source) -> None:
    """TikTok delivers busy moments in batches that share a timestamp: replayed at once, they must not overrun
    the app socket's send queue (it would be closed as too slow) — the replay lets the writer run."""
    ws, watch, token = await connected_socket(client, source)
    app = client.server.app
    user_id = (await (await client.get("/v2/auth/me", headers=bearer(token))).json())["id"]
    db = app[keys.DB]
    stream_id = await db.execute("INSERT INTO stream_sessions (user_id, tiktok_username, started_at, ended_at) "
                                 "VALUES (?, 'streamer', '2026-11-29T20:00:00Z', '2026-11-29T21:00:00Z')",
                                 (user_id,))
    burst = 3 * app[keys.CONFIG].limits.ws_send_queue
    payload = json.dumps({"user": "Аня", "username": "anya", "message": "!!!"})
    await db.executemany("INSERT INTO events (user_id, session_id, seq, type, ts, payload) VALUES (?, ?, ?, ?, ?, ?)",
                         [(user_id, stream_id, 10_000 + i, "chat", "2026-11-29T20:00:01.000Z", payload)
                          for i in range(burst)])
    resp = await client.post(f"/v2/streams/{stream_id}/rehearse", json={"speed": 20}, headers=bearer(token))
    assert resp.status == 200
    await recv_type(ws, "rehearsal", state="started")
    chats = 0
    while (frame := await recv(ws))["type"] != "rehearsal":
        chats += frame["type"] == "chat"
    assert frame["state"] == "finished" and chats == burst
    await ws.close()


async def test_a_rehearsal_stopped_before_it_ran_frees_the_user(client, source) -> None:
    ws, token, stream_id, _live = await record_stream(client, source)
    user_id = (await (await client.get("/v2/auth/me", headers=bearer(token))).json())["id"]
    rehearsals = client.server.app[keys.REHEARSALS]
    await rehearsals.start(user_id, stream_id, 20)
    assert await rehearsals.stop(user_id) is True  # no await in between: its task had not started yet
    assert not rehearsals.running(user_id)
    resp = await client.post(f"/v2/streams/{stream_id}/rehearse", json={"speed": 20}, headers=bearer(token))
    assert resp.status == 200
    await recv_type(ws, "rehearsal", state="finished")
    await ws.close()
