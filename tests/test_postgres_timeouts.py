"""No PostgreSQL statement waits for ever: a lock held too long, an exhausted pool and a partitioned server each
end in the usual 500 envelope within [storage] query_timeout_seconds / pool_timeout_seconds, and the same
requests work again once the database answers, without a restart."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Final

import asyncpg
import pytest

from tests.helpers import bearer, eventually, make_user
from tests.pg_partition import Partition
from ttboost.db import DatabaseTimeout, PostgresDatabase
from ttboost.db.postgres import POOL_MAX, WRITE_LOCK

INTERNAL: Final = {"detail": "internal server error", "code": "internal_error"}
SHORT: Final = {"query_timeout_seconds": 1.0, "pool_timeout_seconds": 1.0}  # seconds; a loaded machine stays far below
ROSE: Final = {"event_type": "gift", "condition_value": "Rose", "action": "tts",
               "action_params": {"text_template": "thanks"}}

on_postgres = pytest.mark.parametrize("storage_backend", ["postgres"], indirect=True)


@pytest.fixture
async def partition(pg_url: str) -> AsyncIterator[Partition]:
    proxy = Partition(pg_url)
    await proxy.start()
    yield proxy
    await proxy.close()


@on_postgres
async def test_a_write_waiting_past_the_timeout_answers_500_and_works_once_the_lock_is_gone(
        make_client, database_url: str) -> None:
    client = await make_client(storage=SHORT)
    _, token = await make_user(client.app)
    other_worker = await asyncpg.connect(database_url)
    try:
        await other_worker.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK)  # a write unit that never ends
        resp = await client.post("/v2/triggers/set", json=ROSE, headers=bearer(token))
        assert resp.status == 500 and await resp.json() == INTERNAL
        health = await client.get("/health")  # reads take no lock: the server still answers
        assert health.status == 200 and (await health.json())["db"] == "ok"
        await other_worker.execute("SELECT pg_advisory_unlock($1)", WRITE_LOCK)
    finally:
        await other_worker.close()
    resp = await client.post("/v2/triggers/set", json=ROSE, headers=bearer(token))
    assert resp.status == 200
    listed = await client.get("/v2/triggers/list", headers=bearer(token))
    assert [t["id"] for t in (await listed.json())["triggers"]] == [(await resp.json())["trigger"]["id"]]


async def test_a_request_waits_for_a_pooled_connection_no_longer_than_the_pool_timeout(pg_url: str) -> None:
    db = PostgresDatabase(pg_url, pool_timeout=0.3)
    await db.open()
    try:
        parked, go = asyncio.Event(), asyncio.Event()
        inside = 0

        async def hold_a_connection() -> None:
            nonlocal inside
            async with db.transaction(read_only=True):  # no lock: every one of them gets in
                await db.fetchval("SELECT 1")
                inside += 1
                if inside == POOL_MAX:
                    parked.set()
                await go.wait()

        holders = [asyncio.create_task(hold_a_connection()) for _ in range(POOL_MAX)]
        await asyncio.wait_for(parked.wait(), 10)
        with pytest.raises(DatabaseTimeout, match="no PostgreSQL connection came free within 0.3 s"):
            await db.fetchval("SELECT 1")
        go.set()
        await asyncio.gather(*holders)
        assert await db.fetchval("SELECT 1") == 1
    finally:
        await db.close()


async def test_a_partitioned_database_answers_500_and_503_and_the_pool_recovers_when_it_is_back(
        partition: Partition, make_client) -> None:
    # partition first: its database must outlive the app's connections.
    client = await make_client(storage={"database_url": partition.url, **SHORT})
    _, token = await make_user(client.app)
    assert (await client.get("/v2/triggers/list", headers=bearer(token))).status == 200
    partition.freeze()
    try:
        resp = await client.post("/v2/triggers/set", json=ROSE, headers=bearer(token))
        assert resp.status == 500 and await resp.json() == INTERNAL
        health = await client.get("/health")
        assert health.status == 503 and (await health.json())["db"] == "error"
    finally:
        partition.thaw()
    # Connections that timed out were closed; the pool opens new ones on demand.
    assert (await eventually(lambda: client.get("/health"), lambda r: r.status == 200, timeout=10)).status == 200
    resp = await client.post("/v2/triggers/set", json=ROSE, headers=bearer(token))
    assert resp.status == 200


async def test_a_commit_whose_answer_is_lost_counts_as_committed_when_postgresql_committed_it(
        partition: Partition) -> None:
    db = PostgresDatabase(partition.url, query_timeout=1.0)
    await db.open()
    try:
        async with db.transaction():  # no error: the COMMIT timed out, but PostgreSQL says it committed
            await db.execute("INSERT INTO users (username, created_at) VALUES ('once', 'x')")
            partition.mute()  # the COMMIT still reaches the server; its answer never comes back
        partition.unmute()
        assert await db.fetchval("SELECT count(*) FROM users WHERE username = 'once'") == 1
        foreign_key = await db.fetchval("SELECT conname FROM pg_constraint WHERE conrelid = 'sounds'::regclass "
                                        "AND contype = 'f'")
        await db.execute(f"ALTER TABLE sounds ALTER CONSTRAINT {foreign_key} DEFERRABLE INITIALLY DEFERRED")
        with pytest.raises(DatabaseTimeout, match="did not answer within 1 s"):
            async with db.transaction():  # a COMMIT that failed without an answer still fails
                await db.execute("INSERT INTO users (username, created_at) VALUES ('twice', 'x')")
                await db.execute("INSERT INTO sounds (user_id, filename, size, duration_ms, format, created_at) "
                                 "VALUES (999, 'a.mp3', 1, 1, 'mp3', 'x')")  # no such user: checked at COMMIT
                partition.mute()
        partition.unmute()
        assert await db.fetchval("SELECT count(*) FROM users WHERE username = 'twice'") == 0
    finally:
        partition.unmute()
        await db.close()
