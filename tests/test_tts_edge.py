"""EdgeEngine against a local fake of the edge-tts service: real client, real protocol, no internet."""

from __future__ import annotations

import asyncio
import math
import struct

from pathlib import Path

import lameenc
import pytest
from aiohttp import web

from tests.fake_edge import FakeEdge
from ttboost import errors, keys
from ttboost.tts.edge import EdgeEngine
from ttboost.tts.engine import TTSEngine, TTSError
from ttboost.tts.http import serve_speech
from ttboost.tts.service import SpeechService

WAIT = 5.0  # seconds: upper bound for anything a test waits on


def make_mp3(seconds: float = 0.3) -> bytes:
    rate = 24000
    pcm = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                   for i in range(int(rate * seconds)))
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(48)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(1)
    return bytes(encoder.encode(pcm) + encoder.flush())


MP3 = make_mp3()


@pytest.fixture
async def edge(aiohttp_server):
    fake = FakeEdge(MP3, chunks=4)
    server = await aiohttp_server(fake.app)
    engine = EdgeEngine(str(server.make_url("/edge/v1")), voices_url=str(server.make_url("/voices/list")),
                        connect_timeout=2, receive_timeout=2, list_timeout=2)
    return fake, engine


async def collect(engine: EdgeEngine, text: str = "Привет, мир", voice: str = "ru-RU-SvetlanaNeural",
                  rate: int = 0) -> list[bytes]:
    async with asyncio.timeout(WAIT):
        return [chunk async for chunk in engine.stream(text, voice, rate)]


async def test_streams_the_services_bytes(edge):
    fake, engine = edge
    chunks = await collect(engine, rate=25)
    assert len(chunks) == 4
    assert b"".join(chunks) == MP3
    assert len(fake.ssml) == 1
    assert "ru-RU, SvetlanaNeural" in fake.ssml[0] and "rate='+25%'" in fake.ssml[0]
    assert "Привет, мир" in fake.ssml[0]


async def test_text_is_escaped_not_markup(edge):
    fake, engine = edge
    await collect(engine, text="<break/> & co")
    assert "&lt;break/&gt; &amp; co" in fake.ssml[0]


@pytest.mark.parametrize("mode", ["fail", "refuse", "empty"])
async def test_failures_become_tts_error(edge, mode):
    fake, engine = edge
    fake.mode = mode
    with pytest.raises(TTSError):
        await collect(engine)


async def test_slow_service_is_streamed_chunk_by_chunk(edge):
    fake, engine = edge
    fake.mode = "slow"
    chunks = engine.stream("hello", "en-US-JennyNeural", -10)
    async with asyncio.timeout(WAIT):
        first = await anext(chunks)  # arrives while the service still holds the rest
        assert MP3.startswith(first) and len(first) < len(MP3)
        fake.release.set()
        rest = [chunk async for chunk in chunks]
    assert first + b"".join(rest) == MP3


async def test_unreachable_service_is_tts_error(unused_tcp_port_factory):
    engine = EdgeEngine(f"ws://127.0.0.1:{unused_tcp_port_factory()}/edge/v1", connect_timeout=1)
    with pytest.raises(TTSError):
        await collect(engine)


async def test_bad_voice_and_rate_are_tts_error(edge):
    _, engine = edge
    with pytest.raises(TTSError):
        await collect(engine, voice="no-such-voice")


async def test_voices_offline_and_live(edge):
    fake, engine = edge
    assert isinstance(engine, TTSEngine)
    builtin = {v.id: v for v in engine.voices()}
    assert len(builtin) >= 40
    assert builtin["ru-RU-SvetlanaNeural"].to_json() == {
        "id": "ru-RU-SvetlanaNeural", "name": "Svetlana", "locale": "ru-RU", "gender": "Female", "engine": "edge"}
    assert builtin["ru-RU-DmitryNeural"].gender == "Male"
    assert {v.locale.split("-")[0] for v in builtin.values()} >= {
        "ru", "uk", "en", "de", "fr", "es", "it", "pt", "pl", "tr", "ja", "ko", "zh", "ar", "hi", "kk"}
    live = await engine.refresh_voices()
    assert live is not None
    assert [v.id for v in live] == ["ru-RU-SvetlanaNeural", "en-US-JennyNeural", "de-DE-ConradNeural"]
    assert live[2].gender == "Male" and live[2].engine == "edge"


async def test_voice_list_unreachable_is_none(unused_tcp_port_factory):
    port = unused_tcp_port_factory()
    engine = EdgeEngine(f"ws://127.0.0.1:{port}/edge/v1", voices_url=f"http://127.0.0.1:{port}/voices/list",
                        list_timeout=1)
    assert await engine.refresh_voices() is None


def test_resolve_voice():
    engine = EdgeEngine()
    assert engine.resolve_voice("uk-UA-OstapNeural") == "uk-UA-OstapNeural"
    assert engine.resolve_voice("fil-PH-AngeloNeural") == "fil-PH-AngeloNeural"  # live-list voices pass through
    assert engine.resolve_voice("espeak-ru") == "ru-RU-SvetlanaNeural"
    with pytest.raises(TTSError):
        engine.resolve_voice("espeak-xx")


async def test_service_streams_edge_audio_while_it_arrives(edge, aiohttp_client, tmp_path):
    fake, engine = edge
    fake.mode = "slow"
    speech = SpeechService(engine, tmp_path / "tts", b"secret", max_bytes=10**6, max_concurrency=1, max_pending=5)
    await speech.start()
    try:
        app = web.Application(middlewares=[errors.error_middleware])
        app[keys.SPEECH] = speech
        app.router.add_get("/static/tts/{name}", serve_speech)
        client = await aiohttp_client(app)
        key = speech.request("Привет", "ru-RU-SvetlanaNeural", 0, sheddable=True)
        async with asyncio.timeout(WAIT):
            await fake.first_sent.wait()
            async with client.get(speech.url_path(key)) as resp:
                assert resp.status == 200
                first = await resp.content.readany()
                assert first and MP3.startswith(first) and len(first) < len(MP3)
                fake.release.set()
                assert first + await resp.read() == MP3
            while not isinstance(speech.open(key), Path):
                await asyncio.sleep(0.005)
        assert (tmp_path / "tts" / f"{key}.mp3").read_bytes() == MP3
    finally:
        await speech.close()
