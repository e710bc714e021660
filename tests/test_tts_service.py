"""SpeechService with a fake engine, served through the real route on a tiny app."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Callable

import aiohttp
import pytest
from aiohttp import web

from tests.fake_tts import FIRST, SIZE, FakeEngine, audio_for
from ttboost import errors, keys
from ttboost.tts.engine import TTSError
from ttboost.tts.http import serve_speech
from ttboost.tts.service import SpeechService
from tests.helpers import Clock

WAIT = 3.0  # seconds: upper bound for anything a test waits on


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_service(tmp_path: Path, engine: FakeEngine, clock: Clock):
    services: list[SpeechService] = []

    async def factory(**overrides) -> SpeechService:
        options = {"max_bytes": 10**6, "max_concurrency": 2, "max_pending": 10, "keep_seconds": 600,
                   "clock": clock, "job_timeout": WAIT}
        service = SpeechService(engine, tmp_path / "tts", b"server-secret", **{**options, **overrides})
        services.append(service)
        await service.start()
        return service

    yield factory
    for service in services:  # close() is idempotent: tests may have closed theirs already
        await service.close()


@pytest.fixture
async def speech(make_service) -> SpeechService:
    return await make_service()


@pytest.fixture
def serve(aiohttp_client):
    """A tiny app with the real route and error middleware around a given service."""

    async def factory(service: SpeechService):
        app = web.Application(middlewares=[errors.error_middleware])
        app[keys.SPEECH] = service
        app.router.add_get("/static/tts/{name}", serve_speech)
        return await aiohttp_client(app)

    return factory


@pytest.fixture
async def http(serve, speech):
    return await serve(speech)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.005)


def files(service: SpeechService, tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "tts").iterdir())


async def test_same_phrase_same_key_one_synthesis(http, speech, engine, tmp_path):
    key = speech.request("привет", "ru-RU-SvetlanaNeural", 0, sheddable=True)
    assert key is not None and re.fullmatch(r"[0-9a-f]{32}", key)
    assert speech.request("привет", "ru-RU-SvetlanaNeural", 0, sheddable=True) == key  # in flight
    assert speech.key_for("привет", "ru-RU-SvetlanaNeural", 0) == key
    assert speech.key_for("привет", "ru-RU-DmitryNeural", 0) != key
    assert speech.key_for("привет", "ru-RU-SvetlanaNeural", 10) != key
    assert speech.url_path(key) == f"/static/tts/{key}.mp3"
    await until(lambda: isinstance(speech.open(key), Path))
    assert speech.request("привет", "ru-RU-SvetlanaNeural", 0, sheddable=True) == key  # cached
    assert await speech.generate("привет", "ru-RU-SvetlanaNeural", 0) == (key, True)
    async with http.get(speech.url_path(key)) as resp:
        assert resp.status == 200
        assert await resp.read() == audio_for("привет")
    assert engine.calls == ["привет"]
    assert files(speech, tmp_path) == [f"{key}.mp3"]


async def test_key_depends_on_secret(tmp_path, engine):
    one = SpeechService(engine, tmp_path, b"one", max_bytes=1, max_concurrency=1, max_pending=1)
    two = SpeechService(engine, tmp_path, b"two", max_bytes=1, max_concurrency=1, max_pending=1)
    assert one.key_for("hi", "v", 0) != two.key_for("hi", "v", 0)


async def test_empty_text_is_not_spoken(speech, engine):
    assert speech.request("", "v", 0, sheddable=True) is None
    with pytest.raises(TTSError):
        await speech.generate("", "v", 0)
    assert engine.calls == []


async def test_get_during_synthesis_streams_then_file_matches(http, speech, engine, tmp_path):
    release = engine.hold("long phrase")
    key = speech.request("long phrase", "v", 0, sheddable=True)
    async with asyncio.timeout(WAIT):
        await engine.reached["long phrase"].wait()
        async with http.get(speech.url_path(key)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "audio/mpeg"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            first = await resp.content.readany()  # arrives while the engine is still holding the rest
            assert first == audio_for("long phrase")[:FIRST]
            async with http.get(speech.url_path(key)) as second_reader:  # a second reader joins late
                release.set()
                rest = await resp.read()
                assert await second_reader.read() == audio_for("long phrase")
    assert first + rest == audio_for("long phrase")
    await until(lambda: isinstance(speech.open(key), Path))
    assert (tmp_path / "tts" / f"{key}.mp3").read_bytes() == first + rest
    assert engine.calls == ["long phrase"]


async def test_generate_joins_the_job_in_flight(http, speech, engine):
    release = engine.hold("shared")
    key = speech.request("shared", "v", 0, sheddable=True)
    await asyncio.wait_for(engine.reached["shared"].wait(), WAIT)
    waiter = asyncio.create_task(speech.generate("shared", "v", 0))
    async with http.head(speech.url_path(key)) as resp:  # HEAD while it runs: headers, no body
        assert resp.status == 200 and resp.headers["Content-Type"] == "audio/mpeg"
        assert await resp.read() == b""
    await asyncio.sleep(0.01)
    assert not waiter.done()
    release.set()
    assert await asyncio.wait_for(waiter, WAIT) == (key, False)
    assert engine.calls == ["shared"]


async def test_cached_file_headers_and_range(http, speech):
    key, cached = await speech.generate("range me", "v", 0)
    assert not cached
    async with http.get(speech.url_path(key)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "audio/mpeg"
        assert "max-age=" in resp.headers["Cache-Control"] and "public" in resp.headers["Cache-Control"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    async with http.get(speech.url_path(key), headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-19/{SIZE}"
        assert await resp.read() == audio_for("range me")[10:20]


async def test_failure_is_404_and_service_keeps_working(http, speech, engine):
    engine.failing.add("bad")
    key = speech.request("bad", "v", 0, sheddable=False)
    await until(lambda: speech.open(key) is None)
    async with http.get(speech.url_path(key)) as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "not found", "code": "not_found"}
    with pytest.raises(TTSError):
        await speech.generate("bad", "v", 0)
    good = await speech.generate("good", "v", 0)
    async with http.get(speech.url_path(good[0])) as resp:
        assert resp.status == 200
    engine.failing.clear()
    assert (await speech.generate("bad", "v", 0))[1] is False  # a failed phrase may be tried again


async def test_failure_mid_stream_cuts_the_connection(http, speech, engine, tmp_path):
    release = engine.hold("breaks")
    engine.failing_late.add("breaks")
    key = speech.request("breaks", "v", 0, sheddable=True)
    async with asyncio.timeout(WAIT):
        await engine.reached["breaks"].wait()
        async with http.get(speech.url_path(key)) as resp:
            assert resp.status == 200
            assert await resp.content.readany() == audio_for("breaks")[:FIRST]
            release.set()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()  # not a complete-looking short file
    assert speech.open(key) is None
    assert files(speech, tmp_path) == []
    assert (await speech.generate("next", "v", 0))[1] is False


async def test_get_before_first_audio_waits_then_404_when_shed(serve, make_service, engine):
    service = await make_service(max_concurrency=1, max_pending=1)
    http = await serve(service)
    blocker = engine.hold("blocker")
    service.request("blocker", "v", 0, sheddable=False)
    await asyncio.wait_for(engine.reached["blocker"].wait(), WAIT)
    old = service.request("old chat", "v", 0, sheddable=True)

    async def fetch() -> int:
        async with http.get(service.url_path(old)) as resp:
            return resp.status

    async with asyncio.timeout(WAIT):
        waiting = asyncio.create_task(fetch())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no audio yet: the answer waits for it
        service.request("new chat", "v", 0, sheddable=True)  # only one may wait: sheds "old chat"
        assert await waiting == 404
    blocker.set()


async def test_flood_sheds_oldest_chat_never_kept_phrases(make_service, engine, caplog):
    caplog.set_level(logging.INFO, logger="ttboost.tts.service")
    service = await make_service(max_concurrency=1, max_pending=2)
    blocker = engine.hold("blocker")
    service.request("blocker", "v", 0, sheddable=True)
    await asyncio.wait_for(engine.reached["blocker"].wait(), WAIT)  # the only worker is busy now
    chat = [service.request(f"chat {i}", "v", 0, sheddable=True) for i in range(6)]
    kept = [service.request(f"gift {i}", "v", 0, sheddable=False) for i in range(4)]
    upgraded = service.request("chat 5", "v", 0, sheddable=False)  # also wanted by a trigger: not sheddable now
    assert upgraded == chat[5]
    for i in range(4):  # the oldest chat phrases are gone at once
        assert service.open(chat[i]) is None
    assert all(service.open(k) is not None for k in kept + chat[4:])
    more = [service.request(f"chat {i}", "v", 0, sheddable=True) for i in (6, 7)]
    assert service.open(chat[4]) is None  # still only 2 chat phrases may wait: "chat 4" was the oldest
    blocker.set()
    for key in kept + [chat[5]] + more:
        await until(lambda key=key: isinstance(service.open(key), Path))
    # Phrases someone waits for first, then chat in order.
    assert engine.calls == ["blocker", "gift 0", "gift 1", "gift 2", "gift 3", "chat 5", "chat 6", "chat 7"]
    assert all(service.open(k) is None for k in chat[:5])
    await service.close()
    assert "shed 4 chat phrase(s)" in caplog.text


async def test_cache_bound_evicts_least_recently_handed_out(make_service, clock, tmp_path):
    service = await make_service(max_bytes=3 * SIZE, keep_seconds=600)
    a, b, c = [(await service.generate(t, "v", 0))[0] for t in ("a", "b", "c")]
    clock.now += 1000  # everything is older than keep_seconds now
    assert service.request("a", "v", 0, sheddable=True) == a  # handed out again: most recently used
    d, _ = await service.generate("d", "v", 0)
    await until(lambda: not (tmp_path / "tts" / f"{b}.mp3").exists())
    assert service.open(b) is None
    assert all(isinstance(service.open(k), Path) for k in (a, c, d))  # (this hands them all out again)
    # Everything was handed out just now: the bound is exceeded rather than a file the app may play evicted.
    e, _ = await service.generate("e", "v", 0)
    await asyncio.sleep(0.05)
    assert all(isinstance(service.open(k), Path) for k in (a, c, d, e))
    assert len(files(service, tmp_path)) == 4
    clock.now += 601
    service.request("e", "v", 0, sheddable=True)
    f, _ = await service.generate("f", "v", 0)  # over the bound by 2 files: the two least recent go
    await until(lambda: len(files(service, tmp_path)) == 3)
    assert sorted(files(service, tmp_path)) == sorted(f"{k}.mp3" for k in (d, e, f))


async def test_start_cleans_leftovers_and_indexes_cache(tmp_path, engine, clock):
    cache = tmp_path / "tts"
    cache.mkdir()
    service = SpeechService(engine, cache, b"server-secret", max_bytes=10**6, max_concurrency=1,
                            max_pending=1, clock=clock)
    key = service.key_for("old", "v", 0)
    (cache / f"{key}.mp3").write_bytes(b"old audio")
    (cache / ".tmp-crash.mp3").write_bytes(b"half")
    (cache / f"{'0' * 32}.mp3").write_bytes(b"")
    await service.start()
    try:
        assert sorted(p.name for p in cache.iterdir()) == [f"{key}.mp3"]
        assert service.request("old", "v", 0, sheddable=True) == key
        assert await service.generate("old", "v", 0) == (key, True)
        assert engine.calls == []
    finally:
        await service.close()


async def test_close_leaves_no_temp_files_and_fails_waiters(make_service, engine, tmp_path):
    service = await make_service()
    engine.hold("never finishes")
    key = service.request("never finishes", "v", 0, sheddable=True)
    await asyncio.wait_for(engine.reached["never finishes"].wait(), WAIT)
    follower = service.open(key)
    assert follower is not None and not isinstance(follower, Path)
    waiter = asyncio.ensure_future(service.generate("never finishes", "v", 0))
    await asyncio.sleep(0)
    await asyncio.wait_for(service.close(), WAIT)
    with pytest.raises(TTSError):
        await asyncio.wait_for(waiter, WAIT)
    chunks: list[bytes] = []
    with pytest.raises(TTSError):
        async with asyncio.timeout(WAIT):
            async for chunk in follower:
                chunks.append(chunk)
    assert chunks == [audio_for("never finishes")[:FIRST]]
    assert files(service, tmp_path) == []
    assert service.request("after close", "v", 0, sheddable=True) is None


class Tripwire:
    """Stands in for the cache directory: any path built from it fails the test."""

    def __truediv__(self, other: object) -> Path:
        raise AssertionError(f"filesystem path built for {other!r}")


@pytest.mark.parametrize("name", [
    "..%2F..%2Fetc%2Fpasswd", "ABCDEF0123456789ABCDEF0123456789.mp3", "0123456789abcdef0123456789abcdef.wav",
    "0123456789abcdef0123456789abcdef0.mp3", "0123456789abcdef.mp3", "x.mp3", "%00.mp3",
])
async def test_bad_names_are_404_without_touching_the_disk(http, speech, name):
    speech._dir = Tripwire()  # type: ignore[assignment]  # any path built from a bad name would trip it
    async with http.get(f"/static/tts/{name}") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "not found", "code": "not_found"}


async def test_unknown_key_is_404(http, speech):
    assert speech.open("../../etc/passwd") is None
    async with http.get(f"/static/tts/{'f' * 32}.mp3") as resp:
        assert resp.status == 404


async def busy_worker(service: SpeechService, engine: FakeEngine, owner: int = 1) -> asyncio.Event:
    """Holds the only worker on a phrase of `owner`; set the returned event to let it finish."""
    blocker = engine.hold("blocker")
    service.request("blocker", "v", 0, sheddable=True, owner=owner)
    await asyncio.wait_for(engine.reached["blocker"].wait(), WAIT)
    return blocker


async def test_one_users_chat_flood_neither_drops_nor_starves_anothers_phrase(make_service, engine):
    service = await make_service(max_concurrency=1, max_pending=20)
    blocker = await busy_worker(service, engine, owner=1)
    theirs = service.request("b hello", "v", 0, sheddable=True, owner=2)
    flood = [service.request(f"a flood {i}", "v", 0, sheddable=True, owner=1) for i in range(100)]
    assert service.open(theirs) is not None  # the flood shed only the flooder's own oldest phrases
    assert [service.open(k) is None for k in flood] == [True] * 80 + [False] * 20
    blocker.set()
    await until(lambda: isinstance(service.open(theirs), Path))
    assert engine.calls[:2] == ["blocker", "b hello"]  # behind one synthesis of the flooder, not twenty


async def test_users_take_turns(make_service, engine):
    service = await make_service(max_concurrency=1, max_pending=20)
    blocker = await busy_worker(service, engine, owner=1)
    for i in range(3):
        service.request(f"a{i}", "v", 0, sheddable=True, owner=1)
    for i in range(2):
        service.request(f"b{i}", "v", 0, sheddable=True, owner=2)
    service.request("c0", "v", 0, sheddable=False, owner=3)
    blocker.set()
    await until(lambda: len(engine.calls) == 7)
    # The flooder was served last (the blocker), so the others go first; then one phrase per user per turn.
    assert engine.calls == ["blocker", "b0", "c0", "a0", "b1", "a1", "a2"]


async def test_trigger_speech_is_bounded_per_user_and_sheds_the_oldest(make_service, engine, caplog):
    caplog.set_level(logging.INFO, logger="ttboost.tts.service")
    service = await make_service(max_concurrency=1, max_pending=20, max_pending_triggers=50)
    blocker = await busy_worker(service, engine, owner=1)
    joins = [service.request(f"welcome {i}", "v", 0, sheddable=False, owner=1) for i in range(3000)]
    gone = [service.open(k) is None for k in joins]
    assert gone == [True] * 2950 + [False] * 50  # 50 wait, the oldest 2,950 answer 404
    other = service.request("welcome from b", "v", 0, sheddable=False, owner=2)
    awaited = asyncio.create_task(service.generate("asked for", "v", 0, owner=1))
    await asyncio.sleep(0)
    service.request("one more", "v", 0, sheddable=False, owner=1)  # a generate() is never what is shed
    blocker.set()
    assert (await asyncio.wait_for(awaited, WAIT))[1] is False
    await until(lambda: isinstance(service.open(other), Path))
    assert engine.calls[:3] == ["blocker", "welcome from b", "asked for"]
    await service.close()
    assert sum(map(int, re.findall(r"shed 0 chat phrase\(s\) and (\d+) trigger", caplog.text))) == 2951


async def test_a_phrase_two_users_want_is_shed_only_when_both_shed_it(make_service, engine):
    service = await make_service(max_concurrency=1, max_pending=1)
    blocker = await busy_worker(service, engine, owner=3)
    shared = service.request("hello", "v", 0, sheddable=True, owner=1)
    assert service.request("hello", "v", 0, sheddable=True, owner=2) == shared
    service.request("a next", "v", 0, sheddable=True, owner=1)  # user 1 sheds its "hello"
    assert service.open(shared) is not None  # user 2 still waits for it
    service.request("b next", "v", 0, sheddable=True, owner=2)
    assert service.open(shared) is None
    blocker.set()
    await until(lambda: len(engine.calls) == 3)
    assert sorted(engine.calls) == ["a next", "b next", "blocker"]
