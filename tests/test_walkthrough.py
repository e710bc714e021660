"""The mobile guide's examples, end to end: real TikTokLive client against the fake TikTok, real edge-tts
client against the fake speech service, real uploads and rules — what the app sees on its WebSocket."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from typing import Any, AsyncIterator

import pytest
from aiohttp import FormData

from tests.audio_samples import make_mp3
from tests.conftest import make_config
from tests.fake_edge import FakeEdge
from tests.fake_tiktok import FakeTikTok
from tests.test_ws import recv_type, register
from ttboost.app import create_app

ANYA = ("Аня", "anya.live", 102)
BOB = ("Bob", "bob", 101)
SPEECH = make_mp3(0.4)
ROSE_SOUND = make_mp3(0.6)


@pytest.fixture
async def tiktok() -> AsyncIterator[FakeTikTok]:
    async with FakeTikTok() as fake:
        fake.set_user("streamer")
        yield fake


async def start(aiohttp_client, aiohttp_server, tmp_path, tiktok: FakeTikTok, edge: FakeEdge):
    edge_server = await aiohttp_server(edge.app)
    config = make_config(tmp_path / "data", tts={"refresh_voices": False,
                                                 "edge_wss_url": str(edge_server.make_url("/edge/v1"))})
    config = dataclasses.replace(config, tiktok=tiktok.config(combo_timeout_seconds=2))
    client = await aiohttp_client(create_app(config, reconnect_min_seconds=0.05))  # the real EdgeEngine
    _, token = await register(client)
    return client, {"Authorization": f"Bearer {token}"}, token


async def fetch(client, url: str) -> tuple[int, str, bytes]:
    resp = await client.get(url.removeprefix("http://testserver"))
    return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def set_trigger(client, auth, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v2/triggers/set", headers=auth, json=body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["trigger"]


async def test_mobile_guide_examples_work_as_written(aiohttp_client, aiohttp_server, tmp_path, tiktok) -> None:
    edge = FakeEdge(SPEECH, chunks=3)
    client, auth, token = await start(aiohttp_client, aiohttp_server, tmp_path, tiktok, edge)

    form = FormData()
    form.add_field("file", io.BytesIO(ROSE_SOUND), filename="rose_sound.mp3", content_type="audio/mpeg")
    upload = await client.post("/v2/sounds/upload", headers=auth, data=form)
    assert upload.status == 200, await upload.text()
    assert (await upload.json())["filename"] == "rose_sound.mp3"
    await set_trigger(client, auth, event_type="gift", condition_key="gift_name", condition_value="Rose",
                      action="play_sound", action_params={"sound_filename": "rose_sound.mp3"})
    await set_trigger(client, auth, event_type="chat", condition_key="message_contains", condition_value="привет",
                      action="tts", action_params={"text_template": "Привет, {user}! Рады видеть"})
    settings = await client.post("/v2/settings/update", headers=auth,
                                 json={"gifts_volume": 90, "tts_volume": 70, "voice_id": "ru-RU-DmitryNeural"})
    assert settings.status == 200

    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await recv_type(ws, "status", state="connected")
    await tiktok.send_chat(ANYA, "привет всем")
    for n in (1, 2, 3):
        await tiktok.send_gift(BOB, 5655, "Rose", 1, repeat_count=n, repeat_end=False, streakable=True)
    await tiktok.send_gift(BOB, 5655, "Rose", 1, repeat_count=4, repeat_end=True, streakable=True)
    await tiktok.send_chat(BOB, "after the combo")

    chat = await recv_type(ws, "chat")
    gift = await recv_type(ws, "gift")
    after = await recv_type(ws, "chat")  # nothing in between: the combo produced exactly one gift event
    assert after["message"] == "after the combo" and after["seq"] == gift["seq"] + 1
    assert (gift["count"], gift["diamonds"], gift["volume"]) == (4, 4, 90)
    assert gift["sound_url"] == "http://testserver/static/sounds/1/rose_sound.mp3"
    status, content_type, body = await fetch(client, gift["sound_url"])
    assert (status, content_type, body) == (200, "audio/mpeg", ROSE_SOUND)

    assert chat["message"] == "привет всем" and chat["volume"] == 70
    status, content_type, body = await fetch(client, chat["tts_url"])
    assert (status, content_type, body) == (200, "audio/mpeg", SPEECH)
    spoken = [ssml for ssml in edge.ssml if "Привет, Аня! Рады видеть" in ssml]
    assert len(spoken) == 1 and "ru-RU, DmitryNeural" in spoken[0]
    await ws.close()


async def test_a_gift_behind_a_spoken_chat_does_not_wait_for_speech(aiohttp_client, aiohttp_server, tmp_path,
                                                                     tiktok) -> None:
    edge = FakeEdge(SPEECH, chunks=3, mode="slow")  # the speech service stalls after its first chunk
    client, auth, token = await start(aiohttp_client, aiohttp_server, tmp_path, tiktok, edge)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await recv_type(ws, "status", state="connected")
    await tiktok.send_chat(ANYA, "читай это вслух")  # default chat reading: spoken
    await tiktok.send_gift(BOB, 6064, "GG", 1, repeat_count=1, repeat_end=False, streakable=False)
    chat = await recv_type(ws, "chat")
    gift = await recv_type(ws, "gift")
    assert "tts_url" in chat and gift["gift_name"] == "GG"
    assert not edge.release.is_set()  # both arrived while synthesis is still stuck mid-way
    await asyncio.wait_for(edge.first_sent.wait(), 5)
    # The app may start playing now: the GET streams what exists and follows the rest.
    resp = await client.get(chat["tts_url"].removeprefix("http://testserver"))
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readany(), 5)
    assert first and SPEECH.startswith(first) and len(first) < len(SPEECH)
    edge.release.set()
    rest = await asyncio.wait_for(resp.content.read(), 5)
    assert first + rest == SPEECH
    status, _, cached = await fetch(client, chat["tts_url"])  # afterwards: the cache file, same bytes
    assert (status, cached) == (200, SPEECH)
    await ws.close()


async def test_failed_speech_answers_404_and_the_event_still_arrives(aiohttp_client, aiohttp_server, tmp_path,
                                                                     tiktok) -> None:
    edge = FakeEdge(SPEECH, mode="refuse")  # the speech service answers 503
    client, auth, token = await start(aiohttp_client, aiohttp_server, tmp_path, tiktok, edge)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await recv_type(ws, "status", state="connected")
    await tiktok.send_chat(ANYA, "это не прозвучит")
    chat = await recv_type(ws, "chat")
    assert chat["message"] == "это не прозвучит" and "tts_url" in chat
    for _ in range(100):
        status, _, _ = await fetch(client, chat["tts_url"])
        if status == 404:
            break
        await asyncio.sleep(0.02)
    assert status == 404
    await tiktok.send_chat(ANYA, "server still fine")
    assert (await recv_type(ws, "chat"))["message"] == "server still fine"
    await ws.close()
