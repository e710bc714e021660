"""Speech over HTTP: generate (v2 and legacy), the speech file it points at, voices, failures, limits."""

from __future__ import annotations

import pytest

from tests.fake_tts import FakeEngine, audio_for
from tests.helpers import bearer, make_user
from ttboost import keys


@pytest.fixture
async def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def tts_client(make_client, engine):
    return await make_client(tts_engine=engine)


async def test_generate_returns_a_url_that_serves_the_speech_and_caches(tts_client, engine) -> None:
    _, token = await make_user(tts_client.server.app)
    resp = await tts_client.post("/v2/tts/generate", headers=bearer(token),
                                 json={"text": "Привет, мир! https://example.org 🔥", "rate": 10})
    assert resp.status == 200
    body = await resp.json()
    assert body["cached"] is False and body["voice_id"] == "ru-RU-SvetlanaNeural"
    assert body["url"].startswith("http://testserver/static/tts/") and body["url"].endswith(".mp3")
    assert engine.calls == ["Привет, мир! link"]
    audio = await tts_client.get(body["url"].removeprefix("http://testserver"))
    assert audio.status == 200 and audio.headers["Content-Type"] == "audio/mpeg"
    assert await audio.read() == audio_for("Привет, мир! link")
    again = await (await tts_client.post("/v2/tts/generate", headers=bearer(token),
                                         json={"text": "Привет, мир! https://example.org 🔥", "rate": 10})).json()
    assert again == {**body, "cached": True}
    assert len(engine.calls) == 1  # synthesized once


async def test_legacy_generate_needs_a_bearer_token(tts_client) -> None:
    resp = await tts_client.post("/tts/generate", json={"text": "hello"})
    assert resp.status == 401 and (await resp.json())["detail"] == "invalid token"
    _, token = await make_user(tts_client.server.app)
    resp = await tts_client.post("/tts/generate", headers=bearer(token), json={"text": "hello"})
    assert resp.status == 200 and set(await resp.json()) == {"url"}


async def test_engine_failure_is_502_and_the_server_keeps_going(tts_client, engine) -> None:
    _, token = await make_user(tts_client.server.app)
    engine.failing.add("broken")
    resp = await tts_client.post("/v2/tts/generate", headers=bearer(token), json={"text": "broken"})
    assert resp.status == 502 and await resp.json() == {"detail": "tts failed", "code": "tts_failed"}
    resp = await tts_client.post("/v2/tts/generate", headers=bearer(token), json={"text": "fine"})
    assert resp.status == 200


@pytest.mark.parametrize("body", [
    {"text": ""}, {"text": "x" * 501}, {"text": "hi", "rate": -51}, {"text": "hi", "rate": 101},
    {"text": "hi", "voice_id": "xx-Nothing"}, {"text": "hi", "voice_id": "ru-RU-FakeNeural"},
    {"text": "hi\x00"}, {"text": "🔥🔥🔥"},
])
async def test_bad_generate_requests_are_422(tts_client, engine, body) -> None:
    _, token = await make_user(tts_client.server.app)
    resp = await tts_client.post("/v2/tts/generate", headers=bearer(token), json=body)
    assert resp.status == 422 and "fields" in await resp.json()
    assert engine.calls == []


async def test_rate_edges_are_accepted(tts_client) -> None:
    _, token = await make_user(tts_client.server.app)
    for rate in (-50, 100):
        resp = await tts_client.post("/v2/tts/generate", headers=bearer(token), json={"text": "hi", "rate": rate})
        assert resp.status == 200


async def test_tts_is_rate_limited_per_user(make_client) -> None:
    client = await make_client(limits={"tts_per_minute": 3})
    _, token = await make_user(client.server.app)
    _, other = await make_user(client.server.app, "other")
    for i in range(3):
        assert (await client.post("/v2/tts/generate", headers=bearer(token), json={"text": f"n{i}"})).status == 200
    limited = await client.post("/v2/tts/generate", headers=bearer(token), json={"text": "n4"})
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert (await client.post("/v2/tts/generate", headers=bearer(other), json={"text": "n4"})).status == 200


async def test_voices_list_works_offline(tts_client) -> None:
    resp = await tts_client.get("/v2/voices")
    voices = (await resp.json())["voices"]
    assert any(v["id"] == "ru-RU-SvetlanaNeural" and v["locale"] == "ru-RU" and v["gender"] == "Female"
               for v in voices)
    assert all(set(v) == {"id", "name", "locale", "gender", "engine"} for v in voices)


async def test_unknown_speech_file_is_404(tts_client) -> None:
    for path in ("/static/tts/" + "0" * 32 + ".mp3", "/static/tts/nothing.mp3", "/static/tts/..%2Fttboost.db"):
        resp = await tts_client.get(path)
        assert resp.status == 404 and (await resp.json())["code"] == "not_found"
    assert keys.SPEECH in tts_client.server.app


async def test_one_streamers_chat_flood_does_not_silence_another(make_client, engine) -> None:
    client = await make_client(tts_engine=engine, tts={"max_concurrency": 1, "max_pending": 20},
                               limits={"tts_per_minute": 0})
    _, flooder = await make_user(client.server.app, "flooder")
    _, quiet = await make_user(client.server.app, "quiet")

    async def chat(token: str, user: str, message: str) -> str:
        resp = await client.post("/v2/events/simulate", headers=bearer(token),
                                 json={"type": "chat", "user": user, "message": message})
        assert resp.status == 200
        return (await resp.json())["event"]["tts_url"].removeprefix("http://testserver")

    blocker = engine.hold("a: first")
    await chat(flooder, "a", "first")  # the only speech worker is busy with the flooder's phrase
    await engine.reached["a: first"].wait()
    url = await chat(quiet, "b", "hello")
    flood = [await chat(flooder, "a", f"flood {i}") for i in range(100)]
    blocker.set()
    audio = await client.get(url)
    assert audio.status == 200 and await audio.read() == audio_for("b: hello")
    assert engine.calls[:2] == ["a: first", "b: hello"]
    assert (await client.get(flood[0])).status == 404  # the flooder's own oldest phrases gave way
