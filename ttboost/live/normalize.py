"""TikTok message fields → LiveEvent, shared by the fast decoder (webcast.py) and the library path (tiktok.py)."""

from __future__ import annotations

import time
from typing import Any, Final

from ttboost.pipeline.events import LiveEvent, unix_ms

STREAKABLE_GIFT_TYPE: Final = 1  # Gift.type of a combo gift (TikTokLive's ExtendedGift.streakable)


def live_event(type_: str, msg_id: int, user: tuple[str, str, int] | None, **fields: Any) -> LiveEvent:
    """A LiveEvent with TikTok's message id and who sent it: `user` is (nickname, handle, numeric id)."""
    if user is not None:
        nickname, handle, user_id = user
        fields.update(user=nickname or handle, username=handle, user_id=str(user_id) if user_id else "")
    return LiveEvent(type=type_, msg_id=str(msg_id) if msg_id else "", **fields)


def stamp(event: LiveEvent, create_time: int) -> LiveEvent:
    """Sets the event's timing: TikTok's create time (the message's common.create_time) and now, as it is read."""
    event.tiktok_ms = unix_ms(create_time)
    event.received_ms = int(time.time() * 1000)
    return event


def gift_event(msg_id: int, user: tuple[str, str, int] | None, repeat_count: int, repeat_end: int,
               gift_id: int, gift: tuple[int, str, int, int] | None) -> LiveEvent:
    """A gift; `gift` is the gift description (id, name, diamonds per unit, type) if the message has one."""
    event = live_event("gift", msg_id, user, count=repeat_count or 1,  # a gift is at least one
                       repeat_end=bool(repeat_end), gift_id=gift[0] if gift is not None and gift[0] else gift_id)
    if gift is not None:
        event.gift_name, event.diamond_count = gift[1], gift[2]
        event.streakable = gift[3] == STREAKABLE_GIFT_TYPE
    return event
