"""/v2/streams: paging, ownership, validation at the edges, what counts (LIVE only), crash close, CSV cells."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from tests.conftest import make_config
from tests.fake_live import ScriptedSource
from tests.fake_tts import FakeEngine
from tests.helpers import bearer, eventually, make_user
from tests.test_ws import connected_socket, recv_type

from ttboost import keys
from ttboost.app import create_app
from ttboost.live.errors import ConnectionDropped, UserOffline
from ttboost.pipeline.events import LiveEvent
from ttboost.streams.export import safe_cell

pytestmark = pytest.mark.both_backends  # stream figures and history on SQLite and PostgreSQL


async def _current_id(client: Any, token: str) -> int:
    """The LIVE's stream row is written just after "connected" is sent: waits for it rather than racing it."""
    found = await eventually(lambda: _get(client, "/v2/streams/current", token), lambda r: r[0] == 200)
    return found[1]["id"]


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


async def _insert_streams(app: Any, user_id: int, n: int) -> list[int]:
    return [await app[keys.DB].execute(
        "INSERT INTO stream_sessions (user_id, tiktok_username, started_at, ended_at, end_reason, diamonds) "
        "VALUES (?, 'streamer', ?, ?, 'ended', ?)",
        (user_id, f"2026-11-{i + 1:02d}T20:00:00Z", f"2026-11-{i + 1:02d}T21:30:00Z", i)) for i in range(n)]


async def _get(client: Any, path: str, token: str) -> tuple[int, Any]:
    resp = await client.get(path, headers=bearer(token))
    return resp.status, await resp.json()


async def test_list_pages_newest_first_and_only_the_users_own(make_client) -> None:
    client = await make_client()
    app = client.server.app
    user_id, token = await make_user(app)
    other_id, other_token = await make_user(app, "other")
    ids = await _insert_streams(app, user_id, 5)
    [foreign] = await _insert_streams(app, other_id, 1)
    status, body = await _get(client, "/v2/streams?limit=2", token)
    assert status == 200 and [s["id"] for s in body["streams"]] == ids[::-1][:2]
    first = body["streams"][0]
    assert first["duration_s"] == 5400 and first["diamonds"] == 4 and first["ended_at"] == "2026-11-05T21:30:00Z"
    status, body = await _get(client, f"/v2/streams?limit=2&before={ids[3]}", token)
    assert [s["id"] for s in body["streams"]] == [ids[2], ids[1]]
    status, body = await _get(client, "/v2/streams?before=1", token)
    assert status == 200 and body == {"streams": []}
    assert (await _get(client, "/v2/streams?cache=123", token))[0] == 200  # unknown query keys are ignored
    assert [s["id"] for s in (await _get(client, "/v2/streams", other_token))[1]["streams"]] == [foreign]
    for path in (f"/v2/streams/{foreign}", f"/v2/streams/{foreign}/events", f"/v2/streams/{foreign}/export.csv",
                 "/v2/streams/999999", "/v2/streams/abc", "/v2/streams/0", "/v2/streams/99999999999999999999",
                 "/v2/streams/current"):
        status, body = await _get(client, path, token)
        assert (status, body) == (404, {"detail": "not found", "code": "not_found"}), path
    resp = await client.post(f"/v2/streams/{foreign}/rehearse", json={"speed": 2}, headers=bearer(token))
    assert resp.status == 404


LIST_EDGES = [
    ("limit=1", None), ("limit=100", None), ("limit=0", "limit"), ("limit=101", "limit"), ("limit=abc", "limit"),
    ("limit=1.5", "limit"), ("limit=", "limit"), ("before=1", None), (f"before={2**63 - 1}", None),
    ("before=0", "before"), (f"before={2**63}", "before"), ("before=-5", "before"),
]
EVENTS_EDGES = [
    ("after_seq=0", None), (f"after_seq={2**63 - 1}", None), ("after_seq=-1", "after_seq"),
    (f"after_seq={2**63}", "after_seq"), ("after_seq=x", "after_seq"), ("limit=1", None), ("limit=1000", None),
    ("limit=0", "limit"), ("limit=1001", "limit"),
]


async def test_query_values_at_their_edges(make_client) -> None:
    client = await make_client()
    app = client.server.app
    user_id, token = await make_user(app)
    [stream_id] = await _insert_streams(app, user_id, 1)
    cases = [("/v2/streams", q, f) for q, f in LIST_EDGES]
    cases += [(f"/v2/streams/{stream_id}/events", q, f) for q, f in EVENTS_EDGES]
    for path, query, field in cases:
        status, body = await _get(client, f"{path}?{query}", token)
        if field is None:
            assert status == 200 and set(body) <= {"streams", "events", "next_after_seq"}, (path, query, body)
        else:
            assert status == 422 and list(body["fields"]) == [field], (path, query, body)


async def test_simulated_events_stay_out_of_the_live_streams_figures(make_client, source) -> None:
    client = await make_client(live_source=source)
    ws, watch, token = await connected_socket(client, source)
    stream_id = await _current_id(client, token)
    watch.emit(LiveEvent("gift", user="Bob", username="bob", gift_id=5655, gift_name="Rose", count=2,
                         diamond_count=1),
               LiveEvent("chat", user="Аня", username="anya", message="hi"))
    resp = await client.post("/v2/events/simulate", json={"type": "gift", "count": 100, "diamond_count": 5},
                             headers=bearer(token))
    assert resp.status == 200
    simulated = await recv_type(ws, "gift", count=100)  # the app gets it, the stream does not count it
    watch.emit(LiveEvent("viewer", current=7, total=9))

    async def detail() -> dict[str, Any]:
        return (await _get(client, f"/v2/streams/{stream_id}", token))[1]

    got = await eventually(detail, lambda d: d["peak_viewers"] == 7)
    assert (got["diamonds"], got["gifts"], got["chats"], got["unique_chatters"]) == (2, 2, 1, 1)
    assert got["top_gifters"] == [{"user": "Bob", "username": "bob", "diamonds": 2, "gifts": 2}]
    async def events_of() -> list[dict[str, Any]]:  # the event log has its own batches, apart from figures
        return (await _get(client, f"/v2/streams/{stream_id}/events", token))[1]["events"]

    events = await eventually(events_of, lambda e: len(e) >= 3)
    assert simulated["seq"] not in [e["seq"] for e in events]
    assert [e["type"] for e in events] == ["gift", "chat", "viewer"]  # status frames are not events
    await ws.close()


async def test_a_stream_cut_by_a_crash_is_closed_at_the_next_start_with_what_was_recorded(tmp_path, aiohttp_client,
                                                                                             source) -> None:
    config = make_config(tmp_path / "data")
    client = await aiohttp_client(create_app(config, live_source=source, tts_engine=FakeEngine()))
    ws, watch, token = await connected_socket(client, source)
    stream_id = await _current_id(client, token)
    watch.emit(LiveEvent("gift", user="Bob", username="bob", gift_id=1, gift_name="GG", count=1, diamond_count=10))

    async def detail() -> dict[str, Any]:
        return (await _get(client, f"/v2/streams/{stream_id}", token))[1]

    recorded = await eventually(detail, lambda d: d["diamonds"] == 10)
    assert recorded["diamonds"] == 10
    await ws.close()
    await client.close()
    # What a kill -9 leaves behind: the row still open (a graceful stop closed it as "stopped").
    with sqlite3.connect(config.data_dir / "ttboost.db") as conn:
        last = conn.execute("SELECT last_event_at FROM stream_sessions WHERE id = ?", (stream_id,)).fetchone()[0]
        conn.execute("UPDATE stream_sessions SET ended_at = NULL, end_reason = NULL WHERE id = ?", (stream_id,))
    assert last is not None
    client = await aiohttp_client(create_app(config, live_source=ScriptedSource(), tts_engine=FakeEngine()))
    status, after = await _get(client, f"/v2/streams/{stream_id}", token)
    assert status == 200 and after["end_reason"] == "crashed"
    assert after["ended_at"] == max(last, after["started_at"]) and after["diamonds"] == 10
    assert after["top_gifters"][0]["diamonds"] == 10


def gift(username: str, diamonds: int) -> LiveEvent:
    return LiveEvent("gift", user=username.title(), username=username, gift_id=1, gift_name="GG", count=1,
                     diamond_count=diamonds)


async def test_a_drop_in_the_middle_of_a_live_continues_the_same_stream(make_client, source) -> None:
    client = await make_client(live_source=source)
    ws, watch, token = await connected_socket(client, source)
    stream_id = await _current_id(client, token)
    watch.emit(gift("bob", 10))
    watch.fail(ConnectionDropped("1011"))
    await recv_type(ws, "status", state="reconnecting")
    status, during = await _get(client, "/v2/streams/current", token)
    assert status == 200 and during["id"] == stream_id  # still the LIVE now on, while reconnecting
    watch = await source.next_watch()
    watch.connect()
    await recv_type(ws, "status", state="connected")
    watch.emit(gift("anya", 5))
    watch.end()
    await recv_type(ws, "status", state="live_ended")

    async def streams() -> list[dict[str, Any]]:
        return (await _get(client, "/v2/streams", token))[1]["streams"]

    [stream] = await eventually(streams, lambda s: s[0]["diamonds"] == 15)
    assert (stream["id"], stream["end_reason"], stream["diamonds"], stream["gifts"]) == (stream_id, "ended", 15, 2)
    await ws.close()


async def test_a_stream_that_never_comes_back_after_a_drop_ends_at_the_drop(make_client, source) -> None:
    client = await make_client(live_source=source)
    ws, watch, token = await connected_socket(client, source)
    stream_id = await _current_id(client, token)
    watch.fail(ConnectionDropped("1011"))
    await recv_type(ws, "status", state="reconnecting")
    (await source.next_watch()).fail(UserOffline("offline"))  # the LIVE ended while we were away
    await recv_type(ws, "status", state="waiting_for_live")
    status, row = await _get(client, f"/v2/streams/{stream_id}", token)
    assert (status, row["end_reason"]) == (200, "dropped")
    assert row["started_at"] <= row["ended_at"]  # ended when it dropped, not when the watch gave up
    assert (await _get(client, "/v2/streams/current", token))[0] == 404
    await ws.close()


async def test_head_of_the_csv_sends_no_body(make_client) -> None:
    client = await make_client()
    app = client.server.app
    user_id, token = await make_user(app)
    [stream_id] = await _insert_streams(app, user_id, 1)
    path = f"/v2/streams/{stream_id}/export.csv"
    head = await client.head(path, headers=bearer(token))
    assert head.status == 200 and head.content_type == "text/csv" and await head.read() == b""
    # The next answer on the same kept-alive connection is intact (a streamed body after HEAD would not be).
    resp = await client.get(path, headers=bearer(token))
    assert await resp.read() == "\ufefftime,type,username,user,message,gift,count,diamonds\r\n".encode()


@pytest.mark.parametrize(("text", "cell"), [
    ("=1+1", "'=1+1"), ("+7 999", "'+7 999"), ("-5", "'-5"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\r=1", "'\r=1"), ("hello = world", "hello = world"), ("", ""), ("Ким", "Ким"),
])
def test_csv_cells_never_start_a_formula(text: str, cell: str) -> None:
    assert safe_cell(text) == cell
