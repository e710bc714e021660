"""The trigger engine and default chat speech: picks each event's sound_url / tts_url / volume from memory only."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Final, Generic, Hashable, Mapping, Protocol, TypeVar
from urllib.parse import quote

from ..trigger_schemas import COOLDOWN_MAX
from ..triggers import CONDITIONS, Trigger, render_template
from ..tts.text import clean_text, contains_blocked
from .events import LiveEvent
from .rules import Compiled, Context, compile_rules, matching

if TYPE_CHECKING:
    from ..settings import SettingsStore
    from ..triggers import TriggerStore

_LOGGER = logging.getLogger(__name__)

VIEWERS_MAX: Final = 10_000  # viewers remembered per map (likes, diamonds, once, cooldowns); oldest dropped
NICKNAME_MAX_CHARS: Final = 40  # characters of a nickname read before a chat message
PER_VIEWER_COOLDOWN: Final = frozenset({"chat", "viewer_join"})  # spec §5; other types cool down globally
_AUDIO_KEYS: Final = ("sound_url", "tts_url", "volume")

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class Speech(Protocol):
    """What the engine needs of tts.service.SpeechService."""

    def request(self, text: str, voice: str, rate: int, *, sheddable: bool, owner: int = 0) -> str | None: ...

    def url_path(self, key: str) -> str: ...


class _Lru(Generic[_K, _V]):
    """A dict that forgets its least recently written key beyond `limit`: a flood of viewers costs bounded memory."""

    def __init__(self, limit: int = VIEWERS_MAX) -> None:
        self._data: OrderedDict[_K, _V] = OrderedDict()
        self._limit = limit

    def get(self, key: _K, default: _V) -> _V:
        return self._data.get(key, default)

    def put(self, key: _K, value: _V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._limit:
            self._data.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def latest(self) -> _V | None:
        """The value written last."""
        return next(reversed(self._data.values()), None)


@dataclass(slots=True)
class _Stream:
    """What resets when a LIVE starts."""

    likes: _Lru[str, int] = field(default_factory=_Lru)  # viewer → likes this stream
    diamonds: _Lru[str, int] = field(default_factory=_Lru)  # viewer → diamonds given this stream
    once: _Lru[tuple[int, str], bool] = field(default_factory=_Lru)  # (trigger, viewer) fired this stream
    chatters: _Lru[str, bool] = field(default_factory=_Lru)  # viewers who wrote in chat this stream
    like_sum: int = 0  # likes counted from events, for when TikTok sends no room total
    like_total: int | None = None  # highest stream total seen, for every_likes crossings


@dataclass(slots=True)
class _User:
    stream: _Stream = field(default_factory=_Stream)
    cooldowns: _Lru[tuple[int, str], float] = field(default_factory=_Lru)  # (trigger, viewer or "") → fired at


class ActionEngine:
    """Runs the spec's trigger matching and default chat speech; `apply` is synchronous and never raises."""

    def __init__(self, settings: SettingsStore, triggers: TriggerStore, speech: Speech | None, *, media_url: str,
                 default_voice: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._triggers = triggers
        self._speech = speech  # None while no TTS service is wired: speech is skipped, sounds still play
        self._media_url = media_url.rstrip("/")
        self._default_voice = default_voice
        self._clock = clock
        self._users: dict[int, _User] = {}
        self._unprepared_logged: set[int] = set()
        # user → event type → the rule list it was compiled from, and the compiled rules (see _plan).
        self._plans: dict[int, dict[str, tuple[list[Trigger], list[Compiled]]]] = {}

    async def prepare(self, user_id: int) -> None:
        await self._settings.prepare(user_id)
        await self._triggers.prepare(user_id)

    def stream_started(self, user_id: int) -> None:
        self._user(user_id).stream = _Stream()

    def cached_users(self) -> set[int]:
        return set(self._users) | set(self._plans) | self._unprepared_logged

    def forget(self, user_id: int) -> None:
        """Drops a user's state (per-stream counters, compiled rules) once nothing runs for them: a new watch
        starts a new stream anyway. Kept while a trigger cooldown may still be running (they outlive streams)."""
        state = self._users.get(user_id)
        fired = state.cooldowns.latest() if state is not None else None
        if fired is not None and self._clock() - fired < COOLDOWN_MAX:
            return
        self._users.pop(user_id, None)
        self._plans.pop(user_id, None)
        self._unprepared_logged.discard(user_id)

    def apply(self, user_id: int, event: LiveEvent, *, first_message: bool | None = None) -> LiveEvent | None:
        """Sets event.extra's audio fields; an unexpected error is logged and the event goes on silent.

        For a chat that is the viewer's first of the stream (or first_message=True), returns the
        viewer_first_message event a trigger of that type fired for, to be published right after the chat.
        """
        try:
            self._apply(user_id, event)
            if event.type == "chat":
                return self._first_message(user_id, event, first_message)
        except Exception:
            for key in _AUDIO_KEYS:
                event.extra.pop(key, None)
            _LOGGER.exception("actions failed for user %s on %s from %r (msg_id %s)", user_id, event.type,
                              event.username, event.msg_id)
        return None

    def _user(self, user_id: int) -> _User:
        state = self._users.get(user_id)
        if state is None:
            state = self._users[user_id] = _User()
        return state

    def _apply(self, user_id: int, event: LiveEvent) -> None:
        if event.type not in CONDITIONS:
            return
        settings = self._settings.cached(user_id)
        if settings is None:
            if user_id not in self._unprepared_logged:
                self._unprepared_logged.add(user_id)
                _LOGGER.warning("actions: settings of user %s not loaded (prepare() not called); no audio", user_id)
            return
        state = self._user(user_id)
        ctx = _track(state.stream, event)
        if not self._run_triggers(user_id, state, event, ctx, settings) and event.type == "chat":
            self._speak_chat(user_id, state, event, ctx, settings)

    def _first_message(self, user_id: int, chat: LiveEvent, first: bool | None) -> LiveEvent | None:
        """The viewer_first_message event for a viewer's first chat of the stream, if one of its triggers fired."""
        settings = self._settings.cached(user_id)
        viewer = _viewer(chat)
        if settings is None or not viewer:
            return None
        chatters = self._user(user_id).stream.chatters
        if first is None:
            first = viewer not in chatters
        chatters.put(viewer, True)
        if not first:
            return None
        greeting = LiveEvent("viewer_first_message", user=chat.user, username=chat.username, user_id=chat.user_id,
                             message=chat.message, msg_id=chat.msg_id)
        fired = self._run_triggers(user_id, self._user(user_id), greeting, Context(viewer=viewer), settings)
        return greeting if fired else None

    def _run_triggers(self, user_id: int, state: _User, event: LiveEvent, ctx: Context,
                      settings: Mapping[str, Any]) -> bool:
        """Fires the first matching, allowed trigger of the event's type (one action per event); True if one did."""
        now = self._clock()
        sound_ok, speech_ok = self._switches(event.type, settings)
        for trigger in matching(self._plan(user_id, event.type), event, ctx, sound_ok, speech_ok):
            viewer = ctx.viewer if event.type in PER_VIEWER_COOLDOWN else ""
            once_key = (trigger.id, ctx.viewer)
            if trigger.once_per_stream and once_key in state.stream.once:
                continue
            if trigger.cooldown_seconds > 0:
                last = state.cooldowns.get((trigger.id, viewer), None)
                if last is not None and now - last < trigger.cooldown_seconds:
                    continue
                state.cooldowns.put((trigger.id, viewer), now)
            if trigger.once_per_stream:
                state.stream.once.put(once_key, True)
            self._triggers.count_fired(trigger.id)
            self._fire(user_id, trigger, event, ctx, settings)
            return True  # one action per event
        return False

    def _plan(self, user_id: int, event_type: str) -> list[Compiled]:
        """The user's rules of this type, compiled once per version: TriggerStore swaps in new lists on change."""
        rules = self._triggers.rules(user_id, event_type)
        plans = self._plans.setdefault(user_id, {})
        cached = plans.get(event_type)
        if cached is None or cached[0] is not rules or len(cached[1]) != len(rules):
            cached = plans[event_type] = (rules, compile_rules(rules))
        return cached[1]

    def _switches(self, event_type: str, settings: Mapping[str, Any]) -> tuple[bool, bool]:
        """Whether the streamer's switches let a play_sound / a tts trigger of event_type act at all; a
        switched-off trigger is passed over. The same for every rule of a type, so decided once per event."""
        if event_type == "viewer_join" and not settings["join_sound_enabled"]:
            return False, False
        return (event_type != "gift" or bool(settings["gift_sounds_enabled"]),
                bool(settings["tts_enabled"]) and self._speech is not None)

    def _fire(self, user_id: int, trigger: Trigger, event: LiveEvent, ctx: Context,
              settings: Mapping[str, Any]) -> None:
        params = trigger.action_params
        if trigger.action == "play_sound":
            event.extra["sound_url"] = f"{self._media_url}/static/sounds/{user_id}/{quote(params['sound_filename'])}"
            event.extra["volume"] = params.get("volume", settings["gifts_volume"])
            return
        text = render_template(params["text_template"], _template_values(trigger, event, ctx))
        blocklist = settings["tts_blocklist"]
        cleaned = clean_text(text, settings["tts_max_chars"])
        if cleaned and not contains_blocked(text, blocklist) and not contains_blocked(cleaned, blocklist):
            self._speak(user_id, event, cleaned, params.get("voice_id") or settings["voice_id"], settings,
                        sheddable=False)

    def _speak_chat(self, user_id: int, state: _User, event: LiveEvent, ctx: Context,
                    settings: Mapping[str, Any]) -> None:
        mode = settings["chat_tts_mode"]
        if not settings["tts_enabled"] or self._speech is None or mode == "off":
            return
        message = event.message
        if mode == "prefix":
            prefix = settings["chat_tts_prefix"]
            message = message.lstrip()
            if not message.startswith(prefix):
                return
            message = message[len(prefix):]
        elif mode == "donor":
            # "Donor" means a viewer who gave something: a minimum of 0 still asks for one gift.
            if state.stream.diamonds.get(ctx.viewer, 0) < max(1, settings["chat_tts_min_diamonds"]):
                return
        blocklist = settings["tts_blocklist"]
        max_chars = settings["tts_max_chars"]
        body = clean_text(message, max_chars)
        if not body or contains_blocked(message, blocklist) or contains_blocked(body, blocklist):
            return
        text = body
        if settings["tts_read_username"]:
            nick = clean_text(event.user, NICKNAME_MAX_CHARS) or clean_text(event.username, NICKNAME_MAX_CHARS)
            if nick and not contains_blocked(nick, blocklist):  # a rude nickname is skipped, the message is read
                text = clean_text(f"{nick}: {body}", max_chars)
        # Chat is sheddable: in a flood the oldest unspoken messages give way to new ones.
        self._speak(user_id, event, text, settings["voice_id"], settings, sheddable=True)

    def _speak(self, user_id: int, event: LiveEvent, text: str, voice: str, settings: Mapping[str, Any], *,
               sheddable: bool) -> None:
        assert self._speech is not None
        # Queued in the user's own queue: the speech workers take turns between users (tts/queue.py).
        key = self._speech.request(text, voice or self._default_voice, settings["tts_rate"], sheddable=sheddable,
                                   owner=user_id)
        if key:
            event.extra["tts_url"] = self._media_url + self._speech.url_path(key)
            event.extra["volume"] = settings["tts_volume"]


def _viewer(event: LiveEvent) -> str:
    return event.user_id or event.username.strip().lower()


def _track(stream: _Stream, event: LiveEvent) -> Context:
    """Updates the per-stream counters with this event, before any trigger looks at them."""
    ctx = Context(viewer=_viewer(event))
    if event.type == "gift" and ctx.viewer:
        stream.diamonds.put(ctx.viewer, stream.diamonds.get(ctx.viewer, 0) + max(event.diamonds, 0))
    elif event.type == "like":
        count = max(event.count, 0)
        ctx.viewer_likes_before = stream.likes.get(ctx.viewer, 0)
        ctx.viewer_likes = ctx.viewer_likes_before + count
        if ctx.viewer:
            stream.likes.put(ctx.viewer, ctx.viewer_likes)
        stream.like_sum += count
        total = event.total if event.total > 0 else stream.like_sum
        # The first like of a stream counts from the total before its burst, so a crossing there still fires.
        before = stream.like_total if stream.like_total is not None else max(total - count, 0)
        ctx.total_before, ctx.total = before, max(before, total)  # a late, smaller total is no step back
        stream.like_total = ctx.total
    return ctx


def _template_values(trigger: Trigger, event: LiveEvent, ctx: Context) -> dict[str, Any]:
    # {likes} means what the condition counted: the stream total for every_likes, the viewer's sum for
    # min_likes, else the likes of this burst.
    likes = {"every_likes": ctx.total, "min_likes": ctx.viewer_likes}.get(trigger.condition_key, event.count)
    return {"user": event.user or event.username, "username": event.username, "message": event.message,
            "gift_name": event.gift_name, "count": event.count, "diamonds": event.diamonds,
            "likes": likes if event.type == "like" else 0}
