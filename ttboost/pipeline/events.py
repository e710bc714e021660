"""LiveEvent: the project's own event type; no TikTokLive object travels past the adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

# Event types the app receives (spec §6). "viewer" is the room's viewer count; "viewer_first_message" follows
# a viewer's first chat of a stream when a trigger of that type fired (the original's "VIP greeting").
EVENT_TYPES: Final = ("chat", "gift", "like", "viewer_join", "follow", "share", "subscribe", "viewer",
                      "viewer_first_message")
# Types a trigger may be attached to (spec §5).
TRIGGER_EVENT_TYPES: Final = ("chat", "gift", "like", "viewer_join", "follow", "share", "subscribe",
                              "viewer_first_message")


@dataclass(slots=True)
class LiveEvent:
    """One normalized LIVE event.

    Fields not meaningful for a type keep their zero value and are left out of the frame.
    """

    type: str
    user: str = ""  # display name: nickname, else handle
    username: str = ""  # handle (TikTok unique id)
    user_id: str = ""  # TikTok numeric user id as text; keys per-viewer state (cooldowns, likes)
    message: str = ""  # chat text
    gift_id: int = 0
    gift_name: str = ""
    count: int = 0  # gift: combo count; like: likes in this burst
    diamond_count: int = 0  # gift: diamonds per unit
    streakable: bool = False  # gift: a combo gift (TikTok gift type 1)
    repeat_end: bool = False  # gift: this delivery ends the combo
    total: int = 0  # like: the room's like total; viewer: total viewers seen
    current: int = 0  # viewer: current viewers
    sub_month: int = 0  # subscribe
    msg_id: str = ""  # TikTok message id; duplicate deliveries share it
    # Timing (spec §6 ?timing=1, §10 latency histograms). Every LiveSource fills tiktok_ms from the message's
    # own header (common.create_time) when TikTok sent one; received_ms is stamped by the session (LIVE) or the
    # dispatcher (simulate, demo) when left 0.
    tiktok_ms: int = 0  # TikTok's create time, Unix ms; 0 when the message carried none
    received_ms: int = 0  # when the server read the event, Unix ms
    # What the action hook decided: sound_url / tts_url / volume (spec §6 optional fields).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def diamonds(self) -> int:
        """Diamonds of the whole gift (count × per-unit diamonds)."""
        return self.count * self.diamond_count

    def to_payload(self) -> dict[str, Any]:
        """The type-specific fields of the WebSocket frame (without type/seq/ts)."""
        t = self.type
        if t == "viewer":
            return {"current": self.current, "total": self.total}
        out: dict[str, Any] = {"user": self.user or self.username, "username": self.username}
        if t == "chat" or t == "viewer_first_message":
            out["message"] = self.message
        elif t == "gift":
            out.update(gift_id=self.gift_id, gift_name=self.gift_name, count=self.count,
                       diamond_count=self.diamond_count, diamonds=self.diamonds)
        elif t == "like":
            out.update(count=self.count, total=self.total)
        elif t == "subscribe":
            out["sub_month"] = self.sub_month
        out.update(self.extra)
        return out


_SECONDS_BEFORE: Final = 100_000_000_000  # a Unix time below this is in seconds (ms would be before 1973)


def unix_ms(value: int | None) -> int:
    """A TikTok create time as Unix ms (TikTok sends ms; a value small enough to be seconds is taken as seconds,
    so a source that sends seconds cannot report 1970); 0 or a negative value means none."""
    if not value or value < 0:
        return 0
    return value * 1000 if value < _SECONDS_BEFORE else value
