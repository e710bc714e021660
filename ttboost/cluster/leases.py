"""One TikTok connection per streamer across the cluster: a worker watches a user's LIVE only under that user's
lease, an entry in a JetStream key-value bucket whose TTL is lease_seconds.

The lease is taken with a create (fails while another worker's entry lives) and renewed with an update checked
against the revision this worker wrote last (fails once another worker took it after an expiry), so two workers
never both believe they hold it. It is held exactly while the TikTok connection is open (LeasedSource wraps
the session's source): a watch ending in any way deletes it at once, so a graceful stop hands the streamer
over without waiting; a killed worker's entry expires after lease_seconds. A worker that finds the lease held
elsewhere reports it as a transient failure: the session backs off and tries again, as after a dropped
connection, and takes over once the entry is gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Final

from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from ..fileio import run_to_end
from ..live.errors import ConnectionDropped
from ..live.source import LiveSource
from ..pipeline.events import LiveEvent
from .broker import HEARTBEATS_PER_LEASE, Broker

_LOGGER = logging.getLogger(__name__)

BUCKET: Final = "ttboost_sessions"


class LeaseElsewhere(ConnectionDropped):
    """Another worker holds the user's lease (watches the LIVE now, or died less than a lease ago)."""

    note = "live_elsewhere"  # the status text says so instead of "TikTok cannot be reached"

    def __init__(self, message: str, lease_seconds: float) -> None:
        super().__init__(message)
        # The back-off stops growing at a lease: a worker waiting for a killed holder's lease takes over within
        # two leases however long it waited, instead of up to reconnect_max_seconds later.
        self.retry_within = lease_seconds


class SessionLeases:
    """The ttboost_sessions bucket: key user.<id>, value the holding worker's id."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.lease_seconds = broker.lease_seconds
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        self._kv = await self._broker.key_value(BUCKET, self.lease_seconds)

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("session leases not started")
        return self._kv

    async def acquire(self, user_id: int) -> int | None:
        """The revision of the lease now held by this worker, or None while another worker holds it."""
        try:
            return await self.kv.create(_key(user_id), self._broker.worker_id.encode())
        except (KeyWrongLastSequenceError, NotFoundError):  # held; or expired while create looked: next try
            return None

    async def renew(self, user_id: int, revision: int) -> int | None:
        """The new revision, or None when the lease is no longer this worker's (expired and taken)."""
        try:
            return await self.kv.update(_key(user_id), self._broker.worker_id.encode(), last=revision)
        except (KeyWrongLastSequenceError, NotFoundError):
            return None

    async def release(self, user_id: int, revision: int) -> None:
        """Deletes the lease if it is still the one this worker wrote (never another worker's)."""
        try:
            await self.kv.delete(_key(user_id), last=revision)
        except KeyWrongLastSequenceError:
            pass

    async def holder(self, user_id: int) -> str | None:
        try:
            entry = await self.kv.get(_key(user_id))
        except NotFoundError:  # gone (deleted or expired) since the create failed
            return None
        return entry.value.decode() if entry.value else None

    def guard(self, user_id: int, source: LiveSource) -> LiveSource:
        return LeasedSource(self, user_id, source)


def _key(user_id: int) -> str:
    return f"user.{user_id}"


class LeasedSource:
    """The session's source, opened only under the user's lease and closed when the lease cannot be kept."""

    def __init__(self, leases: SessionLeases, user_id: int, source: LiveSource) -> None:
        self._leases = leases
        self._user_id = user_id
        self._source = source
        self._revision = 0  # of the lease held now (renewals move it on)

    async def watch(self, unique_id: str, on_event: Callable[[LiveEvent], None],
                    on_connected: Callable[[], None]) -> None:
        try:
            revision = await self._leases.acquire(self._user_id)
            holder = None if revision is not None else await self._leases.holder(self._user_id)
        except Exception as exc:  # NATS away for a moment: retried with the back-off like a failed connect
            raise ConnectionDropped(f"@{unique_id}: NATS: {exc or type(exc).__name__}") from None
        if revision is None:
            raise LeaseElsewhere(f"@{unique_id}: worker {holder or '(just released)'}", self._leases.lease_seconds)
        self._revision = revision
        watch = asyncio.create_task(self._source.watch(unique_id, on_event, on_connected),
                                    name=f"leased-watch-{self._user_id}")
        try:
            await self._keep(watch, unique_id)
            return watch.result()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)  # the TikTok connection closes first
            await run_to_end(self._release(self._revision))

    async def _keep(self, watch: asyncio.Task[None], unique_id: str) -> None:
        """Renews the lease until the watch ends; raises when it was lost (the watch is then closed)."""
        every = self._leases.lease_seconds / HEARTBEATS_PER_LEASE
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            done, _ = await asyncio.wait({watch}, timeout=every)
            if done:
                return
            try:
                kept = await self._leases.renew(self._user_id, self._revision)
            except Exception as exc:  # NATS away for a moment: keep watching while the lease may still live
                _LOGGER.warning("live user=%s: lease renewal failed: %s", self._user_id, exc)
                if loop.time() - renewed < self._leases.lease_seconds - every:
                    continue
                kept = None
            if kept is None:
                _LOGGER.warning("live user=%s: lease lost, closing this worker's TikTok connection", self._user_id)
                raise LeaseElsewhere(f"@{unique_id}: lease lost", self._leases.lease_seconds)
            self._revision, renewed = kept, loop.time()

    async def _release(self, revision: int) -> None:
        try:
            await self._leases.release(self._user_id, revision)
        except Exception:  # the entry then expires after lease_seconds: a slower handover, nothing worse
            _LOGGER.warning("live user=%s: could not release the lease", self._user_id, exc_info=True)
