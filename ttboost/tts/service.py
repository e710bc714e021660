"""Content-addressed speech: a URL at once, synthesis queued fairly per user, files atomic and the cache bounded."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncGenerator, Callable, Final, Protocol

from ..fileio import make_private_dir, run_to_end, write_atomic
from .engine import TTSEngine, TTSError, clamp_rate
from .job import Job, JobState
from .queue import FairQueue, Lane

_LOGGER = logging.getLogger(__name__)

KEY_CHARS: Final = 32  # hex characters of the HMAC kept: 128 bits, unguessable, short in a URL
JOB_TIMEOUT: Final = 60.0  # seconds for one synthesis, a slow drip from the service included
SHED_LOG_INTERVAL: Final = 10.0  # seconds between "shed" log lines during a flood
_TMP_PREFIX: Final = ".tmp-"  # temp files start with this; start() removes any a crash left behind
_KEY_RE: Final = re.compile(r"[0-9a-f]{32}")
_FILE_RE: Final = re.compile(r"([0-9a-f]{32})\.mp3")


class SpeechReplica(Protocol):
    """Cluster mode (cluster/speech.py): what one worker synthesizes, every worker can serve."""

    def pending(self, key: str) -> None: ...  # a job for key was queued here (never waits: event path)

    def failed(self, key: str) -> None: ...  # …and failed or was shed

    async def stored(self, key: str, data: bytes) -> None: ...  # …and its audio exists

    async def fetch(self, key: str) -> bytes | None: ...  # audio made elsewhere, waiting while it is pending


@dataclass(slots=True)
class _Entry:
    size: int  # bytes
    handed_out: float  # clock() of the last hand-out; -inf for files found on disk at start


class SpeechService:
    """Owns the engine's workers and the cache directory; found as request.app[keys.SPEECH].

    The cache may exceed max_bytes for a while: a file handed out in the last keep_seconds is never evicted,
    because the app may be about to play it (spec §5: kept at least 10 minutes).
    """

    def __init__(self, engine: TTSEngine, cache_dir: Path, secret: bytes, *, max_bytes: int, max_concurrency: int,
                 max_pending: int, max_pending_triggers: int = 50, keep_seconds: float = 600,
                 clock: Callable[[], float] = time.monotonic, job_timeout: float = JOB_TIMEOUT,
                 on_synthesis: Callable[[str, float], None] | None = None) -> None:
        self.engine = engine
        self._dir = Path(cache_dir)
        self._secret = bytes(secret)
        self._max_bytes = max_bytes
        self._concurrency = max(1, max_concurrency)
        self._keep_seconds = keep_seconds
        self._clock = clock
        self._job_timeout = job_timeout
        self._on_synthesis = on_synthesis  # (engine name, seconds) of each phrase synthesized and stored
        self._files: OrderedDict[str, _Entry] = OrderedDict()  # least recently handed out first
        self._total = 0  # bytes in self._files
        self._jobs: dict[str, Job] = {}  # pending or running
        # Per user: chat and trigger phrases bounded (oldest shed), awaited ones never shed.
        self._queue: FairQueue[Job] = FairQueue({Lane.CHAT: max(0, max_pending),
                                                  Lane.TRIGGER: max(0, max_pending_triggers)})
        self._work = asyncio.Event()
        self._idle = 0  # workers waiting for a job
        self._workers: list[asyncio.Task[None]] = []
        self._fs_lock = asyncio.Lock()  # orders writes and evictions of the same key
        self._closed = False
        self._shed_unlogged: dict[Lane, int] = {Lane.CHAT: 0, Lane.TRIGGER: 0}
        self._shed_logged_at = -math.inf
        self.replica: SpeechReplica | None = None

    async def start(self) -> None:
        if self._workers or self._closed:
            return
        found, stale = await asyncio.to_thread(_scan, self._dir)
        for key, size in found:
            self._files[key] = _Entry(size, -math.inf)
            self._total += size
        _LOGGER.info("tts cache %s: %d files, %d bytes (removed %d leftover temp files)",
                     self._dir, len(found), self._total, stale)
        self._workers = [asyncio.create_task(self._worker(), name=f"tts-worker-{i}")
                         for i in range(self._concurrency)]
        await self._evict()

    async def close(self) -> None:
        self._closed = True
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        for job in list(self._jobs.values()):
            job.finish(JobState.FAILED, "speech service closed")
        self._jobs.clear()
        self._queue.clear()
        self._log_shed(force=True)

    def key_for(self, text: str, voice: str, rate: int) -> str:
        message = f"{self.engine.name}|{voice}|{clamp_rate(rate)}|{text}".encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:KEY_CHARS]

    @staticmethod
    def url_path(key: str) -> str:
        return f"/static/tts/{key}.mp3"

    def request(self, text: str, voice: str, rate: int, *, sheddable: bool, owner: int = 0) -> str | None:
        """The key for already-cleaned text, at once; synthesis is queued in `owner`'s queue (a user id)
        unless cached or in flight.

        Never waits. Of one owner's phrases, sheddable (chat) ones are dropped oldest first when more than
        max_pending wait, trigger ones when more than max_pending_triggers wait.
        """
        if not text or self._closed:
            return None
        key = self.key_for(text, voice, rate)
        if key in self._files:
            self._touch(key)
        else:
            self._enqueue(owner, key, text, voice, rate, Lane.CHAT if sheddable else Lane.TRIGGER)
        return key

    async def generate(self, text: str, voice: str, rate: int, *, owner: int = 0) -> tuple[str, bool]:
        """(key, cached) once the audio exists; joins a job already in flight; TTSError on failure."""
        if not text:
            raise TTSError("nothing to speak")
        if self._closed or not self._workers:
            raise TTSError("speech service is not running")
        key = self.key_for(text, voice, rate)
        if key in self._files:
            self._touch(key)
            return key, True
        job = self._enqueue(owner, key, text, voice, rate, Lane.AWAITED)
        await job.finished.wait()  # bounded: job_timeout once running, and close() fails every job
        if job.state is not JobState.DONE:
            raise TTSError(job.error or "synthesis failed")
        return key, False

    def open(self, key: str) -> Path | AsyncGenerator[bytes, None] | None:
        """The cached file, or a live follower of the running synthesis, or None (unknown, failed or shed)."""
        if not _KEY_RE.fullmatch(key):  # before anything touches a path built from it
            return None
        if key in self._files:
            self._touch(key)
            return self._dir / f"{key}.mp3"
        job = self._jobs.get(key)
        return job.follow() if job is not None else None

    # -- queue -----------------------------------------------------------------------------------------------

    def _enqueue(self, owner: int, key: str, text: str, voice: str, rate: int, lane: Lane) -> Job:
        """The job of `key`, queued for `owner` in `lane` unless it is running already."""
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = Job(key, text, voice, clamp_rate(rate))
            if self.replica is not None:
                self.replica.pending(key)
        elif key not in self._queue:
            return job  # running: whoever asks follows it
        # Idle workers take jobs as soon as the loop runs: those are not really waiting.
        for shed, shed_lane in self._queue.put(owner, job, lane, spare=self._idle):
            del self._jobs[shed.key]
            shed.finish(JobState.FAILED, "shed: too many phrases waiting")
            if self.replica is not None:
                self.replica.failed(shed.key)
            self._shed_unlogged[shed_lane] += 1
        self._log_shed()
        self._work.set()
        return job

    def _log_shed(self, *, force: bool = False) -> None:
        if not any(self._shed_unlogged.values()):
            return
        now = self._clock()
        if force or now - self._shed_logged_at >= SHED_LOG_INTERVAL:
            _LOGGER.info("tts queue full: shed %d chat phrase(s) and %d trigger phrase(s), oldest first of their "
                         "user (%d waiting for %d user(s), %d running)", self._shed_unlogged[Lane.CHAT],
                         self._shed_unlogged[Lane.TRIGGER], len(self._queue), self._queue.owners(),
                         len(self._jobs) - len(self._queue))
            self._shed_unlogged = dict.fromkeys(self._shed_unlogged, 0)
            self._shed_logged_at = now

    async def _next_job(self) -> Job:
        while True:
            job = self._queue.take()
            if job is not None:
                return job
            self._work.clear()
            self._idle += 1
            try:
                await self._work.wait()
            finally:
                self._idle -= 1

    async def _worker(self) -> None:
        while True:
            job = await self._next_job()
            await self._run(job)
            await self._evict()

    @property
    def pending(self) -> int:
        """Phrases waiting for a worker."""
        return len(self._queue)

    async def _run(self, job: Job) -> None:
        job.state = JobState.RUNNING
        started = time.perf_counter()
        context = (job.key, self.engine.name, job.voice, job.rate, len(job.text))
        try:
            async with asyncio.timeout(self._job_timeout):
                chunks = self.engine.stream(job.text, job.voice, job.rate)
                try:
                    async for chunk in chunks:
                        if chunk:
                            job.add(bytes(chunk))
                finally:
                    aclose = getattr(chunks, "aclose", None)
                    if aclose is not None:  # an abandoned engine stream must close its connection now
                        await aclose()
            if not job.size:
                raise TTSError("engine returned no audio")
            await self._store(job)
            if self._on_synthesis is not None:
                self._on_synthesis(self.engine.name, time.perf_counter() - started)
        except asyncio.CancelledError:
            self._fail(job, "cancelled")
            raise
        except TimeoutError:
            self._fail(job, f"timed out after {self._job_timeout:.0f}s")
            _LOGGER.warning("tts synthesis timed out (key=%s engine=%s voice=%s rate=%+d chars=%d)", *context)
        except TTSError as exc:
            self._fail(job, str(exc))
            _LOGGER.warning("tts synthesis failed (key=%s engine=%s voice=%s rate=%+d chars=%d): %s", *context, exc)
        except Exception as exc:  # a bug in an engine must not stop the workers
            self._fail(job, f"{type(exc).__name__}: {exc}")
            _LOGGER.exception("tts synthesis crashed (key=%s engine=%s voice=%s rate=%+d chars=%d)", *context)

    def _fail(self, job: Job, error: str) -> None:
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        job.finish(JobState.FAILED, error)
        if self.replica is not None:
            self.replica.failed(job.key)

    # -- cache -----------------------------------------------------------------------------------------------

    async def fetch(self, key: str) -> Path | None:
        """Audio another worker of the cluster made (or is making): into this cache, then served from it."""
        if self.replica is None or not _KEY_RE.fullmatch(key):
            return None
        data = await self.replica.fetch(key)
        if data is None:
            return None
        await self._keep(key, data)
        return self._dir / f"{key}.mp3"

    async def _store(self, job: Job) -> None:
        data = b"".join(job.chunks)
        await self._keep(job.key, data, job)
        if self.replica is not None:
            await self.replica.stored(job.key, data)

    async def _keep(self, key: str, data: bytes, job: Job | None = None) -> None:
        """Writes the audio into the cache; finishes the job that made it (none when fetched)."""
        async with self._fs_lock:
            await run_to_end(asyncio.to_thread(write_atomic, self._dir, f"{key}.mp3", data,
                                              prefix=_TMP_PREFIX, suffix=".mp3"))
            # One step with the write's end: open() sees either the job or the file, never neither.
            old = self._files.pop(key, None)
            self._total += len(data) - (old.size if old else 0)
            self._files[key] = _Entry(len(data), self._clock())
            if job is not None:
                if self._jobs.get(key) is job:
                    del self._jobs[key]
                job.finish(JobState.DONE)
        _LOGGER.debug("tts stored %s (%d bytes)", key, len(data))

    def _touch(self, key: str) -> None:
        self._files[key].handed_out = self._clock()
        self._files.move_to_end(key)

    async def _evict(self) -> None:
        async with self._fs_lock:
            cutoff = self._clock() - self._keep_seconds
            victims: list[Path] = []
            while self._total > self._max_bytes and self._files:
                key, entry = next(iter(self._files.items()))
                if entry.handed_out > cutoff:  # every later entry was handed out even more recently
                    break
                del self._files[key]
                self._total -= entry.size
                victims.append(self._dir / f"{key}.mp3")
            if not victims:
                return
            try:
                await run_to_end(asyncio.to_thread(_unlink_all, victims))
            except Exception:  # the files are out of the index already; a leftover is only disk space
                _LOGGER.exception("tts cache: eviction failed in %s", self._dir)
        # DEBUG: once the cache is full, every new phrase evicts one; INFO would be a line per chat message.
        _LOGGER.debug("tts cache: evicted %d file(s); %d bytes kept (bound %d)", len(victims), self._total,
                      self._max_bytes)


def _scan(directory: Path) -> tuple[list[tuple[str, int]], int]:
    """Blocking. Cache files by mtime (oldest first), after removing temp and empty files a crash left."""
    make_private_dir(directory)
    found: list[tuple[float, str, int]] = []
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _FILE_RE.fullmatch(entry.name)
            if not entry.is_file(follow_symlinks=False):
                continue
            stat = entry.stat(follow_symlinks=False)
            if entry.name.startswith(_TMP_PREFIX) or (match and stat.st_size == 0):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
            elif match:
                found.append((stat.st_mtime, match[1], stat.st_size))
    found.sort()
    return [(key, size) for _, key, size in found], removed


def _unlink_all(paths: list[Path]) -> None:
    """Blocking."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            _LOGGER.warning("tts cache: cannot remove %s: %s", path, exc)
