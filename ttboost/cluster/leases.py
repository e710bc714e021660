"""Each user's lease: an entry in a JetStream key-value bucket whose TTL is lease_seconds. The worker holding it is
the user's home (cluster/homes.py): it numbers the user's frames and runs the user's TikTok connection.

The lease is taken with a create (fails while another worker's entry lives) and renewed with an update checked
against the revision this worker wrote last (fails once another worker took it after an expiry), so two workers
never both believe they hold it. A graceful stop deletes it at once; a killed worker's entry expires after
lease_seconds.
"""

from __future__ import annotations

from typing import Final

from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from .broker import Broker

BUCKET: Final = "ttboost_sessions"
WRONG_LAST_SEQUENCE: Final = 10071  # JetStream's error code: the entry was written since that revision


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
        except BadRequestError as exc:  # nats-py raises this, not KeyWrongLastSequenceError, for a delete
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise

    async def holder(self, user_id: int) -> str | None:
        try:
            entry = await self.kv.get(_key(user_id))
        except NotFoundError:  # gone (deleted or expired) since the create failed
            return None
        return entry.value.decode() if entry.value else None



def _key(user_id: int) -> str:
    return f"user.{user_id}"
