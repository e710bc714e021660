"""Replay after a long gap: the whole window (500 frames) reaches the app in order on ?since= and on resume,
also when the app reads slowly, through a send queue of 8; only a client that takes nothing for the read
timeout is too slow."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.fake_live import ScriptedSource, Watch
from tests.helpers import eventually, sample_sum, scrape
from tests.test_ws import recv, recv_type, register
from ttboost import keys
from ttboost.config import LimitsConfig
from ttboost.pipeline.events import LiveEvent

WINDOW = LimitsConfig().replay_events  # the default window: 500 frames
PAD = "x" * 40_000  # 500 frames of ~40 KB: far more than the kernel's socket buffers hold


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


async def app_away_for_the_window(client: TestClient, source: ScriptedSource,
                                  pad: str = "") -> tuple[str, int, Watch]:
    """The app connects, sees the watch connect, goes away; a whole window of chats happens meanwhile.
    Returns its token, the last seq it saw and the watch."""
    user_id, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()
    watch.connect()
    await recv_type(ws, "status", state="connected")
    await ws.close()
    assert await eventually(lambda: len(client.server.app[keys.SOCKETS]), lambda n: n == 0) == 0
    channel = client.server.app[keys.BUS].get(user_id)
    assert channel is not None
    last_seen = channel.seq
    watch.emit(*(LiveEvent("chat", username="fan", user_id="7", message=f"{i} {pad}") for i in range(WINDOW)))
    assert await eventually(lambda: channel.seq, lambda seq: seq == last_seen + WINDOW) == last_seen + WINDOW
    return token, last_seen, watch


async def read_chats(ws: aiohttp.ClientWebSocketResponse, count: int, *, slowly: bool) -> list[dict[str, Any]]:
    chats = []
    while len(chats) < count:
        frame = await recv(ws)
        if frame["type"] == "chat":
            chats.append(frame)
            if slowly and len(chats) % 10 == 0:
                await asyncio.sleep(0.005)  # the server's writer waits for the client, frame by frame
    return chats


def assert_whole_window(chats: list[dict[str, Any]], last_seen: int) -> None:
    assert [c["seq"] for c in chats] == list(range(last_seen + 1, last_seen + WINDOW + 1))
    assert [int(c["message"].split()[0]) for c in chats] == list(range(WINDOW))


@pytest.mark.parametrize("how", ["since", "resume"])
@pytest.mark.parametrize("slowly", [False, True], ids=["fast-reader", "slow-reader"])
async def test_an_app_away_for_the_whole_window_gets_every_event_in_order(make_client, source, how: str,
                                                                          slowly: bool) -> None:
    client = await make_client(live_source=source, limits={"ws_send_queue": 8})
    token, last_seen, watch = await app_away_for_the_window(client, source, PAD if slowly else "")
    if how == "since":
        ws = await client.ws_connect(f"/v2/ws?token={token}&since={last_seen}")
    else:
        ws = await client.ws_connect(f"/v2/ws?token={token}")
        await ws.send_json({"action": "resume", "since": last_seen})
    assert_whole_window(await read_chats(ws, WINDOW, slowly=slowly), last_seen)
    # Then the live stream, right behind the replay.
    watch.emit(LiveEvent("chat", username="fan", user_id="7", message="live"))
    live = await read_chats(ws, 1, slowly=False)
    assert live[0]["message"] == "live" and live[0]["seq"] == last_seen + WINDOW + 1
    await ws.close()
    assert sample_sum(await scrape(client), "ttboost_slow_client_closes_total", kind="app") == 0


async def test_events_during_a_replay_follow_it_in_order(make_client, source) -> None:
    client = await make_client(live_source=source, limits={"ws_send_queue": 8})
    token, last_seen, watch = await app_away_for_the_window(client, source, PAD)
    ws = await client.ws_connect(f"/v2/ws?token={token}&since={last_seen}")
    first = await read_chats(ws, 1, slowly=False)
    # Published while most of the replay is still on its way: they go behind it, not into it.
    watch.emit(*(LiveEvent("chat", username="fan", user_id="7", message=f"{WINDOW + i} live") for i in range(20)))
    rest = await read_chats(ws, WINDOW - 1 + 20, slowly=True)
    chats = first + rest
    assert [c["seq"] for c in chats] == list(range(last_seen + 1, last_seen + WINDOW + 21))
    assert [int(c["message"].split()[0]) for c in chats] == list(range(WINDOW + 20))
    await ws.close()


async def test_a_resume_on_an_open_socket_restarts_the_replay_in_order(make_client, source) -> None:
    client = await make_client(live_source=source, limits={"ws_send_queue": 8})
    token, last_seen, watch = await app_away_for_the_window(client, source)
    ws = await client.ws_connect(f"/v2/ws?token={token}&since={last_seen}")
    head = await read_chats(ws, 10, slowly=False)
    await ws.send_json({"action": "resume", "since": last_seen})  # the app lost what it had read
    frames = []
    while len(frames) < WINDOW or frames[-1]["seq"] != last_seen + WINDOW:
        frames.append(await recv(ws))
    seqs = [f["seq"] for f in frames if f["type"] == "chat"]
    # Whatever was already under way may arrive first; from the restart on, everything once and in order.
    restart = seqs.index(last_seen + 1)
    assert seqs[restart:] == list(range(last_seen + 1, last_seen + WINDOW + 1))
    assert seqs[:restart] == list(range(head[-1]["seq"] + 1, head[-1]["seq"] + 1 + restart))
    await ws.close()


async def test_a_client_that_takes_nothing_for_the_read_timeout_is_too_slow(make_client, source) -> None:
    client = await make_client(live_source=source, limits={"ws_send_queue": 8, "ws_read_timeout_seconds": 0.2})
    token, last_seen, _ = await app_away_for_the_window(client, source, PAD)
    ws = await client.ws_connect(f"/v2/ws?token={token}&since={last_seen}")
    # Reads nothing: the replay fills the kernel's buffers, then no frame is taken for the read timeout.
    closes = await eventually(lambda: scrape(client), lambda samples: sample_sum(
        samples, "ttboost_slow_client_closes_total", kind="app") == 1)
    assert sample_sum(closes, "ttboost_slow_client_closes_total", kind="app") == 1
    seqs = []
    while (msg := await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT:
        frame = json.loads(msg.data)
        if frame["type"] == "chat":
            seqs.append(frame["seq"])
    assert msg.type is aiohttp.WSMsgType.CLOSE and (msg.data, msg.extra) == (1008, "too slow")
    assert 0 < len(seqs) < WINDOW and seqs == list(range(last_seen + 1, last_seen + 1 + len(seqs)))
