"""An offline speech engine for tests: deterministic bytes per text, holdable and failable on demand."""

from __future__ import annotations

import asyncio
import hashlib
from typing import AsyncIterator

from ttboost.tts.engine import TTSError, Voice
from ttboost.tts.voices import builtin_edge_voices

SIZE = 1000  # bytes of audio the fake engine makes per phrase
FIRST = 100  # bytes in its first chunk


def audio_for(text: str) -> bytes:
    return (hashlib.sha256(text.encode()).digest() * (SIZE // 32 + 1))[:SIZE]


class FakeEngine:
    name = "fake"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.held: dict[str, asyncio.Event] = {}  # text → set by the test to let the rest of the audio out
        self.reached: dict[str, asyncio.Event] = {}  # text → set when the first chunk is out and it waits
        self.failing: set[str] = set()  # fail before any audio
        self.failing_late: set[str] = set()  # fail after the first chunk

    def hold(self, text: str) -> asyncio.Event:
        self.reached[text] = asyncio.Event()
        self.held[text] = asyncio.Event()
        return self.held[text]

    async def stream(self, text: str, voice: str, rate: int) -> AsyncIterator[bytes]:
        self.calls.append(text)
        if text in self.failing:
            raise TTSError("fake failure")
        data = audio_for(text)
        yield data[:FIRST]
        if text in self.held:
            self.reached[text].set()
            await self.held[text].wait()
        if text in self.failing_late:
            raise TTSError("fake failure after audio")
        yield data[FIRST:]

    def voices(self) -> list[Voice]:
        return builtin_edge_voices()  # it stands in for edge, so it offers edge's built-in list

    async def refresh_voices(self) -> list[Voice] | None:
        return None

    def resolve_voice(self, voice_id: str) -> str:
        return voice_id
