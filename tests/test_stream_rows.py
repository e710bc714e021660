"""A LIVE's stream row is written while its first events already flow: those events still belong to the stream
(events, CSV, figures, rehearsal); a row that cannot be written costs the stream, never the events or a hang."""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import logging
from typing import Any

import pytest

from tests.fake_live import ScriptedSource
from tests.helpers import bearer, eventually
from tests.test_ws import recv, recv_type, register
from ttboost import keys
from ttboost.db import AnyDatabase
from ttboost.live.history import StreamRows
from ttboost.pipeline.events import LiveEvent


class HeldRows(StreamRows):
    """The stream row's INSERT waits until the test opens the gate (TikTok's first messages come first)."""

    def __init__(self, gate: asyncio.Event, db: AnyDatabase) -> None:
        super().__init__(db)
        self._gate = gate

    async def begin(self, user_id: int, tiktok_username: str) -> int:
        await self._gate.wait()
        return await super().begin(user_id, tiktok_username)


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


def gift(username: str, diamonds: int) -> LiveEvent:
    return LiveEvent("gift", user=username.title(), username=username, gift_id=1, gift_name="GG", count=1,
                     diamond_count=diamonds)


async def _get(client: Any, path: str, token: str) -> tuple[int, Any]:
    resp = await client.get(path, headers=bearer(token))
    return resp.status, await resp.json()


@pytest.mark.both_backends
async def test_events_before_the_stream_row_is_written_belong_to_the_stream(make_client, source) -> None:
    gate = asyncio.Event()
    client = await make_client(live_source=source, stream_rows=functools.partial(HeldRows, gate))
    app = client.server.app
    _, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()
    try:
        watch.connect()
        await recv_type(ws, "status", state="connected")
        watch.emit(gift("bob", 10), LiveEvent("chat", user="Аня", username="anya", message="привет"))
        first = [await recv_type(ws, "gift"), await recv_type(ws, "chat")]
        # A batch written while the row is still held (the log's timer, or 500 rows waiting) must not store
        # them without their stream, nor count them anywhere else.
        await app[keys.BUS].log.flush()
        await app[keys.RECORDER].flush()
        assert (await _get(client, "/v2/streams/current", token))[0] == 404  # the INSERT has not run
    finally:
        gate.set()  # also when a check above failed: shutdown waits for the INSERT to close the row
    status, current = await eventually(lambda: _get(client, "/v2/streams/current", token), lambda r: r[0] == 200)
    stream_id = current["id"]
    watch.emit(gift("kim", 5))
    frames = [*first, await recv_type(ws, "gift")]

    async def events() -> list[dict[str, Any]]:
        return (await _get(client, f"/v2/streams/{stream_id}/events", token))[1]["events"]

    logged = await eventually(events, lambda e: len(e) == 3)
    assert [(e["seq"], e["type"], e["username"]) for e in logged] == [(f["seq"], f["type"], f["username"])
                                                                      for f in frames]
    resp = await client.get(f"/v2/streams/{stream_id}/export.csv", headers=bearer(token))
    rows = list(csv.DictReader(io.StringIO((await resp.read()).decode("utf-8-sig"))))
    assert [(r["type"], r["username"], r["diamonds"]) for r in rows] == [("gift", "bob", "10"), ("chat", "anya", ""),
                                                                         ("gift", "kim", "5")]
    detail = (await eventually(lambda: _get(client, f"/v2/streams/{stream_id}", token),
                               lambda r: r[1]["diamonds"] == 15))[1]
    assert (detail["gifts"], detail["chats"], detail["unique_chatters"]) == (2, 1, 1)
    assert [g["username"] for g in detail["top_gifters"]] == ["bob", "kim"]
    watch.end()
    await recv_type(ws, "status", state="live_ended")
    resp = await client.post(f"/v2/streams/{stream_id}/rehearse", json={"speed": 20}, headers=bearer(token))
    assert resp.status == 200 and (await resp.json())["events"] == 3
    await recv_type(ws, "rehearsal", state="started")
    rehearsed = []
    while (frame := await recv(ws))["type"] != "rehearsal":
        if frame.get("rehearsal"):
            rehearsed.append((frame["type"], frame["username"]))
    assert frame["state"] == "finished"
    assert rehearsed == [("gift", "bob"), ("chat", "anya"), ("gift", "kim")]
    await ws.close()


REFUSE_STREAM_ROWS = {  # a real database error on the stream row's INSERT, and on nothing else
    "sqlite": ["CREATE TEMP TRIGGER no_streams BEFORE INSERT ON stream_sessions "
               "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"],
    "postgres": ["CREATE FUNCTION no_streams() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN RAISE EXCEPTION 'disk trouble'; END $$",
                 "CREATE TRIGGER no_streams BEFORE INSERT ON stream_sessions FOR EACH ROW "
                 "EXECUTE FUNCTION no_streams()"],
}


@pytest.mark.both_backends
async def test_a_stream_row_that_cannot_be_written_costs_the_stream_not_its_events(make_client, source, caplog,
                                                                                  storage_backend: str) -> None:
    client = await make_client(live_source=source)
    app = client.server.app
    for statement in REFUSE_STREAM_ROWS[storage_backend]:
        await app[keys.DB].execute(statement)
    user_id, token = await register(client)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    watch = await source.next_watch()
    with caplog.at_level(logging.ERROR, logger="ttboost.live.session"):
        watch.connect()
        watch.emit(gift("bob", 10), LiveEvent("chat", user="Аня", username="anya", message="привет"))
        await recv_type(ws, "status", state="connected")
        await recv_type(ws, "chat")
        await eventually(lambda: caplog.text, lambda text: "could not record the stream" in text)
    watch.emit(*(gift("kim", 1) for _ in range(50)))  # after the failure: counted nowhere, kept nowhere
    await recv_type(ws, "gift", username="kim")

    async def logged() -> list[tuple[str, Any]]:
        rows = await app[keys.DB].fetchall("SELECT type, session_id FROM events WHERE user_id = ? AND type IN "
                                           "('gift', 'chat') ORDER BY seq", (user_id,))
        return [(r["type"], r["session_id"]) for r in rows]

    written = await eventually(logged, lambda rows: len(rows) == 52)
    assert written == [("gift", None), ("chat", None), *[("gift", None)] * 50]
    await app[keys.RECORDER].flush()
    assert app[keys.RECORDER].pending_streams == 0  # no figures grow for a stream that has no row
    assert await _get(client, "/v2/streams", token) == (200, {"streams": []})
    assert (await _get(client, "/v2/streams/current", token))[0] == 404
    await ws.close()
