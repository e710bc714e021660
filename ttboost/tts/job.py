"""One phrase being synthesized: its state, and the audio chunks readers follow while it runs."""

from __future__ import annotations

import asyncio
import enum
from typing import AsyncGenerator

from .engine import TTSError


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # failed, shed, or dropped at close: its URL answers 404


class Job:
    """One phrase being synthesized; readers follow its chunks while it runs."""

    __slots__ = ("key", "text", "voice", "rate", "state", "error", "chunks", "size", "finished", "_changed")

    def __init__(self, key: str, text: str, voice: str, rate: int) -> None:
        self.key, self.text, self.voice, self.rate = key, text, voice, rate
        self.state = JobState.PENDING
        self.error = ""
        self.chunks: list[bytes] = []
        self.size = 0  # bytes
        self.finished = asyncio.Event()
        self._changed = asyncio.Event()  # replaced on every change, so each waiter sees exactly the next one

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        self._notify()

    def finish(self, state: JobState, error: str = "") -> None:
        self.state, self.error = state, error
        self.finished.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncGenerator[bytes, None]:
        """Everything produced so far, then the rest as it comes; TTSError if the job fails on the way."""
        sent = 0
        while True:
            if sent < len(self.chunks):
                data = b"".join(self.chunks[sent:])  # a late reader catches up in one write
                sent = len(self.chunks)
                yield data
            elif self.state is JobState.DONE:
                return
            elif self.state is JobState.FAILED:
                raise TTSError(self.error or "synthesis failed")
            else:
                await self._changed.wait()
