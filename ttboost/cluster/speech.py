"""Speech for every worker: a tts_url made by one worker is served by any (SPEC §11).

The worker that queues a phrase marks its key "pending" in a JetStream key-value bucket, stores the audio in an
object store when it exists, or marks the key "failed". A worker asked for a key it does not have fetches the
audio, waits while the key is pending elsewhere (as one process waits for its own synthesis), and answers 404
only for a key that failed, was shed, or that no worker knows.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from nats.js.api import KeyValueConfig, ObjectStoreConfig
from nats.js.errors import KeyNotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ..tts.service import JOB_TIMEOUT, SpeechService
from .broker import Broker

_LOGGER = logging.getLogger(__name__)

AUDIO_BUCKET: Final = "ttboost_tts"
STATE_BUCKET: Final = "ttboost_tts_state"
AUDIO_TTL: Final = 86400.0  # seconds a phrase's audio stays in the cluster (URLs are played within seconds)
UNKNOWN_GRACE: Final = 0.5  # seconds a key no worker has marked yet is waited for: its mark may be in flight
POLL: Final = 0.05  # seconds between looks while waiting


class ClusterSpeech:
    """The SpeechReplica of a cluster (tts/service.py)."""

    def __init__(self, broker: Broker, speech: SpeechService) -> None:
        self._broker = broker
        self._speech = speech
        self._audio: ObjectStore | None = None
        self._state: KeyValue | None = None
        # Marks go out in order through one task: a "failed" must never be overtaken by its own "pending".
        self._marks: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._marker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        js = self._broker.nc.jetstream()
        self._audio = await js.create_object_store(AUDIO_BUCKET, config=ObjectStoreConfig(ttl=AUDIO_TTL))
        # A mark outlives any synthesis (JOB_TIMEOUT) with room, then goes: the audio bucket answers from then.
        self._state = await js.create_key_value(KeyValueConfig(bucket=STATE_BUCKET, ttl=JOB_TIMEOUT * 5))
        self._marker = asyncio.create_task(self._send_marks(), name="cluster-tts-marks")
        self._speech.replica = self

    async def close(self) -> None:
        self._speech.replica = None
        if self._marker is not None:
            self._marker.cancel()
            await asyncio.gather(self._marker, return_exceptions=True)
            self._marker = None

    def _mark(self, key: str, state: bytes) -> None:
        self._marks.put_nowait((key, state))

    async def _send_marks(self) -> None:
        assert self._state is not None
        while True:
            key, state = await self._marks.get()
            try:
                await self._state.put(key, state)
            except Exception:  # NATS away for a moment: another worker then answers 404 for this phrase
                _LOGGER.warning("cluster: could not mark speech %s %s", key, state.decode(), exc_info=True)

    def pending(self, key: str) -> None:
        self._mark(key, b"pending")

    def failed(self, key: str) -> None:
        self._mark(key, b"failed")

    async def stored(self, key: str, data: bytes) -> None:
        assert self._audio is not None
        try:
            await self._audio.put(key, data)
            self._mark(key, b"done")
        except Exception:  # served here anyway; elsewhere a GET of it waits for the mark's end, then 404s
            _LOGGER.exception("cluster: could not share speech %s", key)

    async def fetch(self, key: str) -> bytes | None:
        assert self._audio is not None and self._state is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            # The mark first, then the audio: "done" is marked after the audio is in, so a "done" read here
            # means the audio is there for the look that follows (not so the other way round).
            try:
                state = (await self._state.get(key)).value
            except KeyNotFoundError:
                state = None
            try:
                return (await self._audio.get(key)).data
            except ObjectNotFoundError:
                pass
            waited = loop.time() - started
            # "done" without audio: past its TTL. None: unknown, unless its mark is still on the way.
            if state in (b"failed", b"done") or (state is None and waited > UNKNOWN_GRACE) or waited > JOB_TIMEOUT:
                return None
            await asyncio.sleep(POLL)
