"""The OBS overlay over HTTP (spec §9): its key, its page, its read-only socket beside the app's."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

import aiohttp
import pytest

from tests.helpers import bearer, make_user, sample_sum, scrape
from tests.test_ws import recv, recv_type
from ttboost import keys

GIFT = {"type": "gift", "user": "Bob", "gift_name": "Rose", "count": 3}


async def overlay_key(client, token: str) -> str:
    resp = await client.post("/v2/overlay/key", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["overlay_url"] == f"http://testserver/overlay/{body['key']}"
    return body["key"]


async def simulate(client, token: str, **event: object) -> None:
    resp = await client.post("/v2/events/simulate", headers=bearer(token), json=event or GIFT)
    assert resp.status == 200, await resp.text()


async def closed(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The close that ends ws, skipping frames still on the way."""
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return msg


@pytest.fixture
async def streamer(client):
    """A licensed streamer whose app socket starts no LIVE watch (these tests simulate their events)."""
    _, token = await make_user(client.server.app)
    resp = await client.post("/v2/settings/update", headers=bearer(token), json={"auto_connect": False})
    assert resp.status == 200
    return token


@pytest.mark.both_backends  # the key store's SQL (an upsert) must hold on PostgreSQL too
async def test_the_key_is_issued_rotated_and_only_its_hash_is_stored(client, streamer) -> None:
    first = await overlay_key(client, streamer)
    second = await overlay_key(client, streamer)
    assert first != second and re.fullmatch(r"[A-Za-z0-9_-]{32}", second)
    rows = await client.server.app[keys.DB].fetchall("SELECT key_hash FROM overlay_keys")
    assert [r["key_hash"] for r in rows] == [hashlib.sha256(second.encode()).hexdigest()]
    assert (await client.get(f"/overlay/{first}")).status == 404
    assert (await client.get(f"/overlay/{second}")).status == 200
    assert (await client.post("/v2/overlay/key")).status == 401


async def test_the_page_is_self_contained_and_locked_down(client, streamer) -> None:
    key = await overlay_key(client, streamer)
    resp = await client.get(f"/overlay/{key}?events=gift,like&chat=1&audio=0&hold=1&lang=en&v=2")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    csp = resp.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp)[1]
    assert f'<script nonce="{nonce}">' in html and "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["Cache-Control"] == "no-store"
    # Nothing is loaded from elsewhere: no src/href attributes to other places, no @import or url().
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(""", html)
    assert 'id="player"' in html and "/v2/overlay/ws" in html
    second = await client.get(f"/overlay/{key}")
    assert second.headers["Content-Security-Policy"] != csp  # a fresh nonce per answer


@pytest.mark.parametrize("query, field", [("events=gift,raid", "events"), ("events=", "events"), ("chat=yes", "chat"),
                                          ("audio=2", "audio"), ("hold=0", "hold"), ("hold=61", "hold"),
                                          ("lang=de", "lang"), ("rehearsal=true", "rehearsal")])
async def test_bad_page_options_are_422_naming_the_option(client, streamer, query, field) -> None:
    key = await overlay_key(client, streamer)
    resp = await client.get(f"/overlay/{key}?{query}")
    assert resp.status == 422
    assert list((await resp.json())["fields"]) == [field]


async def test_option_edges_are_accepted(client, streamer) -> None:
    key = await overlay_key(client, streamer)
    for query in ("hold=1", "hold=60", "events=gift,follow,subscribe,share,like,viewer_join", "chat=0&audio=1",
                  "rehearsal=1"):
        assert (await client.get(f"/overlay/{key}?{query}")).status == 200, query


async def test_unknown_keys_get_404_before_any_upgrade(client) -> None:
    for path in ("/overlay/" + "A" * 32, "/overlay/short", "/v2/overlay/ws?key=" + "A" * 32, "/v2/overlay/ws"):
        resp = await client.get(path)
        assert resp.status == 404 and await resp.json() == {"detail": "not found", "code": "not_found"}, path


async def test_several_overlays_get_the_app_frames_without_replacing_the_app(client, streamer) -> None:
    key = await overlay_key(client, streamer)
    app_ws = await client.ws_connect(f"/v2/ws?token={streamer}&demo=0")
    await recv_type(app_ws, "status")
    overlays = [await client.ws_connect(f"/v2/overlay/ws?key={key}") for _ in range(3)]
    await simulate(client, streamer)
    app_gift = await recv_type(app_ws, "gift")
    for ws in overlays:
        assert await recv_type(ws, "gift") == app_gift
    health = await (await client.get("/health")).json()
    assert health["ws_clients"] == 1  # the overlays are not app sockets
    assert sample_sum(await scrape(client), "ttboost_open_sockets", kind="overlay") == 3
    # Only ping: anything else is an error frame and the socket stays.
    await overlays[0].send_json({"action": "ping"})
    assert "seq" not in await recv_type(overlays[0], "pong")
    await overlays[0].send_json({"action": "connect_tiktok"})
    await recv_type(overlays[0], "error", code="bad_request")
    await overlays[0].send_bytes(b"\x00")
    await recv_type(overlays[0], "error", code="bad_request")
    # A new app socket replaces the app's, not the overlays.
    app_again = await client.ws_connect(f"/v2/ws?token={streamer}&demo=0")
    assert (await closed(app_ws)).data == 4001
    await simulate(client, streamer, type="follow", user="Ann")
    assert (await recv_type(overlays[1], "follow"))["user"] == "Ann"
    for ws in (*overlays, app_again):
        await ws.close()


@pytest.mark.parametrize("how", ["rotate", "revoke"])
async def test_rotating_or_revoking_closes_the_open_overlays_with_4002(client, streamer, how) -> None:
    key = await overlay_key(client, streamer)
    ws = await client.ws_connect(f"/v2/overlay/ws?key={key}")
    if how == "rotate":
        await overlay_key(client, streamer)
    else:
        resp = await client.delete("/v2/overlay/key", headers=bearer(streamer))
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
    msg = await closed(ws)
    assert msg.type is aiohttp.WSMsgType.CLOSE and (msg.data, msg.extra) == (4002, "key_revoked")
    assert (await client.get(f"/v2/overlay/ws?key={key}")).status == 404
    assert (await client.delete("/v2/overlay/key", headers=bearer(streamer))).status == 200  # idempotent


async def test_an_overlay_of_a_user_without_licence_gets_license_expired(client) -> None:
    _, token = await make_user(client.server.app, plan="")
    key = await overlay_key(client, token)
    ws = await client.ws_connect(f"/v2/overlay/ws?key={key}")
    frame = await recv(ws)
    assert (frame["type"], frame["code"]) == ("error", "license_expired")
    assert (await closed(ws)).data == 4003


async def test_the_overlay_key_never_reaches_the_log(client, streamer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    key = await overlay_key(client, streamer)
    await client.get(f"/overlay/{key}")
    ws = await client.ws_connect(f"/v2/overlay/ws?key={key}")
    await ws.close()
    for _ in range(100):  # the socket's line is written when its handler has finished
        # aiohttp's own access log (raw paths) is silenced by logsetup in the server; ours is the one kept.
        text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ttboost"))
        if "/v2/overlay/ws" in text:
            break
        await asyncio.sleep(0.01)
    assert key not in text and "/overlay/***" in text and "key=***" in text


async def test_a_server_error_on_the_page_does_not_log_the_key(client, streamer, caplog) -> None:
    """The database gone (a real failure, nothing patched): the 500's traceback line names the route, not the key."""
    key = await overlay_key(client, streamer)
    await client.server.app[keys.DB].close()
    resp = await client.get(f"/overlay/{key}")
    assert resp.status == 500
    assert (await resp.json())["code"] == "internal_error"
    assert "unhandled error in GET /overlay/{key}" in caplog.text
    assert key not in caplog.text


async def test_a_licence_revoked_or_an_account_removed_reaches_open_overlays(make_client) -> None:
    client = await make_client(auth={"revocation_check_seconds": 0.05, "bcrypt_rounds": 4})
    app = client.server.app
    user_id, token = await make_user(app)
    ws = await client.ws_connect(f"/v2/overlay/ws?key={await overlay_key(client, token)}")
    await app[keys.DB].execute("UPDATE users SET token_version = token_version + 1 WHERE id = ?", (user_id,))
    await app[keys.DB].execute("UPDATE licenses SET status = 'revoked' WHERE user_id = ?", (user_id,))
    # A password change alone leaves the overlay open; the licence ends it, with the frame first.
    frame = await recv_type(ws, "error")
    assert frame["code"] == "license_expired" and (await closed(ws)).data == 4003
    _, other = await make_user(app, "other")
    ws = await client.ws_connect(f"/v2/overlay/ws?key={await overlay_key(client, other)}")
    await app[keys.DB].execute("DELETE FROM users WHERE username = 'other'")
    assert (await closed(ws)).data == 4002


async def test_a_key_rotated_by_another_worker_closes_this_workers_overlays(make_client) -> None:
    client = await make_client(auth={"revocation_check_seconds": 0.05, "bcrypt_rounds": 4})
    app = client.server.app
    user_id, token = await make_user(app)
    ws = await client.ws_connect(f"/v2/overlay/ws?key={await overlay_key(client, token)}")
    await ws.send_json({"action": "ping"})
    await recv_type(ws, "pong")
    # Another process wrote a new key: this one's close_overlays() never ran, the watch notices.
    await app[keys.DB].execute("UPDATE overlay_keys SET key_hash = ? WHERE user_id = ?", ("0" * 64, user_id))
    msg = await closed(ws)
    assert (msg.data, msg.extra) == (4002, "key_revoked")
