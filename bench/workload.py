"""The benchmark's LIVE: a deterministic event mix, 100 triggers set through the HTTP API, and their sounds.

Every event carries its index in the viewer's nickname ("b000000042"), which the server copies into the
frame's "user" field: the client finds the send time of each frame by that index.
"""

from __future__ import annotations

import array
import math
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from bench.common import auth

VIEWERS: Final = 50  # distinct viewers (per-viewer state: likes, cooldowns, combos)
VIEWER_ID_BASE: Final = 1_000_000  # TikTok numeric ids of the viewers
SOUNDS: Final = 5  # sound files the play_sound triggers use
NICK_PREFIX: Final = "b"
NICK_DIGITS: Final = 9
STREAMER: Final = "benchstreamer"
# Event mix per 20 events: 12 chat, 5 gift, 3 like (roughly a busy LIVE: chat dominates).
_PATTERN: Final = ("chat",) * 12 + ("gift",) * 5 + ("like",) * 3


def nickname(idx: int) -> str:
    return f"{NICK_PREFIX}{idx:0{NICK_DIGITS}d}"


def index_in(frame: str) -> int:
    """The event index from a frame's text, or -1 (status frames and the like): a find, not a JSON parse."""
    at = frame.find('"user":"' + NICK_PREFIX)
    if at < 0:
        return -1
    start = at + 9
    return int(frame[start:start + NICK_DIGITS])


@dataclass(frozen=True, slots=True)
class EventSpec:
    idx: int
    type: str
    viewer: int  # 0..VIEWERS-1
    message: str = ""
    gift_id: int = 0
    gift_name: str = ""
    diamonds: int = 0
    like_count: int = 0
    like_total: int = 0

    @property
    def handle(self) -> str:
        return f"viewer{self.viewer}"

    @property
    def user_id(self) -> int:
        return VIEWER_ID_BASE + self.viewer

    @property
    def nickname(self) -> str:
        return nickname(self.idx)


def event_spec(idx: int) -> EventSpec:
    """Mostly events no trigger matches (each one scans every rule of its type), some that fire one."""
    kind = _PATTERN[idx % len(_PATTERN)]
    viewer = (idx * 7) % VIEWERS
    if kind == "chat":
        # One chat in six matches a message_contains trigger (a sound); the rest go to chat speech.
        message = f"wow kw{idx % 25} nice" if idx % 6 == 0 else "hello everyone, great stream"
        return EventSpec(idx, "chat", viewer, message=message)
    if kind == "gift":
        # One gift in five matches a gift_id trigger; Roses match nothing and scan all 40 gift rules.
        if idx % 5 == 0:
            return EventSpec(idx, "gift", viewer, gift_id=9000 + idx % 20, gift_name="Bench Gift", diamonds=5)
        return EventSpec(idx, "gift", viewer, gift_id=5655, gift_name="Rose", diamonds=1)
    return EventSpec(idx, "like", viewer, like_count=5, like_total=5 * (idx + 1))


def trigger_bodies() -> list[dict[str, Any]]:
    """100 triggers (the duo plan's maximum): 40 chat, 40 gift, 20 like; sounds and speech mixed."""
    bodies: list[dict[str, Any]] = []

    def sound(i: int) -> dict[str, Any]:
        return {"action": "play_sound", "action_params": {"sound_filename": f"sound{i % SOUNDS}.mp3"}}

    def speech(template: str) -> dict[str, Any]:
        return {"action": "tts", "action_params": {"text_template": template}}

    for i in range(25):
        bodies.append({"event_type": "chat", "condition_key": "message_contains", "condition_value": f"kw{i}",
                       **sound(i)})
    for i in range(10):
        bodies.append({"event_type": "chat", "condition_key": "message_starts_with",
                       "condition_value": f"!cmd{i}", **speech("{user} used a command")})
    for i in range(5):
        bodies.append({"event_type": "chat", "condition_key": "username", "condition_value": f"vip{i}",
                       **sound(i)})
    for i in range(20):
        bodies.append({"event_type": "gift", "condition_key": "gift_id", "condition_value": 9000 + i, **sound(i)})
    for i in range(10):
        bodies.append({"event_type": "gift", "condition_key": "gift_name", "condition_value": f"Gift {i}",
                       **speech("Thank you for {gift_name}")})
    for i in range(5):
        bodies.append({"event_type": "gift", "condition_key": "min_diamonds", "condition_value": 1000 * (i + 1),
                       **sound(i)})
    for i in range(5):
        bodies.append({"event_type": "gift", "condition_key": "min_count", "condition_value": 50 * (i + 1),
                       **speech("Combo of {count}!")})
    for i in range(10):
        bodies.append({"event_type": "like", "condition_key": "every_likes", "condition_value": 1000 * (i + 1),
                       **sound(i)})
    for i in range(10):
        bodies.append({"event_type": "like", "condition_key": "min_likes", "condition_value": 500 * (i + 1),
                       **speech("Thanks for the likes")})
    assert len(bodies) == 100
    return bodies


def make_mp3(seconds: float = 0.3, rate: int = 22_050) -> bytes:
    """A short sine tone as MP3 (lameenc is a runtime dependency; no numpy needed)."""
    import lameenc

    samples = array.array("h", (int(8000 * math.sin(2 * math.pi * 440 * n / rate))
                                for n in range(int(seconds * rate))))
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(64)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(1)
    encoder.set_quality(7)
    return bytes(encoder.encode(samples.tobytes()) + encoder.flush())


async def configure_streamer(session: aiohttp.ClientSession, base_url: str, token: str) -> dict[str, Any]:
    """Sounds, the 100 triggers and settings, all through the HTTP API, as the app would do it."""
    audio = make_mp3()
    for i in range(SOUNDS):
        form = aiohttp.FormData()
        form.add_field("file", audio, filename=f"sound{i}.mp3", content_type="audio/mpeg")
        async with session.post(f"{base_url}/v2/sounds/upload", data=form, headers=auth(token)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"sound upload failed: {resp.status} {await resp.text()}")
    for body in trigger_bodies():
        async with session.post(f"{base_url}/v2/triggers/set", json=body, headers=auth(token)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"trigger set failed: {resp.status} {await resp.text()}")
    settings = {"tiktok_username": STREAMER, "auto_connect": True}
    async with session.post(f"{base_url}/v2/settings/update", json=settings, headers=auth(token)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"settings update failed: {resp.status} {await resp.text()}")
    async with session.get(f"{base_url}/v2/triggers/list", headers=auth(token)) as resp:
        listed = (await resp.json())["triggers"]
    return {"triggers": len(listed), "sounds": SOUNDS}
