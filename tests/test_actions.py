"""ActionEngine: trigger matching for every condition, cooldowns, once-per-stream, likes, default chat speech."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import make_config
from tests.helpers import Clock
from ttboost.db import Database
from ttboost.pipeline.actions import ActionEngine, _Lru
from ttboost.pipeline.events import LiveEvent
from ttboost.settings import SettingsStore
from ttboost.timeutil import iso, utcnow
from ttboost.trigger_schemas import TriggerSetSchema
from ttboost.triggers import TriggerStore

MEDIA = "http://media.test"
DEFAULT_VOICE = "ru-RU-SvetlanaNeural"


@dataclass
class FakeSpeech:
    requests: list[tuple[str, str, int, bool]] = field(default_factory=list)
    answer: str | None = "key"
    fail: bool = False

    owners: list[int] = field(default_factory=list)

    def request(self, text: str, voice: str, rate: int, *, sheddable: bool, owner: int = 0) -> str | None:
        if self.fail:
            raise RuntimeError("speech exploded")
        self.owners.append(owner)
        self.requests.append((text, voice, rate, sheddable))
        return None if self.answer is None else f"{self.answer}{len(self.requests)}"

    @staticmethod
    def url_path(key: str) -> str:
        return f"/static/tts/{key}.mp3"

    @property
    def texts(self) -> list[str]:
        return [r[0] for r in self.requests]


class Env:
    def __init__(self, db: Database, user_id: int, speech: FakeSpeech | None, tmp_path) -> None:
        self.db, self.user_id, self.speech, self.clock = db, user_id, speech, Clock()
        self.settings = SettingsStore(db, default_voice=DEFAULT_VOICE, voice_known=lambda _v: True)
        self.triggers = TriggerStore(db, make_config(tmp_path))
        self.engine = ActionEngine(self.settings, self.triggers, speech, media_url=MEDIA + "/",
                                   default_voice=DEFAULT_VOICE, clock=self.clock)

    async def add(self, event_type: str, key: str = "always", value: Any = None, *, say: str | None = None,
                  sound: str | None = None, **extra: Any) -> int:
        body: dict[str, Any] = {"event_type": event_type, "condition_key": key, "condition_value": value, **extra}
        if sound is not None:
            await self.db.execute("INSERT OR IGNORE INTO sounds VALUES (?, ?, 1, 100, 'mp3', ?)",
                                  (self.user_id, sound, iso(utcnow())))
            params = {"sound_filename": sound, **body.pop("params", {})}
            body.update(action="play_sound", action_params=params)
        else:
            body.update(action="tts", action_params={"text_template": say or "hi", **body.pop("params", {})})
        trigger = await self.triggers.set(self.user_id, 100, TriggerSetSchema().load(body))
        return trigger.id

    async def set(self, **changes: Any) -> None:
        await self.settings.update(self.user_id, changes)

    def run(self, type_: str, **fields: Any) -> dict[str, Any]:
        fields.setdefault("username", "viewer")
        event = LiveEvent(type=type_, **fields)
        self.engine.apply(self.user_id, event)
        return event.extra


@pytest.fixture
async def env(tmp_path):
    db = Database(tmp_path / "t.db")
    await db.open()
    user_id = await db.execute("INSERT INTO users (username, created_at) VALUES ('streamer', ?)", (iso(utcnow()),))
    e = Env(db, user_id, FakeSpeech(), tmp_path)
    await e.engine.prepare(user_id)
    yield e
    await e.triggers.close()
    await db.close()


def _said(extra: dict[str, Any]) -> bool:
    return "tts_url" in extra


# --- conditions of every event type ---

async def test_chat_conditions(env: Env) -> None:
    await env.set(chat_tts_mode="off")
    await env.add("chat", "message_contains", "ПРИВЕТ", say="contains")
    await env.add("chat", "message_starts_with", "!song", say="starts")
    await env.add("chat", "username", "@Boss", say="boss")
    assert _said(env.run("chat", message="ну привет всем"))
    assert _said(env.run("chat", message="  !song please"))
    assert not _said(env.run("chat", message="please !song"))
    assert not _said(env.run("chat", message="!SONG"))  # starts_with is exact, only contains is caseless
    assert _said(env.run("chat", message="hello", username="boss"))
    assert not _said(env.run("chat", message="hello", username="bossy"))
    assert env.speech.texts == ["contains", "starts", "boss"]
    await env.add("chat", say="always")
    assert _said(env.run("chat", message="anything"))


async def test_gift_conditions(env: Env) -> None:
    await env.add("gift", "gift_name", "rose", say="name", priority=5)
    await env.add("gift", "gift_id", 5655, say="id", priority=4)
    await env.add("gift", "min_count", 10, say="count", priority=3)
    await env.add("gift", "min_diamonds", 100, say="diamonds", priority=2)
    await env.add("gift", say="always", priority=1)
    env.run("gift", gift_name="ROSE", gift_id=1, count=1, diamond_count=1)
    env.run("gift", gift_name="Lion", gift_id=5655, count=1, diamond_count=1)
    env.run("gift", gift_name="Lion", gift_id=1, count=10, diamond_count=1)
    env.run("gift", gift_name="Lion", gift_id=1, count=2, diamond_count=50)  # 2 × 50 = whole combo 100
    env.run("gift", gift_name="Lion", gift_id=1, count=9, diamond_count=11)  # 99
    assert env.speech.texts == ["name", "id", "count", "diamonds", "always"]


async def test_other_types_always_and_username(env: Env) -> None:
    for event_type in ("viewer_join", "follow", "share", "subscribe"):
        await env.add(event_type, "username", "vip", say=f"{event_type} vip", priority=1)
        await env.add(event_type, say=f"{event_type} any")
        env.run(event_type, username="VIP")
        env.run(event_type, username="someone")
    assert env.speech.texts == ["viewer_join vip", "viewer_join any", "follow vip", "follow any",
                                "share vip", "share any", "subscribe vip", "subscribe any"]


async def test_like_min_likes_once_per_viewer_per_stream(env: Env) -> None:
    await env.add("like", "min_likes", 10, say="{user} {likes}")
    assert not _said(env.run("like", user_id="1", user="Ann", count=6))
    assert _said(env.run("like", user_id="1", user="Ann", count=6))  # 12 ≥ 10: reached with this event
    assert not _said(env.run("like", user_id="1", user="Ann", count=20))
    assert _said(env.run("like", user_id="2", user="Bob", count=15))
    env.engine.stream_started(env.user_id)
    assert _said(env.run("like", user_id="1", user="Ann", count=10))
    assert env.speech.texts == ["Ann 12", "Bob 15", "Ann 10"]


async def test_like_every_likes_crossings_with_room_total(env: Env) -> None:
    await env.add("like", "every_likes", 100, say="{likes} likes")
    fired = [_said(env.run("like", count=c, total=t)) for c, t in ((10, 90), (15, 105), (50, 150), (60, 210),
                                                                   (5, 200), (100, 310))]
    assert fired == [False, True, False, True, False, True]
    assert env.speech.texts == ["105 likes", "210 likes", "310 likes"]


async def test_like_every_likes_counts_itself_without_total(env: Env) -> None:
    await env.add("like", "every_likes", 50, say="{likes}")
    fired = [_said(env.run("like", user_id=str(i), count=20)) for i in range(6)]  # 20, 40, 60, 80, 100, 120
    assert fired == [False, False, True, False, True, False]
    env.engine.stream_started(env.user_id)
    assert not _said(env.run("like", count=20))  # the count restarts with the stream
    assert env.speech.texts == ["60", "100"]


# --- order, cooldowns, once per stream ---

async def test_priority_order_and_first_match_wins(env: Env) -> None:
    await env.set(chat_tts_mode="off")
    await env.add("gift", say="low", priority=1)
    await env.add("gift", "gift_name", "Rose", say="high", priority=9)
    await env.add("gift", "min_count", 99, say="top but fails", priority=20)
    env.run("gift", gift_name="Rose", count=1)
    env.run("gift", gift_name="Lion", count=1)
    assert env.speech.texts == ["high", "low"]  # one action per event


async def test_gift_cooldown_is_global(env: Env) -> None:
    await env.add("gift", "gift_name", "Rose", say="thanks", cooldown_seconds=30, priority=1)
    await env.add("gift", say="fallback")
    env.run("gift", user_id="1", gift_name="Rose")
    env.run("gift", user_id="2", gift_name="Rose")  # another viewer, same cooldown: the next trigger fires
    env.clock.now += 29.9
    env.run("gift", user_id="3", gift_name="Rose")
    env.clock.now += 0.1
    env.run("gift", user_id="3", gift_name="Rose")
    assert env.speech.texts == ["thanks", "fallback", "fallback", "thanks"]


async def test_releasing_an_idle_user_keeps_a_running_cooldown(env: Env) -> None:
    await env.add("gift", say="thanks", cooldown_seconds=3600)
    env.run("gift", user_id="1")
    env.engine.forget(env.user_id)  # the streamer went away, but the hour has not passed
    assert env.engine.cached_users() == {env.user_id}
    env.run("gift", user_id="2")
    assert env.speech.texts == ["thanks"]  # still cooling down
    env.clock.now += 3600
    env.engine.forget(env.user_id)
    assert env.engine.cached_users() == set()
    env.run("gift", user_id="3")
    assert env.speech.texts == ["thanks", "thanks"]  # and the compiled rules come back on demand


async def test_chat_cooldown_is_per_viewer(env: Env) -> None:
    await env.set(chat_tts_mode="off")
    await env.add("chat", "message_contains", "hi", say="hello {user}", cooldown_seconds=60)
    for viewer in ("a", "a", "b"):
        env.run("chat", username=viewer, message="hi")
    env.clock.now += 60
    env.run("chat", username="a", message="hi")
    assert env.speech.texts == ["hello a", "hello b", "hello a"]


async def test_join_once_per_stream_per_viewer(env: Env) -> None:
    await env.add("viewer_join", say="welcome {user}", once_per_stream=True)
    for viewer in ("a", "a", "b", "a"):
        env.run("viewer_join", username=viewer)
    env.engine.stream_started(env.user_id)
    env.run("viewer_join", username="a")
    assert env.speech.texts == ["welcome a", "welcome b", "welcome a"]


async def test_join_triggers_follow_join_sound_enabled(env: Env) -> None:
    await env.add("viewer_join", sound="hello.mp3")
    assert "sound_url" in env.run("viewer_join")
    await env.set(join_sound_enabled=False)
    assert env.run("viewer_join") == {}


# --- default chat speech ---

async def test_chat_mode_all_reads_with_nickname(env: Env) -> None:
    extra = env.run("chat", user="Ann 🌸", username="ann", message="hello there")
    assert extra == {"tts_url": f"{MEDIA}/static/tts/key1.mp3", "volume": 100}
    assert env.speech.requests == [("Ann: hello there", DEFAULT_VOICE, 0, True)]
    await env.set(tts_read_username=False, voice_id="en-US-GuyNeural", tts_rate=20, tts_volume=35)
    assert env.run("chat", user="Ann", message="again")["volume"] == 35
    assert env.speech.requests[-1] == ("again", "en-US-GuyNeural", 20, True)
    assert env.speech.owners == [env.user_id, env.user_id]  # queued in the streamer's own speech queue


async def test_chat_nickname_falls_back_to_handle_and_text_is_cut(env: Env) -> None:
    await env.set(tts_max_chars=10)
    env.run("chat", user="🌸🌸", username="ann", message="one two three four")
    assert env.speech.texts == ["ann: one"]


async def test_chat_mode_prefix(env: Env) -> None:
    await env.set(chat_tts_mode="prefix", chat_tts_prefix="!", tts_read_username=False)
    assert not _said(env.run("chat", message="not me"))
    assert _said(env.run("chat", message=" !read me"))
    assert not _said(env.run("chat", message="!"))  # nothing left to read
    assert env.speech.texts == ["read me"]


async def test_chat_mode_donor(env: Env) -> None:
    await env.set(chat_tts_mode="donor", chat_tts_min_diamonds=10, tts_read_username=False)
    assert not _said(env.run("chat", user_id="1", message="first"))
    env.run("gift", user_id="1", count=3, diamond_count=3)  # 9
    assert not _said(env.run("chat", user_id="1", message="second"))
    env.run("gift", user_id="1", count=1, diamond_count=1)  # 10
    assert _said(env.run("chat", user_id="1", message="third"))
    assert not _said(env.run("chat", user_id="2", message="other viewer"))
    env.engine.stream_started(env.user_id)
    assert not _said(env.run("chat", user_id="1", message="new stream"))
    assert env.speech.texts == ["third"]


async def test_chat_mode_off_and_tts_disabled(env: Env) -> None:
    await env.set(chat_tts_mode="off")
    assert env.run("chat", message="hello") == {}
    await env.set(chat_tts_mode="all", tts_enabled=False)
    await env.add("gift", say="thanks")  # tts_enabled is the master switch for every spoken phrase
    assert env.run("chat", message="hello") == {} and env.run("gift") == {}
    assert env.speech.requests == []


async def test_blocklist(env: Env) -> None:
    await env.set(tts_blocklist=["Badword"])
    assert env.run("chat", user="Ann", message="such a BADWORD here") == {}
    assert env.run("chat", user="Ann", message="baaadword") == {}
    assert _said(env.run("chat", user="Badword King", username="king", message="fine message"))
    assert env.speech.texts == ["fine message"]  # a blocked nickname is left out, the message read
    await env.add("chat", "message_contains", "!", say="{user} says {message}")
    assert env.run("chat", user="Ann", message="badword!") == {}
    assert _said(env.run("chat", user="Ann", message="ok 🌸!"))
    assert env.speech.texts == ["fine message", "Ann says ok !"]


async def test_chat_empty_after_cleanup_is_not_spoken(env: Env) -> None:
    assert env.run("chat", user="Ann", message="😀😀😀") == {}
    assert env.speech.requests == []


async def test_shed_phrase_gets_no_url(env: Env) -> None:
    env.speech.answer = None
    assert env.run("chat", message="hello") == {}


# --- actions, volumes, switches ---

async def test_volumes_and_urls(env: Env) -> None:
    await env.set(gifts_volume=40, tts_volume=70)
    await env.add("gift", "gift_name", "Rose", sound="rose.mp3")
    await env.add("gift", "gift_name", "Lion", sound="lion.mp3", params={"volume": 90})
    await env.add("follow", sound="follow.mp3")
    await env.add("share", say="{user} shared", params={"voice_id": "en-US-GuyNeural"})
    assert env.run("gift", gift_name="Rose") == {"sound_url": f"{MEDIA}/static/sounds/{env.user_id}/rose.mp3",
                                                 "volume": 40}
    assert env.run("gift", gift_name="Lion")["volume"] == 90
    assert env.run("follow")["volume"] == 40  # a sound plays at the sounds' volume whatever the event
    assert env.run("share", user="Ann") == {"tts_url": f"{MEDIA}/static/tts/key1.mp3", "volume": 70}
    assert env.speech.requests == [("Ann shared", "en-US-GuyNeural", 0, False)]  # trigger speech: not the chat lane
    assert env.run("gift", gift_name="Other") == {}  # no audio, no volume


async def test_template_placeholders(env: Env) -> None:
    await env.add("gift", say="{user}/{username}/{gift_name}/{count}/{diamonds}/{message}/{likes}")
    env.run("gift", user="", username="ann", gift_name="Rose", count=3, diamond_count=5)
    assert env.speech.texts == ["ann/ann/Rose/3/15//0"]


async def test_gift_sounds_disabled_suppresses_sound_only(env: Env) -> None:
    await env.add("gift", sound="rose.mp3", priority=2)
    await env.add("gift", say="thank you", priority=1)
    await env.add("follow", sound="follow.mp3")
    await env.set(gift_sounds_enabled=False)
    assert env.run("gift") == {"tts_url": f"{MEDIA}/static/tts/key1.mp3", "volume": 100}
    assert "sound_url" in env.run("follow")


async def test_changes_reach_the_engine_at_once(env: Env) -> None:
    trigger_id = await env.add("gift", say="yes")
    assert _said(env.run("gift"))
    await env.triggers.set_enabled(env.user_id, trigger_id, False)
    assert env.run("gift") == {}
    await env.set(tts_enabled=False)
    assert env.run("chat", message="hello") == {}


# --- executed_count ---

async def test_executed_count_batched(env: Env) -> None:
    first = await env.add("gift", "min_count", 1, say="a", priority=1, cooldown_seconds=1)
    second = await env.add("gift", say="b")
    for _ in range(3):
        env.run("gift", count=1)  # a, b (a cooling down), b
    env.clock.now += 5
    env.run("gift", count=1)  # a
    counts = "SELECT id, executed_count FROM triggers ORDER BY id"
    assert [tuple(r) for r in await env.db.fetchall(counts)] == [(first, 0), (second, 0)]  # nothing written yet
    assert {t.id: t.executed_count for t in await env.triggers.list(env.user_id)} == {first: 2, second: 2}
    await env.triggers.flush()
    assert [tuple(r) for r in await env.db.fetchall(counts)] == [(first, 2), (second, 2)]
    env.run("gift", count=1)  # b (a cooling down)
    await env.triggers.close()  # close flushes what is left
    assert [tuple(r) for r in await env.db.fetchall(counts)] == [(first, 2), (second, 3)]


async def test_flush_task_writes_periodically(tmp_path) -> None:
    db = Database(tmp_path / "t.db")
    await db.open()
    user_id = await db.execute("INSERT INTO users (username, created_at) VALUES ('s', ?)", (iso(utcnow()),))
    store = TriggerStore(db, make_config(tmp_path), flush_seconds=0.01)
    trigger = await store.set(user_id, 10, TriggerSetSchema().load(
        {"event_type": "follow", "action": "tts", "action_params": {"text_template": "x"}}))
    await store.start()
    store.count_fired(trigger.id)
    store.count_fired(trigger.id)
    for _ in range(100):
        if await db.fetchval("SELECT executed_count FROM triggers") == 2:
            break
        await asyncio.sleep(0.01)
    assert await db.fetchval("SELECT executed_count FROM triggers") == 2
    await store.close()
    await db.close()


# --- failures stay inside ---

async def test_errors_do_not_escape(env: Env, caplog) -> None:
    await env.add("gift", say="thanks")
    env.speech.fail = True
    with caplog.at_level(logging.ERROR, logger="ttboost.pipeline.actions"):
        assert env.run("gift", gift_name="Rose") == {}
        assert env.run("chat", message="hello") == {}
    assert "actions failed for user" in caplog.text
    trigger = env.triggers.rules(env.user_id, "gift")[0]
    env.speech.fail = False
    trigger.action_params.clear()  # a corrupt rule: the event still passes, silent
    assert env.run("gift") == {}


async def test_without_speech_sounds_still_play(env: Env) -> None:
    engine = ActionEngine(env.settings, env.triggers, None, media_url=MEDIA, default_voice=DEFAULT_VOICE)
    await env.add("gift", say="thanks", priority=1)
    await env.add("gift", sound="rose.mp3")
    event = LiveEvent(type="gift", username="a")
    engine.apply(env.user_id, event)
    assert "sound_url" in event.extra
    chat = LiveEvent(type="chat", username="a", message="hello")
    engine.apply(env.user_id, chat)
    assert chat.extra == {}


async def test_unprepared_user_gets_no_audio(env: Env) -> None:
    event = LiveEvent(type="chat", username="a", message="hello")
    env.engine.apply(env.user_id + 1, event)
    assert event.extra == {}


def test_lru_is_bounded() -> None:
    lru: _Lru[str, int] = _Lru(limit=3)
    for i in range(5):
        lru.put(str(i), i)
    assert "0" not in lru and "1" not in lru and lru.get("4", 0) == 4


# --- viewer_first_message (the original's "VIP greeting") ---

async def test_viewer_first_message_fires_once_per_viewer_per_stream(env: Env) -> None:
    await env.set(chat_tts_mode="off")
    await env.add("viewer_first_message", "username", "@Boss", say="welcome back, boss", priority=1)
    await env.add("viewer_first_message", sound="hello.mp3", params={"volume": 40})

    def chat(username: str, message: str = "hi", **fields: Any) -> tuple[LiveEvent, LiveEvent | None]:
        event = LiveEvent("chat", username=username, user=username.title(), message=message, **fields)
        return event, env.engine.apply(env.user_id, event)

    chat_event, greeting = chat("boss", "hello all")
    assert greeting is not None and greeting.type == "viewer_first_message" and "tts_url" in greeting.extra
    assert greeting.to_payload() == {"user": "Boss", "username": "boss", "message": "hello all",
                                     "tts_url": f"{MEDIA}/static/tts/key1.mp3", "volume": 100}
    assert chat_event.extra == {}  # the chat itself: read aloud or not by its own rules (here: off)
    assert chat("boss", "again")[1] is None  # once per viewer per stream
    _, anna = chat("anna", user_id="7")
    assert anna is not None and anna.extra == {"sound_url": f"{MEDIA}/static/sounds/{env.user_id}/hello.mp3",
                                               "volume": 40}
    assert chat("anna_renamed", user_id="7")[1] is None  # the same viewer (TikTok id) under a new handle
    env.engine.stream_started(env.user_id)  # a new LIVE greets everyone again
    assert chat("anna", user_id="7")[1] is not None and chat("boss")[1] is not None
    assert env.speech.texts == ["welcome back, boss", "welcome back, boss"]
    # A forced first message (simulate's test button) fires although the viewer already wrote.
    assert env.engine.apply(env.user_id, LiveEvent("chat", username="boss", message="x"), first_message=True)


async def test_viewer_first_message_needs_a_trigger_and_keeps_the_chats_own_action(env: Env) -> None:
    first = LiveEvent("chat", username="anna", message="hi")
    assert env.engine.apply(env.user_id, first) is None  # no such trigger: no extra frame
    assert _said(first.extra)  # chat read aloud as usual
    await env.add("viewer_first_message", say="hello {user}: {message}")
    assert env.engine.apply(env.user_id, LiveEvent("chat", username="anna", message="again")) is None  # seen
    chat = LiveEvent("chat", user="Bob", username="bob", message="yo")
    greeting = env.engine.apply(env.user_id, chat)
    assert _said(chat.extra) and greeting is not None and _said(greeting.extra)
    assert env.speech.texts[-2:] == ["Bob: yo", "hello Bob: yo"]
    await env.set(tts_enabled=False)  # a speech trigger the switches turn off does not fire
    assert env.engine.apply(env.user_id, LiveEvent("chat", username="carl", message="hi")) is None
