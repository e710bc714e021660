"""Sound API: upload by content, storage on disk and in rows, serving, quota, rate limit, list and delete."""

from __future__ import annotations

import asyncio
import io
import dataclasses
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.audio_samples import make_mp3, make_ogg, make_wav
from tests.conftest import make_config
from tests.helpers import bearer
from tests.test_ws import PLAN, register
from ttboost import keys, sounds
from ttboost.config import PlanConfig
from ttboost.media import MediaStore
from ttboost.fileio import publish_file

pytestmark = pytest.mark.both_backends  # storage behaviour must match on SQLite and PostgreSQL

ROSE = {"event_type": "gift", "condition_key": "gift_name", "condition_value": "Rose", "action": "play_sound"}
HTML = b"<!DOCTYPE html><html><head><title>x</title></head><body>" + b"<p>not audio</p>" * 200 + b"</body></html>"
JPEG = (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        + bytes(random.Random(7).randrange(256) for _ in range(3000)) + b"\xff\xd9")
NOISE = random.Random(42).randbytes(5000)


def form(data: bytes, filename: str = "clip.mp3", name: str | None = None) -> FormData:
    body = FormData()
    # A file object, not bytes: aiohttp warns (an error here) about raw bytes bodies over 1 MiB.
    body.add_field("file", io.BytesIO(data), filename=filename, content_type="application/octet-stream")
    if name is not None:
        body.add_field("name", name)
    return body


async def upload(client: TestClient, token: str, data: bytes, filename: str = "clip.mp3",
                 name: str | None = None, status: int = 200) -> dict[str, Any]:
    resp = await client.post("/v2/sounds/upload", data=form(data, filename, name), headers=bearer(token))
    body = await resp.json()
    assert resp.status == status, body
    return body


async def listed(client: TestClient, token: str) -> list[dict[str, Any]]:
    resp = await client.get("/v2/sounds/list", headers=bearer(token))
    assert resp.status == 200
    return (await resp.json())["sounds"]


def user_dir(client: TestClient, user_id: int) -> Path:
    return client.app[keys.MEDIA].sounds / str(user_id)


def on_disk(client: TestClient, user_id: int) -> list[str]:
    """Every entry of the user's folder, temp files included."""
    folder = user_dir(client, user_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def rows(client: TestClient, user_id: int) -> list[str]:
    found = await client.app[keys.DB].fetchall("SELECT filename FROM sounds WHERE user_id = ?", (user_id,))
    return sorted(r["filename"] for r in found)


async def assert_nothing_stored(client: TestClient, user_id: int) -> None:
    assert on_disk(client, user_id) == []
    assert await rows(client, user_id) == []
    assert not list(client.app[keys.MEDIA].root.rglob(".upload-*"))


def tiny_plan(tmp_path: Path, max_sounds: int, **sections: dict[str, Any]):
    config = make_config(tmp_path / "data", **sections)
    return dataclasses.replace(config, plans=(PlanConfig(PLAN, "Tiny", 10, max_sounds),))


@pytest.mark.parametrize(("make", "filename", "fmt", "ctype"), [
    (make_mp3, "rose.mp3", "mp3", "audio/mpeg"),
    (make_wav, "rose.wav", "wav", "audio/wav"),
    (make_ogg, "rose.ogg", "ogg", "audio/ogg"),
])
async def test_upload_and_download(make_client, make, filename: str, fmt: str, ctype: str) -> None:
    client = await make_client()
    user_id, token = await register(client)
    data = make(0.5)
    body = await upload(client, token, data, filename="rose.bin")  # the name's extension is the detected one
    assert body == {"status": "ok", "filename": filename, "size": len(data), "format": fmt,
                    "duration_ms": body["duration_ms"],
                    "url": f"http://testserver/static/sounds/{user_id}/{filename}"}
    assert 500 <= body["duration_ms"] <= 560

    resp = await client.get(URL(body["url"]).path)
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Content-Type"] == ctype and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Length"] == str(len(data)) and "Cache-Control" in resp.headers

    resp = await client.get(URL(body["url"]).path, headers={"Range": "bytes=0-99"})
    assert resp.status == 206 and await resp.read() == data[:100]
    assert resp.headers["Content-Range"] == f"bytes 0-99/{len(data)}"
    assert on_disk(client, user_id) == [filename] and await rows(client, user_id) == [filename]


@pytest.mark.parametrize("data", [HTML, JPEG, NOISE, b""], ids=["html", "jpeg", "random", "empty"])
async def test_not_audio_is_rejected_and_leaves_nothing(make_client, data: bytes) -> None:
    client = await make_client()
    user_id, token = await register(client)
    body = await upload(client, token, data, filename="fake.mp3", status=422)
    assert "file" in body["fields"]
    await assert_nothing_stored(client, user_id)


async def test_size_limit_edge(make_client) -> None:
    data = make_mp3(0.5)
    client = await make_client(limits={"max_sound_bytes": len(data) - 1})
    user_id, token = await register(client)
    body = await upload(client, token, data, status=413)
    assert body == {"detail": "file too large", "code": "file_too_large"}
    await assert_nothing_stored(client, user_id)


async def test_exactly_the_limit_is_accepted(make_client) -> None:
    data = make_mp3(0.5)
    client = await make_client(limits={"max_sound_bytes": len(data)})
    _, token = await register(client)
    assert (await upload(client, token, data))["size"] == len(data)


async def test_default_limit_streams_past_client_max_size(make_client) -> None:
    """~1 MiB works although the app's JSON body limit is 64 KiB; just over 1 MiB is 413."""
    client = await make_client()
    user_id, token = await register(client)
    near = make_wav(11.8)
    assert 1_000_000 < len(near) <= 1024 * 1024
    body = await upload(client, token, near, filename="long.wav")
    assert body["size"] == len(near)
    resp = await client.get(URL(body["url"]).path)
    assert await resp.read() == near

    over = make_wav(12.0)
    assert len(over) > 1024 * 1024
    assert (await upload(client, token, over, filename="over.wav", status=413))["detail"] == "file too large"
    assert on_disk(client, user_id) == ["long.wav"] and await rows(client, user_id) == ["long.wav"]


@pytest.mark.parametrize(("filename", "name"), [
    ("../../evil.mp3", None),
    ("..%2Fevil.mp3", None),
    ("x.mp3", "../../evil.mp3"),
    ("x.mp3", "..%2F..%2Fevil"),
])
async def test_names_are_sanitized(make_client, filename: str, name: str | None) -> None:
    client = await make_client()
    user_id, token = await register(client)
    body = await upload(client, token, make_mp3(0.3), filename=filename, name=name)
    assert body["filename"] == "evil.mp3"
    assert on_disk(client, user_id) == ["evil.mp3"]
    assert [p.name for p in client.app[keys.MEDIA].root.rglob("*") if p.is_file()] == ["evil.mp3"]


async def test_same_name_replaces_and_trigger_keeps_playing(make_client) -> None:
    client = await make_client()
    user_id, token = await register(client)
    first = await upload(client, token, make_mp3(0.3), name="rose")
    resp = await client.post("/v2/triggers/set", headers=bearer(token),
                             json={**ROSE, "action_params": {"sound_filename": first["filename"]}})
    assert resp.status == 200
    trigger = (await resp.json())["trigger"]

    new = make_mp3(1.0)
    second = await upload(client, token, new, name="rose")
    assert second["filename"] == first["filename"] == "rose.mp3" and second["url"] == first["url"]
    assert second["size"] == len(new) and second["duration_ms"] > first["duration_ms"]
    assert await rows(client, user_id) == ["rose.mp3"] and on_disk(client, user_id) == ["rose.mp3"]
    assert [s["size"] for s in await listed(client, token)] == [len(new)]
    assert await (await client.get(URL(second["url"]).path)).read() == new

    resp = await client.get("/v2/triggers/list", headers=bearer(token))
    [after] = (await resp.json())["triggers"]
    assert after["id"] == trigger["id"] and after["enabled"] is True
    assert after["action_params"]["sound_filename"] == "rose.mp3"


async def test_quota_counts_new_names_only(make_client, tmp_path: Path) -> None:
    client = await make_client(tiny_plan(tmp_path, 2))
    user_id, token = await register(client)
    await upload(client, token, make_mp3(0.3), name="one")
    await upload(client, token, make_mp3(0.3), name="two")
    body = await upload(client, token, make_mp3(0.3), name="three", status=403)
    assert body["detail"] == "sound limit reached" and body["code"] == "sound_limit_reached"
    # Another format under the same stem is another file, so another sound: refused too.
    assert (await upload(client, token, make_wav(0.3), name="two", status=403))["code"] == "sound_limit_reached"
    new = make_mp3(0.6)
    assert (await upload(client, token, new, name="two"))["size"] == len(new)  # replacing: allowed at the limit
    assert await rows(client, user_id) == ["one.mp3", "two.mp3"] == on_disk(client, user_id)


async def test_quota_holds_under_parallel_uploads(make_client, tmp_path: Path) -> None:
    client = await make_client(tiny_plan(tmp_path, 2, limits={"upload_per_minute": 100}))
    user_id, token = await register(client)
    data = make_mp3(0.3)
    results = await asyncio.gather(*(
        client.post("/v2/sounds/upload", data=form(data, name=f"s{i}"), headers=bearer(token)) for i in range(6)))
    assert sorted(r.status for r in results) == [200, 200, 403, 403, 403, 403]
    assert len(await rows(client, user_id)) == 2 and len(on_disk(client, user_id)) == 2


async def test_sixth_upload_in_a_minute_is_rate_limited(make_client) -> None:
    client = await make_client()
    _, token = await register(client)
    data = make_mp3(0.3)
    for i in range(5):
        await upload(client, token, data, name=f"s{i}")
    resp = await client.post("/v2/sounds/upload", data=form(data, name="s5"), headers=bearer(token))
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["detail"] == "too many requests"


async def test_list_newest_first(make_client) -> None:
    client = await make_client()
    user_id, token = await register(client)
    assert await listed(client, token) == []
    for name in ("a", "b", "c"):
        await upload(client, token, make_mp3(0.3), name=name)
    sounds = await listed(client, token)
    assert [s["filename"] for s in sounds] == ["c.mp3", "b.mp3", "a.mp3"]
    assert set(sounds[0]) == {"filename", "url", "size", "duration_ms", "format", "created_at"}
    assert sounds[0]["url"] == f"http://testserver/static/sounds/{user_id}/c.mp3"
    assert sounds[0]["created_at"].endswith("Z")


async def test_delete(make_client) -> None:
    client = await make_client()
    user_id, token = await register(client)
    body = await upload(client, token, make_mp3(0.3), name="ding")
    resp = await client.post("/v2/sounds/delete", json={"filename": "ding.mp3"}, headers=bearer(token))
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    await assert_nothing_stored(client, user_id)
    assert (await client.get(URL(body["url"]).path)).status == 404

    resp = await client.post("/v2/sounds/delete", json={"filename": "ding.mp3"}, headers=bearer(token))
    assert resp.status == 404
    assert await resp.json() == {"detail": "sound file not found", "code": "sound_not_found"}


@pytest.mark.parametrize("body", [{}, {"filename": "a.mp3\x00"}, {"filename": "a.mp3", "force": "maybe"},
                                  {"filename": "a.mp3", "force": 1}])
async def test_delete_body_is_validated(make_client, body: dict[str, Any]) -> None:
    client = await make_client()
    _, token = await register(client)
    resp = await client.post("/v2/sounds/delete", json=body, headers=bearer(token))
    assert resp.status == 422 and (await resp.json())["code"] == "validation_error"


async def test_delete_in_use_needs_force(make_client) -> None:
    client = await make_client()
    user_id, token = await register(client)
    await upload(client, token, make_mp3(0.3), name="rose")
    ids = []
    for gift in ("Rose", "Lion"):
        resp = await client.post("/v2/triggers/set", headers=bearer(token), json={
            **ROSE, "condition_value": gift, "action_params": {"sound_filename": "rose.mp3"}})
        ids.append((await resp.json())["trigger"]["id"])

    resp = await client.post("/v2/sounds/delete", json={"filename": "rose.mp3"}, headers=bearer(token))
    assert resp.status == 409
    assert await resp.json() == {"detail": "sound in use", "code": "sound_in_use", "trigger_ids": sorted(ids)}
    assert await rows(client, user_id) == ["rose.mp3"] == on_disk(client, user_id)

    resp = await client.post("/v2/sounds/delete", json={"filename": "rose.mp3", "force": True},
                             headers=bearer(token))
    assert resp.status == 200
    await assert_nothing_stored(client, user_id)
    resp = await client.get("/v2/triggers/list", headers=bearer(token))
    assert [t["enabled"] for t in (await resp.json())["triggers"]] == [False, False]
    assert client.app[keys.TRIGGERS].rules(user_id, "gift") == []  # the live pipeline stops playing it at once


async def test_delete_by_path(make_client) -> None:
    client = await make_client()
    user_id, token = await register(client)
    await upload(client, token, make_mp3(0.3), name="rose")
    resp = await client.post("/v2/triggers/set", headers=bearer(token),
                             json={**ROSE, "action_params": {"sound_filename": "rose.mp3"}})
    trigger_id = (await resp.json())["trigger"]["id"]

    resp = await client.delete("/v2/sounds/rose.mp3", headers=bearer(token))
    assert resp.status == 409 and (await resp.json())["trigger_ids"] == [trigger_id]
    resp = await client.delete("/v2/sounds/rose.mp3?force=1", headers=bearer(token))
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    await assert_nothing_stored(client, user_id)
    resp = await client.delete("/v2/sounds/rose.mp3", headers=bearer(token))
    assert resp.status == 404 and (await resp.json())["detail"] == "sound file not found"
    resp = await client.delete("/v2/sounds/..%2F..%2Fttboost.db", headers=bearer(token))
    assert resp.status == 404


async def test_other_users_sounds_are_invisible(make_client) -> None:
    client = await make_client()
    alice_id, alice = await register(client, "alice")
    _, bob = await register(client, "bob")
    await upload(client, alice, make_mp3(0.3), name="mine")
    assert await listed(client, bob) == []
    resp = await client.post("/v2/sounds/delete", json={"filename": "mine.mp3", "force": True}, headers=bearer(bob))
    assert resp.status == 404 and (await resp.json())["detail"] == "sound file not found"
    assert (await client.delete("/v2/sounds/mine.mp3?force=1", headers=bearer(bob))).status == 404
    resp = await client.post("/v2/triggers/set", headers=bearer(bob),
                             json={**ROSE, "action_params": {"sound_filename": "mine.mp3"}})
    assert resp.status == 404 and (await resp.json())["detail"] == "sound file not found"
    assert [s["filename"] for s in await listed(client, alice)] == ["mine.mp3"]
    assert on_disk(client, alice_id) == ["mine.mp3"]


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("POST", "/v2/sounds/upload", {"data": form(b"x")}),
    ("GET", "/v2/sounds/list", {}),
    ("POST", "/v2/sounds/delete", {"json": {"filename": "a.mp3"}}),
    ("DELETE", "/v2/sounds/a.mp3", {}),
])
async def test_unauthenticated(make_client, method: str, path: str, kwargs: dict[str, Any]) -> None:
    client = await make_client()
    for headers in ({}, bearer("not-a-token")):
        resp = await client.request(method, path, headers=headers, **kwargs)
        assert resp.status == 401
        assert await resp.json() == {"detail": "invalid token", "code": "invalid_token"}


async def test_crash_leftovers_are_removed_at_start(make_client, tmp_path: Path) -> None:
    folder = tmp_path / "data" / "media" / "sounds" / "1"
    folder.mkdir(parents=True)
    (folder / ".upload-abc.tmp").write_bytes(b"half")
    await make_client()
    assert list(folder.iterdir()) == []


async def _refuse(db, backend: str, operation: str) -> None:
    """From now on the database refuses that write to the sounds table (a real constraint, no mock)."""
    if backend == "sqlite":
        await db.execute(f"CREATE TEMP TRIGGER no_{operation} BEFORE {operation} ON sounds "
                         "BEGIN SELECT RAISE(ABORT, 'x'); END")
    else:
        await db.execute("CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql "
                         "AS 'BEGIN RAISE EXCEPTION ''x''; END'")
        await db.execute(f"CREATE TRIGGER no_{operation} BEFORE {operation} ON sounds "
                         "FOR EACH ROW EXECUTE FUNCTION refuse()")


async def _allow(db, backend: str, operation: str) -> None:
    await db.execute(f"DROP TRIGGER no_{operation}" + ("" if backend == "sqlite" else " ON sounds"))


async def test_failed_row_write_removes_a_new_file_only(make_client, storage_backend: str) -> None:
    """The file is renamed into place before the row is written; a failing row write takes a new file back
    out, but keeps a replacing one (the old row still names it)."""
    client = await make_client()
    user_id, token = await register(client)
    db = client.app[keys.DB]
    await upload(client, token, make_mp3(0.3), name="kept")
    await _refuse(db, storage_backend, "INSERT")
    await upload(client, token, make_mp3(0.3), name="new", status=500)
    assert await rows(client, user_id) == ["kept.mp3"] == on_disk(client, user_id)
    await _allow(db, storage_backend, "INSERT")

    await _refuse(db, storage_backend, "UPDATE")
    new = make_mp3(0.6)
    await upload(client, token, new, name="kept", status=500)
    assert await rows(client, user_id) == ["kept.mp3"] == on_disk(client, user_id)
    assert (user_dir(client, user_id) / "kept.mp3").read_bytes() == new
    assert not list(client.app[keys.MEDIA].root.rglob(".upload-*"))


class _GatedStore(MediaStore):
    """Holds the rename into place inside its thread until released, to cancel a request mid-unit."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()

    async def publish(self, tmp: Path, filename: str) -> None:
        def rename() -> None:
            self.entered.set()
            self.release.wait(5)
            publish_file(tmp, filename)

        await asyncio.to_thread(rename)


async def test_cancelled_mid_write_still_ends_consistent(make_client, tmp_path: Path) -> None:
    """A cancelled request cannot stop a thread that is renaming a file: the unit runs to its end."""
    client = await make_client()
    user_id, _ = await register(client)
    store = _GatedStore(tmp_path / "gated")
    task = asyncio.create_task(sounds.upload(client.app[keys.DB], store, user_id, make_mp3(0.3), "a.mp3", None,
                                             10, client.app[keys.CONFIG].limits))
    assert await asyncio.to_thread(store.entered.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    store.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await rows(client, user_id) == ["a.mp3"]
    assert store.path_for(user_id, "a.mp3") is not None
