"""The edge-tts engine: Microsoft Edge's online neural voices; the one module that imports edge_tts."""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import Any, AsyncIterator, Final

import aiohttp
import edge_tts
import edge_tts.communicate
import edge_tts.voices

from .engine import TTSError, Voice, clamp_rate
from .voices import EDGE_VOICE_RE, builtin_edge_voices, edge_voice, language_of

_LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 10  # seconds to open the WebSocket (edge-tts wants an int)
RECEIVE_TIMEOUT: Final = 20  # seconds of silence from the service before giving up (edge-tts wants an int)
LIST_TIMEOUT: Final = 5.0  # seconds for the live voice list; the built-in list answers otherwise


class EdgeEngine:
    """Streams MP3 (24 kHz, 48 kbit/s, mono) from the edge-tts service, or from `wss_url` when set."""

    name = "edge"

    def __init__(self, wss_url: str = "", *, voices_url: str = "", connect_timeout: int = CONNECT_TIMEOUT,
                 receive_timeout: int = RECEIVE_TIMEOUT, list_timeout: float = LIST_TIMEOUT) -> None:
        # edge-tts takes no endpoint argument: Communicate and list_voices read these module constants at call
        # time, so setting them is the only way to reach a proxy or a local fake. There is one engine per
        # process, so it is done once, here. The client appends "&ConnectionId=…", hence the "?".
        if wss_url:
            edge_tts.communicate.WSS_URL = wss_url if "?" in wss_url else wss_url + "?"
        if voices_url:
            edge_tts.voices.VOICE_LIST = voices_url if "?" in voices_url else voices_url + "?"
        self._connect_timeout = int(connect_timeout)
        self._receive_timeout = int(receive_timeout)
        self._list_timeout = list_timeout
        self._builtin = builtin_edge_voices()

    async def stream(self, text: str, voice: str, rate: int) -> AsyncIterator[bytes]:
        short_name = self.resolve_voice(voice)
        try:
            communicate = edge_tts.Communicate(
                text, short_name, rate=f"{clamp_rate(rate):+d}%",
                connect_timeout=self._connect_timeout, receive_timeout=self._receive_timeout)
            received = 0
            async with aclosing(communicate.stream()) as chunks:
                async for chunk in chunks:
                    if chunk.get("type") == "audio" and chunk.get("data"):
                        received += len(chunk["data"])
                        yield chunk["data"]
        except TTSError:
            raise
        except Exception as exc:  # aiohttp errors, NoAudioReceived, ValueError from a bad voice: all one failure
            raise TTSError(f"edge-tts failed: {_describe(exc)}") from exc
        if not received:  # text edge-tts splits into nothing yields no chunk and no NoAudioReceived
            raise TTSError("edge-tts returned no audio")
        if _unfinished_turn(communicate):
            # A connection closed without turn.end ends edge-tts's loop quietly with part of the audio; cached
            # under a content address, that cut-off phrase would be served for good.
            raise TTSError("edge-tts stream ended before turn.end")

    def voices(self) -> list[Voice]:
        return list(self._builtin)

    async def refresh_voices(self) -> list[Voice] | None:
        try:
            async with asyncio.timeout(self._list_timeout):
                raw = await edge_tts.list_voices()
        except Exception as exc:  # offline, timeout, HTTP error, bad JSON: the built-in list will do
            _LOGGER.info("edge-tts voice list unavailable: %s", _describe(exc))
            return None
        voices = [v for v in (_from_edge(item) for item in raw) if v is not None]
        return voices or None

    def resolve_voice(self, voice_id: str) -> str:
        if EDGE_VOICE_RE.match(voice_id):  # the live list has hundreds more than the built-in one
            return voice_id
        # Another engine's id ("espeak-ru") or a bare language ("ru"): the first built-in voice of the language.
        language = language_of(voice_id.removeprefix("espeak-"))
        for voice in self._builtin:
            if language_of(voice.locale) == language:
                return voice.id
        raise TTSError(f"no edge voice for {voice_id!r}")


def _from_edge(item: Any) -> Voice | None:
    """One entry of edge-tts's live list → Voice; None for anything malformed."""
    if not isinstance(item, dict) or not isinstance(item.get("ShortName"), str):
        return None
    gender = item.get("Gender") if item.get("Gender") in ("Female", "Male") else ""
    return edge_voice(item["ShortName"], gender)


def _describe(exc: BaseException) -> str:
    """Short and log-safe: aiohttp's own text carries the whole URL (tokens, maybe proxy credentials)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: HTTP {exc.status}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _unfinished_turn(communicate: Any) -> bool:
    """True when audio arrived after the last turn.end (edge-tts zeroes this counter on turn.end).

    Reads edge-tts's internal state defensively: if a release renames it, the check switches itself off.
    """
    state = getattr(communicate, "state", None)
    if not isinstance(state, dict):
        return False
    pending = state.get("chunk_audio_bytes", 0)
    return isinstance(pending, int) and pending > 0
