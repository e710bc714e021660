"""The speech engine interface every engine (edge-tts, espeak-ng, the tests' fakes) implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Final, Protocol, runtime_checkable

RATE_MIN: Final = -50  # percent: slower than this is unintelligible with edge voices
RATE_MAX: Final = 100  # percent: twice the normal speed


class TTSError(Exception):
    """Synthesis failed (network, bad voice, no audio): the phrase is not spoken, the server keeps running."""


@dataclass(frozen=True, slots=True)
class Voice:
    id: str  # what clients send back as voice_id, e.g. "ru-RU-SvetlanaNeural" or "espeak-ru"
    name: str  # for people, e.g. "Svetlana"
    locale: str  # BCP 47, e.g. "ru-RU"
    gender: str  # "Female" | "Male" | "" (unknown)
    engine: str  # "edge" | "espeak"

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "locale": self.locale, "gender": self.gender,
                "engine": self.engine}


def clamp_rate(rate: int) -> int:
    """Speech rate in percent, kept inside what every engine accepts."""
    return max(RATE_MIN, min(RATE_MAX, int(rate)))


@runtime_checkable
class TTSEngine(Protocol):
    """Turns text into MP3; never reaches for anything but its own service or binary."""

    name: str  # part of every cache key: the same text from two engines is two different files

    def stream(self, text: str, voice: str, rate: int) -> AsyncIterator[bytes]:
        """MP3 chunks as the engine produces them; raises TTSError on any failure, including no audio at all.

        `voice` is any id `resolve_voice` accepts; `rate` is a percent in RATE_MIN..RATE_MAX.
        """
        ...

    def voices(self) -> list[Voice]:
        """The built-in voice list: works offline, never empty."""
        ...

    async def refresh_voices(self) -> list[Voice] | None:
        """The live voice list when the service is reachable, else None; never raises."""
        ...

    def resolve_voice(self, voice_id: str) -> str:
        """Maps any known voice id (this engine's or another's) to what this engine speaks; TTSError if none."""
        ...
