"""End to end through the real TikTokLive client: fake TikTok (local servers) → server → the app's WebSocket."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, AsyncIterator

import aiohttp
import pytest

from tests.conftest import make_config
from tests.fake_tiktok import FakeTikTok
from tests.fake_tts import FakeEngine
from tests.helpers import sample_sum, scrape
from tests.test_ws import recv, recv_type, register
from ttboost import keys
from ttboost.app import create_app

BOB = ("Bob", "bob", 101)
ANYA = ("Аня", "anya.live", 102)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTikTok]:
    async with FakeTikTok() as fake:
        yield fake


@pytest.fixture
def live_client(aiohttp_client, tmp_path, fake):
    async def factory(**tiktok: Any):
        config = make_config(tmp_path / "data")
        timing = {"live_check_seconds": 0.2, "combo_timeout_seconds": 0.3, **tiktok}
        config = dataclasses.replace(config, tiktok=fake.config(**timing))
        return await aiohttp_client(create_app(config, tts_engine=FakeEngine(), reconnect_min_seconds=0.05))

    return factory


async def app_socket(client) -> aiohttp.ClientWebSocketResponse:
    """A newly registered streamer's app socket (auto_connect starts the LIVE watch of "streamer")."""
    _, token = await register(client)
    return await client.ws_connect(f"/v2/ws?token={token}")


async def status(ws: aiohttp.ClientWebSocketResponse, state: str) -> dict[str, Any]:
    return await recv_type(ws, "status", state=state)


async def test_every_event_reaches_the_app_in_order_and_a_combo_is_one_gift(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client()
    ws = await app_socket(client)
    await status(ws, "connecting")
    assert (await status(ws, "connected"))["tiktok_username"] == "streamer"
    await fake.send_chat(ANYA, "привет всем")
    for n in (1, 2, 3):
        await fake.send_gift(BOB, 5655, "Rose", 1, repeat_count=n, repeat_end=False, streakable=True)
    await fake.send_gift(BOB, 5655, "Rose", 1, repeat_count=4, repeat_end=True, streakable=True)
    await fake.send_gift(ANYA, 6064, "GG", 10, repeat_count=1, repeat_end=False, streakable=False)
    await fake.send_like(BOB, 15, 1500)
    await fake.send_join(ANYA)
    await fake.send_follow(BOB)
    await fake.send_share(ANYA)
    await fake.send_subscribe(BOB, sub_month=3)
    await fake.send_viewers(12, 340)
    frames = [await recv(ws) for _ in range(9)]
    assert [f["type"] for f in frames] == ["chat", "gift", "gift", "like", "viewer_join", "follow", "share",
                                           "subscribe", "viewer"]
    chat, rose, gg, like, join, follow, share, sub, viewers = frames
    assert (chat["user"], chat["username"], chat["message"]) == ("Аня", "anya.live", "привет всем")
    assert (rose["gift_name"], rose["gift_id"], rose["count"], rose["diamond_count"], rose["diamonds"]) == \
        ("Rose", 5655, 4, 1, 4)
    assert (gg["gift_name"], gg["count"], gg["diamonds"]) == ("GG", 1, 10)
    assert (like["count"], like["total"]) == (15, 1500)
    assert join["username"] == "anya.live" and follow["username"] == "bob" and share["user"] == "Аня"
    assert sub["sub_month"] == 3
    assert (viewers["current"], viewers["total"]) == (12, 340)
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs)
    await ws.close()


async def test_a_combo_whose_end_never_comes_is_closed_after_silence(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client(combo_timeout_seconds=0.2)
    ws = await app_socket(client)
    await status(ws, "connected")
    for n in (1, 2, 3):
        await fake.send_gift(BOB, 5655, "Rose", 1, repeat_count=n, repeat_end=False, streakable=True)
    gift = await recv_type(ws, "gift")
    assert gift["count"] == 3
    await ws.close()


async def test_dropped_socket_reconnects_and_events_flow_again(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client()
    ws = await app_socket(client)
    await status(ws, "connected")
    await fake.drop(1011)
    reconnecting = await status(ws, "reconnecting")
    assert reconnecting["connected"] is False and reconnecting["retry_in"] > 0
    await status(ws, "connected")
    assert fake.connections == 2
    await fake.send_chat(BOB, "снова тут")
    assert (await recv_type(ws, "chat"))["message"] == "снова тут"
    await ws.close()


async def test_offline_streamer_is_waited_for_then_connected(live_client, fake) -> None:
    fake.set_user("streamer", live=False)
    client = await live_client(live_check_seconds=0.2)
    ws = await app_socket(client)
    waiting = await status(ws, "waiting_for_live")
    assert waiting["retry_in"] == 0.2 and waiting["connected"] is False
    fake.set_user("streamer", live=True)
    await status(ws, "connected")
    await ws.close()


async def test_live_end_reports_live_ended_then_waits(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client(live_check_seconds=30)
    ws = await app_socket(client)
    await status(ws, "connected")
    await fake.end_live()
    await status(ws, "live_ended")
    assert (await status(ws, "waiting_for_live"))["retry_in"] == 30
    await ws.close()


async def test_unknown_user_is_an_error_and_not_retried(live_client, fake) -> None:
    fake.set_user("streamer", exists=False)
    client = await live_client(live_check_seconds=0.05)
    ws = await app_socket(client)
    error = await recv_type(ws, "error")
    assert error["code"] == "tiktok_user_not_found" and "streamer" in error["message"]
    await status(ws, "error")
    requests = len(fake.page_requests)
    await asyncio.sleep(0.3)
    assert len(fake.page_requests) == requests  # nothing hammers TikTok after a permanent error
    await ws.close()


async def test_sign_rate_limit_waits_what_the_server_asked(live_client, fake) -> None:
    fake.set_user("streamer")
    fake.sign_rate_limit(1)
    client = await live_client()
    ws = await app_socket(client)
    assert (await recv_type(ws, "error"))["code"] == "sign_rate_limited"
    assert (await status(ws, "reconnecting"))["retry_in"] == 1
    await status(ws, "connected")
    await ws.close()


async def test_blocked_handshake_is_reported(live_client, fake) -> None:
    fake.set_user("streamer")
    fake.block_handshake()
    client = await live_client()
    ws = await app_socket(client)
    assert (await recv_type(ws, "error"))["code"] == "tiktok_blocked"
    await status(ws, "error")
    await ws.close()


async def test_watch_stops_when_no_app_is_connected_for_the_idle_time(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client(idle_stop_minutes=0.005)  # 0.3 s
    ws = await app_socket(client)
    await status(ws, "connected")
    await ws.close()
    await fake.wait_closed()
    health = await (await client.get("/health")).json()
    assert health["live_sessions"] == 0 and health["ws_clients"] == 0


async def test_streams_and_events_are_recorded(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client()
    user_id, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await status(ws, "connected")
    await fake.send_chat(BOB, "записано")
    chat = await recv_type(ws, "chat")
    db = client.server.app[keys.DB]
    for _ in range(60):  # the event log is written in batches, about once a second
        row = await db.fetchone("SELECT type, payload, session_id FROM events WHERE user_id = ? AND seq = ?",
                                (user_id, chat["seq"]))
        if row is not None:
            break
        await asyncio.sleep(0.05)
    assert row is not None and row["type"] == "chat" and "записано" in row["payload"]
    stream = await db.fetchone("SELECT * FROM stream_sessions WHERE user_id = ?", (user_id,))
    assert stream["tiktok_username"] == "streamer" and stream["ended_at"] is None
    assert row["session_id"] == stream["id"]
    await ws.send_json({"action": "disconnect_tiktok"})
    await status(ws, "idle")
    stream = await db.fetchone("SELECT * FROM stream_sessions WHERE id = ?", (stream["id"],))
    assert stream["ended_at"] is not None and stream["end_reason"] == "stopped"
    await ws.close()


async def test_unreachable_tiktok_says_so_with_the_reason(aiohttp_client, tmp_path, caplog) -> None:
    """Offline (nothing listens where TikTok should be): no "connection lost", since none was ever made."""
    closed = "http://127.0.0.1:9"  # the discard port: refused at once
    config = make_config(tmp_path / "data", tiktok={"app_url": closed, "webcast_url": closed + "/webcast",
                                                    "sign_api_url": closed})
    client = await aiohttp_client(create_app(config, tts_engine=FakeEngine(), reconnect_min_seconds=0.05))
    _, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}", headers={"Accept-Language": "en"})
    frame = await status(ws, "reconnecting")
    assert frame["message"].startswith("TikTok cannot be reached (") and frame["retry_in"] > 0
    reason = frame["message"][len("TikTok cannot be reached ("):frame["message"].rindex(")")]
    assert reason and "lost" not in frame["message"]
    assert f"tiktok=@streamer cannot reach TikTok: {reason}" in caplog.text
    assert "dropped" not in caplog.text
    await ws.close()


async def _scripted_live(fake: FakeTikTok) -> int:
    """One of each event kind that reaches the app as one frame; returns how many frames that is."""
    await fake.send_chat(ANYA, "тайминг")
    await fake.send_gift(BOB, 6064, "GG", 10, repeat_count=1, repeat_end=False, streakable=False)
    await fake.send_like(BOB, 5, 50)
    await fake.send_follow(ANYA)
    await fake.send_viewers(3, 7)
    return 5


async def test_timing_frames_carry_tiktok_received_and_sent_times_in_order(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client()
    _, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}&timing=1")
    assert "timing" not in await status(ws, "connected")  # only LIVE event frames are timed
    frames = [await recv(ws) for _ in range(await _scripted_live(fake))]
    created = set(fake.create_times.values())
    for frame in frames:
        timing = frame["timing"]
        assert timing["tiktok_ms"] in created, frame
        assert timing["tiktok_ms"] <= timing["received_ms"] <= timing["sent_ms"], frame
    # Without ?timing=1 (a second socket replaces the first) frames stay as they were.
    plain = await client.ws_connect(f"/v2/ws?token={token}")
    await status(plain, "connected")
    await fake.send_chat(BOB, "без тайминга")
    assert "timing" not in await recv_type(plain, "chat")
    await plain.close()


async def test_metrics_count_every_event_delivered_to_the_app(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client()
    ws = await app_socket(client)
    await status(ws, "connected")
    sent = await _scripted_live(fake)
    types = [(await recv(ws))["type"] for _ in range(sent)]
    samples = await scrape(client)
    assert sample_sum(samples, "ttboost_event_latency_seconds_count") == sent
    assert sample_sum(samples, "ttboost_pipeline_latency_seconds_count") == sent
    for type_ in set(types):
        assert sample_sum(samples, "ttboost_event_latency_seconds_count", type=type_) == types.count(type_)
    assert sample_sum(samples, "ttboost_live_sessions", state="connected") == 1
    assert sample_sum(samples, "ttboost_open_sockets", kind="app") == 1
    assert sample_sum(samples, "ttboost_open_sockets", kind="overlay") == 0
    await ws.close()
