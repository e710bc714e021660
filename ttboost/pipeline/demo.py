"""Demo stream: a random chat or gift every few seconds, through the same pipeline as LIVE events."""

from __future__ import annotations

import asyncio
import random
from typing import Final

from .dispatch import Dispatcher
from .events import LiveEvent

_VIEWERS: Final = (("Аня", "anya.live"), ("Max", "max_plays"), ("Ким", "kim_77"), ("Sofia", "sofia.m"),
                   ("Даня", "danya_pro"), ("Leo", "leo.tt"))
_MESSAGES: Final = ("привет всем!", "Hello from demo mode", "какой классный эфир", "🔥🔥🔥", "что за игра?",
                    "love this stream", "всем привет из Казани")
_GIFTS: Final = ((5655, "Rose", 1), (5827, "Ice Cream Cone", 1), (5269, "TikTok", 1), (6064, "GG", 1),
                 (5879, "Doughnut", 30), (6427, "Hat and Mustache", 99))


def random_event(rng: random.Random) -> LiveEvent:
    nickname, handle = rng.choice(_VIEWERS)
    user_id = str(abs(hash(handle)) % 10**9)
    if rng.random() < 0.6:
        return LiveEvent("chat", user=nickname, username=handle, user_id=user_id, message=rng.choice(_MESSAGES))
    gift_id, name, diamonds = rng.choice(_GIFTS)
    return LiveEvent("gift", user=nickname, username=handle, user_id=user_id, gift_id=gift_id, gift_name=name,
                     count=rng.choice((1, 1, 1, 5, 10)), diamond_count=diamonds)


async def run_demo(dispatcher: Dispatcher, user_id: int, min_seconds: float, max_seconds: float,
                   rng: random.Random | None = None) -> None:
    """Runs until cancelled (the demo belongs to one socket)."""
    rng = rng or random.Random()
    await dispatcher.prepare(user_id)
    while True:
        await asyncio.sleep(rng.uniform(min_seconds, max_seconds))
        dispatcher.dispatch(user_id, random_event(rng), live=False)
