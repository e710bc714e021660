"""The one NATS connection of a worker: JetStream, the registry of live workers, and plain messages.

Only this module imports nats-py: the rest of the cluster code speaks in subjects and JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, Final

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, KeyNotFoundError
from nats.js.kv import KeyValue

_LOGGER = logging.getLogger(__name__)

WORKERS_BUCKET: Final = "ttboost_workers"
HEARTBEATS_PER_LEASE: Final = 3  # a worker renews its registry entry this many times per lease_seconds
CONNECT_TIMEOUT: Final = 5.0  # seconds per connection attempt at start
DRAIN_SECONDS: Final = 3.0  # a subscription's messages still being handled when it ends
STREAM_CONFIG_DIFFERS: Final = 10058  # JetStream's error code: the stream exists with another configuration

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class BrokerUnavailable(Exception):
    """NATS could not be reached at start."""


class Broker:
    """Connects, keeps this worker's entry in the workers bucket fresh, publishes and subscribes JSON."""

    def __init__(self, url: str, worker_id: str, lease_seconds: float) -> None:
        self.url = url
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self._nc: Client | None = None
        self._workers: KeyValue | None = None
        self._subs: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            self._nc = await nats.connect(self.url, name=self.worker_id, connect_timeout=CONNECT_TIMEOUT,
                                          max_reconnect_attempts=-1, allow_reconnect=True)
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            raise BrokerUnavailable(f"cannot reach NATS at {self.url.rpartition('@')[2]}: {exc}") from None
        self._workers = await self._workers_bucket()
        await self._beat()
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="cluster-heartbeat")
        _LOGGER.info("cluster: worker %s joined through %s", self.worker_id, self.url.rpartition("@")[2])

    async def _workers_bucket(self) -> KeyValue:
        """The bucket's TTL is the lease: an entry a dead worker stops renewing is gone within lease_seconds."""
        return await self.key_value(WORKERS_BUCKET, self.lease_seconds)

    async def key_value(self, bucket: str, ttl: float) -> KeyValue:
        """The JetStream key-value bucket, made with this TTL (seconds an entry lives after its last write)."""
        js = self.nc.jetstream()
        try:
            return await js.create_key_value(KeyValueConfig(bucket=bucket, ttl=ttl))
        except BadRequestError as exc:
            if exc.err_code != STREAM_CONFIG_DIFFERS:
                raise
        # Made earlier with another TTL (a restart with a changed lease_seconds): this worker's config wins.
        info = await js.stream_info(f"KV_{bucket}")
        info.config.max_age = ttl
        info.config.duplicate_window = ttl  # JetStream: never longer than max_age
        await js.update_stream(info.config)
        _LOGGER.info("cluster: bucket %s TTL changed to %.1f s", bucket, ttl)
        return await js.key_value(bucket)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._nc is None:
            return
        try:
            if self._workers is not None:
                await self._workers.delete(self.worker_id)  # leave now, not a lease later
            await self._nc.drain()
        except Exception:  # a broker already gone must not stop the shutdown
            _LOGGER.warning("cluster: NATS was not there to say goodbye to", exc_info=True)
        self._nc = None

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError("broker is not open")
        return self._nc

    async def _beat(self) -> None:
        assert self._workers is not None
        await self._workers.put(self.worker_id, self.worker_id.encode())

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / HEARTBEATS_PER_LEASE)
            try:
                await self._beat()
            except Exception:  # NATS away for a moment: the client reconnects, the next beat renews
                _LOGGER.warning("cluster: heartbeat failed", exc_info=True)

    async def workers(self) -> list[str]:
        """The workers alive now (each renewed its entry within the last lease)."""
        assert self._workers is not None
        return await self.live_keys(WORKERS_BUCKET, self._workers)

    async def live_keys(self, bucket: str, kv: KeyValue) -> list[str]:
        """The keys of a key-value bucket that hold a value now (not deleted, not expired), sorted.

        Not KeyValue.keys(): its end-of-keys marker races the first deliveries (consumer info can report nothing
        pending while the entries are still on their way), and under load it answered "no workers" with three alive.
        The stream's subject list is one request and exact; a subject whose last entry is a delete is skipped.
        """
        prefix = f"$KV.{bucket}."
        info = await self.nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
        keys = [subject[len(prefix):] for subject in info.state.subjects or {}]
        alive = await asyncio.gather(*(_has_value(kv, key) for key in keys))
        return sorted(key for key, has in zip(keys, alive) if has)

    async def publish(self, subject: str, body: dict[str, Any]) -> None:
        await self.nc.publish(subject, json.dumps({**body, "from": self.worker_id}).encode())

    async def subscribe(self, subject: str, handler: Handler, *, own: bool = False) -> None:
        """handler(body) for each message on subject; this worker's own messages only when own=True."""

        async def deliver(msg: Msg) -> None:
            try:
                body = json.loads(msg.data)
                if own or body.get("from") != self.worker_id:
                    await handler(body)
            except Exception:  # one bad message must not end the subscription
                _LOGGER.exception("cluster: message on %s could not be handled", msg.subject)

        self._subs.append(await self.nc.subscribe(subject, cb=deliver))

    async def unsubscribe(self, sub: Subscription | None, *, drain: bool = False) -> None:
        """drain: what was sent to it before the server heard of the end is still handled (a request waiting
        there gets its answer instead of leaving the asker to time out); only while connected, as it takes a
        round trip. Otherwise the messages not handled yet are dropped."""
        if sub is None:
            return
        try:
            if drain and self.nc.is_connected:
                # Bounded: a handler still at work on a message (a watch starting, NATS slow) must not hold a
                # handover, or a shutdown, for ever; past the bound the rest is dropped.
                async with asyncio.timeout(DRAIN_SECONDS):
                    await sub.drain()
            else:
                await sub.unsubscribe()
        except TimeoutError:
            _LOGGER.warning("cluster: %s was not drained within %.0f s", sub.subject, DRAIN_SECONDS)
            await self.unsubscribe(sub)  # ends its message task too
        except Exception:  # the connection is closing: the subscription goes with it
            _LOGGER.debug("cluster: unsubscribe from %s failed", sub.subject, exc_info=True)

    async def flush(self) -> None:
        await self.nc.flush()


async def _has_value(kv: KeyValue, key: str) -> bool:
    try:
        await kv.get(key)
    except KeyNotFoundError:  # also a deleted key (a worker that said goodbye, a watch stopped on purpose)
        return False
    return True
