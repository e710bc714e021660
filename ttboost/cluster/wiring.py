"""The cluster's part of the application: set up only when cluster.nats_url is set (create_app)."""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from .. import keys
from ..db import PostgresDatabase
from .broker import Broker
from .changes import ChangeFeed
from .homes import Homes
from .leases import SessionLeases
from .media import ObjectStoreReplica
from .ratelimits import PostgresBuckets
from .speech import ClusterSpeech


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the rules (it feeds their caches), before the LIVE sessions."""
    config = app[keys.CONFIG]
    broker = Broker(config.cluster.nats_url, config.worker_id, config.cluster.lease_seconds)
    await broker.open()
    try:
        await ChangeFeed(broker, app[keys.TRIGGERS], app[keys.SETTINGS]).start()
        await ObjectStoreReplica(broker, app[keys.MEDIA]).start()
        db = app[keys.DB]
        assert isinstance(db, PostgresDatabase)  # config checks: cluster mode needs PostgreSQL
        await PostgresBuckets(db).start(app[keys.LIMITERS])
        speech = ClusterSpeech(broker, app[keys.SPEECH])
        await speech.start()
        leases = SessionLeases(broker)
        await leases.start()
        app[keys.BROKER], app[keys.LEASES] = broker, leases
        try:
            yield
        finally:
            await speech.close()
    finally:
        await broker.close()


async def homes_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the LIVE sessions (it needs the bus and the live manager), so that at shutdown it hands every user
    over before they close."""
    homes = Homes(app, app[keys.BROKER], app[keys.LEASES])
    await homes.start()
    app[keys.HOME] = homes
    yield
    await homes.close()


async def hand_over_homes(app: web.Application) -> None:
    """on_shutdown, before the sockets close: apps that reconnect to another worker find their new home there."""
    home = app.get(keys.HOME)
    if isinstance(home, Homes):
        await home.hand_over_all()


async def health_block(app: web.Application) -> dict[str, object] | None:
    """The /health "cluster" block, or None in one process."""
    broker = app.get(keys.BROKER)
    if broker is None:
        return None
    return {"worker_id": broker.worker_id, "workers": len(await broker.workers()),
            "sessions_here": app[keys.LIVE].active_count()}
