"""Uploaded sounds for every worker: a JetStream object store holds them; each worker's folder is its cache.

After an upload (or a delete) commits, the bytes go into the bucket and the other workers are told to drop
their cached copy of that name, so a replaced sound is never served stale; a worker that lacks a file fetches it
on the first GET (media/store.py MediaStore.fetch).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ..media import MediaStore
from .broker import Broker

_LOGGER = logging.getLogger(__name__)

BUCKET: Final = "ttboost_sounds"
SUBJECT: Final = "ttboost.sounds"


def _name(user_id: int, filename: str) -> str:
    return f"{user_id}/{filename}"


class ObjectStoreReplica:
    """The SoundReplica of a cluster (media/store.py)."""

    def __init__(self, broker: Broker, store: MediaStore) -> None:
        self._broker = broker
        self._store = store
        self._bucket: ObjectStore | None = None

    async def start(self) -> None:
        self._bucket = await self._broker.nc.jetstream().create_object_store(BUCKET)
        await self._broker.subscribe(SUBJECT, self._drop_cached)
        self._store.replica = self

    @property
    def bucket(self) -> ObjectStore:
        if self._bucket is None:
            raise RuntimeError("sound replica not started")
        return self._bucket

    async def put(self, user_id: int, filename: str, data: bytes) -> None:
        await self.bucket.put(_name(user_id, filename), data)
        await self._broker.publish(SUBJECT, {"user_id": user_id, "filename": filename})

    async def get(self, user_id: int, filename: str) -> bytes | None:
        try:
            result = await self.bucket.get(_name(user_id, filename))
        except ObjectNotFoundError:
            return None
        return result.data

    async def delete(self, user_id: int, filename: str) -> None:
        try:
            await self.bucket.delete(_name(user_id, filename))
        except ObjectNotFoundError:
            pass
        await self._broker.publish(SUBJECT, {"user_id": user_id, "filename": filename})

    async def _drop_cached(self, body: dict[str, Any]) -> None:
        await self._store.delete(int(body["user_id"]), str(body["filename"]))
