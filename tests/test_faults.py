"""Faults: kill -9 and SIGTERM mid-write, unwritable or full media storage, hostile WebSocket frames, 500 sockets.

The process tests run the real server (`python run.py`, tests/server_process.py); the others build the app
in-process through the factory. Mounts (read-only bind, a tiny tmpfs) need root and mount(8): without them
those cases skip, saying why.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Final

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient

from tests.audio_samples import make_mp3
from tests.fake_live import ScriptedSource
from tests.helpers import bearer, make_user
from tests.server_process import ServerProcess
from ttboost import keys
from ttboost.config import ServerConfig
from ttboost.media.store import TEMP_PREFIX
from ttboost.sockets import CLOSE_REPLACED
from ttboost.ws import MAX_CLIENT_MESSAGE

SEED: Final = 20240607
PLAN: Final = "fault_test"
# A plan roomy enough that quota never answers for the storage: every refusal in these tests is a fault.
CONFIG_TOML: Final = f'[plans.{PLAN}]\nname = "Fault test"\nmax_triggers = 100000\nmax_sounds = 100000\n'
LOAD_ENV: Final = {"TTBOOST_LIMITS_UPLOAD_PER_MINUTE": "1000000", "TTBOOST_LIMITS_TRIGGERS_PER_MINUTE": "1000000"}
TIMEOUT: Final = aiohttp.ClientTimeout(total=10)


# --- helpers ----------------------------------------------------------------------------------------------

def id3v1(title: str) -> bytes:
    """An ID3v1 tag (128 bytes at the end of an MP3): makes every upload's bytes unique, still valid MP3."""
    return b"TAG" + title.encode("ascii").ljust(30, b"\0") + b"\0" * 60 + b"2024" + b"\0" * 30 + b"\xff"


def media_files(media_root: Path) -> list[Path]:
    return [p for p in media_root.rglob("*") if p.is_file()] if media_root.exists() else []


def assert_nothing_half_written(media_root: Path) -> None:
    """No temp file (uploads: .upload-*.tmp, speech: .tmp-*) and no empty file anywhere under media/."""
    for path in media_files(media_root):
        assert not path.name.startswith("."), f"temp file left behind: {path}"
        assert path.stat().st_size > 0, f"empty file: {path}"


def check_database(db_path: Path, user_id: int) -> tuple[dict[str, int], dict[int, str]]:
    """Opens the stopped server's database directly: integrity, then the user's sounds and triggers."""
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        sounds = dict(con.execute("SELECT filename, size FROM sounds WHERE user_id = ?", (user_id,)).fetchall())
        triggers = dict(con.execute("SELECT id, condition_value FROM triggers WHERE user_id = ?",
                                    (user_id,)).fetchall())
    finally:
        con.close()
    return sounds, triggers


async def account(session: aiohttp.ClientSession, server: ServerProcess, username: str) -> tuple[int, str]:
    """A real account: key issued by the CLI (its own process), redeemed over HTTP; no LIVE watch on connect."""
    key = await server.issue_license(PLAN)
    async with session.post(server.url + "/v2/auth/redeem-license",
                            json={"username": username, "password": "secret-pw", "license_key": key}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    token = body["access_token"]
    async with session.post(server.url + "/v2/settings/update", json={"auto_connect": False},
                            headers=bearer(token)) as resp:
        assert resp.status == 200, await resp.text()
    return body["user_id"], token


@dataclass
class WriteLoad:
    """Uploads and trigger saves from several workers at once, recording exactly what was answered 200."""

    url: str
    token: str
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    # Small and large (up to ~200 KB): larger files keep a write and its fsync on the disk for longer.
    pool: list[bytes] = field(default_factory=lambda: [make_mp3(s) for s in (0.3, 0.7, 2.0, 6.0, 15.0, 25.0)])
    attempted: dict[str, bytes] = field(default_factory=dict)  # stored filename → bytes sent
    uploaded: dict[str, bytes] = field(default_factory=dict)  # answered 200
    attempted_values: set[str] = field(default_factory=set)
    triggers: dict[int, str] = field(default_factory=dict)  # id → condition_value, answered 200
    refused: list[str] = field(default_factory=list)  # any answer but 200, or an error before the stop
    in_flight: int = 0
    stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, session: aiohttp.ClientSession, uploaders: int, setters: int) -> None:
        self._tasks = [asyncio.create_task(self._uploads(session, w)) for w in range(uploaders)]
        self._tasks += [asyncio.create_task(self._trigger_sets(session, w)) for w in range(setters)]

    async def wait_for(self, uploads: int, triggers: int, min_seconds: float, timeout: float = 15.0) -> None:
        start = time.monotonic()
        while (len(self.uploaded) < uploads or len(self.triggers) < triggers
               or time.monotonic() - start < min_seconds):
            assert not self.refused, self.refused[:5]
            assert time.monotonic() - start < timeout, (len(self.uploaded), len(self.triggers))
            await asyncio.sleep(0.01)

    async def finish(self) -> None:
        """After the server is gone: every worker ends with its request refused by the closed port."""
        self.stopping = True
        done, pending = await asyncio.wait(self._tasks, timeout=15)
        for task in pending:
            task.cancel()
        assert not pending, "a worker hung after the server went away"
        for task in done:
            task.result()

    async def _request(self, session: aiohttp.ClientSession, path: str, **kwargs: Any) -> dict[str, Any] | None:
        self.in_flight += 1
        try:
            async with session.post(self.url + path, headers=bearer(self.token), **kwargs) as resp:
                body = await resp.json()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            if not self.stopping:
                self.refused.append(f"{path}: {exc!r}")
            return None
        finally:
            self.in_flight -= 1
        if status != 200:
            self.refused.append(f"{path}: {status} {body}")
            return None
        return body

    async def _uploads(self, session: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not self.stopping:
            name = f"w{worker}-{n}"
            n += 1
            payload = self.rng.choice(self.pool) + id3v1(name)
            self.attempted[f"{name}.mp3"] = payload
            form = aiohttp.FormData()
            form.add_field("file", payload, filename="clip.mp3", content_type="audio/mpeg")
            form.add_field("name", name)
            body = await self._request(session, "/v2/sounds/upload", data=form)
            if body is None:
                return
            assert body["filename"] == f"{name}.mp3" and body["size"] == len(payload)
            self.uploaded[body["filename"]] = payload

    async def _trigger_sets(self, session: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not self.stopping:
            value = f"t{worker}-{n}"
            n += 1
            self.attempted_values.add(value)
            body = await self._request(session, "/v2/triggers/set", json={
                "event_type": "chat", "condition_key": "message_contains", "condition_value": value,
                "action": "tts", "action_params": {"text_template": "{user}: {message}"}})
            if body is None:
                return
            self.triggers[body["trigger"]["id"]] = value


def check_disk_and_rows(load: WriteLoad, sounds_dir: Path, rows: dict[str, int], trigger_rows: dict[int, str]) -> None:
    """Every write answered 200 is there; everything there is whole and is what was sent for that name."""
    assert set(load.uploaded) <= set(rows), sorted(set(load.uploaded) - set(rows))
    assert set(rows) <= set(load.attempted)
    files = {p.name: p.read_bytes() for p in sounds_dir.iterdir()} if sounds_dir.exists() else {}
    assert set(rows) <= set(files), "a row names a missing file"
    for name, data in files.items():
        # A file without a row is possible (killed between rename and COMMIT), but never a partial one.
        assert data == load.attempted[name], f"{name} is not the bytes sent for it"
        if name in rows:
            assert rows[name] == len(data)
    for trigger_id, value in load.triggers.items():
        assert trigger_rows.get(trigger_id) == value
    assert set(trigger_rows.values()) <= load.attempted_values


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    config_file = tmp_path / "config.toml"
    config_file.write_text(CONFIG_TOML, encoding="utf-8")
    proc = ServerProcess(tmp_path / "data", config_file=config_file, env=LOAD_ENV)
    try:
        yield proc
    finally:
        proc.stop()


# --- 1. kill -9 in the middle of writes -------------------------------------------------------------------

def kill_mid_write(server: ServerProcess, load: WriteLoad, folder: Path, within: float = 2.0) -> int:
    """Runs in a thread: SIGKILLs the server the moment an upload's temp file exists, i.e. in the middle of
    writing a sound (or after `within` seconds); returns the number of requests in flight at the kill."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
            if any(e.name.startswith(TEMP_PREFIX) for e in entries):
                break
        time.sleep(0.0002)
    load.stopping = True  # a plain attribute: the workers read it on the loop after their request fails
    in_flight = load.in_flight
    server.kill()
    return in_flight


async def test_kill_9_mid_writes_keeps_every_answered_write(server: ServerProcess) -> None:
    await server.start()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        user_id, token = await account(session, server, "crashy")
        sounds_dir = server.data_dir / "media" / "sounds" / str(user_id)
        load = WriteLoad(server.url, token)
        load.start(session, uploaders=6, setters=4)
        await load.wait_for(uploads=20, triggers=20, min_seconds=1.0)
        in_flight = await asyncio.to_thread(kill_mid_write, server, load, sounds_dir)
        await load.finish()
    assert in_flight > 0, "the kill must land while requests are in flight"
    assert not load.refused, load.refused[:5]

    await server.start()  # same data dir; startup removes what the crash left mid-upload
    media = server.data_dir / "media"
    assert_nothing_half_written(media)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(server.url + "/v2/sounds/list", headers=bearer(token)) as resp:
            assert resp.status == 200
            listed = {s["filename"]: s for s in (await resp.json())["sounds"]}
        assert set(load.uploaded) <= set(listed)
        for name, sound in listed.items():
            async with session.get(sound["url"]) as resp:
                assert resp.status == 200, name
                assert await resp.read() == load.attempted[name], name
        async with session.get(server.url + "/v2/triggers/list", headers=bearer(token)) as resp:
            assert resp.status == 200
            listed_triggers = {t["id"]: t["condition_value"] for t in (await resp.json())["triggers"]}
        assert all(listed_triggers.get(i) == v for i, v in load.triggers.items())
    assert await server.terminate() == 0

    rows, trigger_rows = check_database(server.data_dir / "ttboost.db", user_id)
    assert set(rows) == set(listed) and trigger_rows == listed_triggers
    check_disk_and_rows(load, media / "sounds" / str(user_id), rows, trigger_rows)


# --- 2. SIGTERM: graceful shutdown ------------------------------------------------------------------------

async def test_sigterm_closes_sockets_1001_and_leaves_nothing_half_written(server: ServerProcess) -> None:
    await server.start()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        user_id, token = await account(session, server, "graceful")
        ws = await session.ws_connect(f"{server.ws_url}/v2/ws?token={token}")
        first = json.loads((await ws.receive(timeout=5)).data)
        assert first["type"] == "status" and first["state"] == "idle"

        async def close_frame() -> aiohttp.WSMessage:
            while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
                pass
            return msg

        closed = asyncio.create_task(close_frame())
        load = WriteLoad(server.url, token)
        load.start(session, uploaders=4, setters=2)
        await load.wait_for(uploads=5, triggers=5, min_seconds=0.3)
        load.stopping = True
        started = time.monotonic()
        exit_code = await server.terminate()
        elapsed = time.monotonic() - started
        await load.finish()
        msg = await asyncio.wait_for(closed, 5)
    assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.GOING_AWAY, msg
    assert exit_code == 0, server.log_tail()
    # Usually ~0.1 s. Once shutdown starts aiohttp ignores bytes still arriving (aio-libs/aiohttp#2298), so an
    # upload whose body was mid-way waits out shutdown_timeout and is cancelled unanswered, having written nothing.
    assert elapsed < ServerConfig().shutdown_timeout + 2.0, f"shutdown took {elapsed:.1f} s"
    assert not load.refused, load.refused[:5]
    # No restart: startup cleanup did not run, so not even a temp file may be left.
    media = server.data_dir / "media"
    assert_nothing_half_written(media)
    rows, trigger_rows = check_database(server.data_dir / "ttboost.db", user_id)
    check_disk_and_rows(load, media / "sounds" / str(user_id), rows, trigger_rows)
    wal = server.data_dir / "ttboost.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the database was not closed (WAL not checkpointed)"


# --- 3. the media folder refuses writes -------------------------------------------------------------------

def _run(*argv: str) -> str | None:
    """Runs a mount-type command; None when it worked, else the reason (for a skip)."""
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not installed"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    return None if done.returncode == 0 else f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}"


def _umount(path: Path) -> None:
    if _run("umount", str(path)) is not None:
        _run("umount", "-l", str(path))  # busy: detach now, the kernel frees it when the last file closes


Breaker = Callable[[Path, Path], Callable[[], None]]


def _file_instead_of_folder(folder: Path, tmp_path: Path) -> Callable[[], None]:
    """The user's folder is a regular file (a botched restore): works as root, which ignores mode bits."""
    aside = tmp_path / "moved-aside"
    folder.rename(aside)
    folder.write_bytes(b"not a folder")

    def restore() -> None:
        folder.unlink()
        aside.rename(folder)

    return restore


def _read_only_bind_mount(folder: Path, tmp_path: Path) -> Callable[[], None]:
    """The same folder mounted read-only over itself: EROFS stops root too."""
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    reason = _run("mount", "--bind", str(folder), str(folder))
    if reason:
        pytest.skip(f"cannot bind-mount here: {reason}")
    reason = _run("mount", "-o", "remount,ro,bind", str(folder))
    if reason:
        _umount(folder)
        pytest.skip(f"cannot remount read-only here: {reason}")
    return lambda: _umount(folder)


def _no_write_permission(folder: Path, tmp_path: Path) -> Callable[[], None]:
    """chmod 0o500: the plain case, but root's writes ignore mode bits, so it only means something as a user."""
    if os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not stop root (the other cases cover it)")
    folder.chmod(0o500)
    return lambda: folder.chmod(0o755)


STORAGE_FAILED: Final = {"detail": "could not store the file", "code": "storage_failed"}


async def _upload(client: TestClient, token: str, data: bytes, name: str) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="clip.mp3", content_type="audio/mpeg")
    form.add_field("name", name)
    return await client.post("/v2/sounds/upload", data=form, headers=bearer(token))


async def _listed(client: TestClient, token: str) -> list[str]:
    resp = await client.get("/v2/sounds/list", headers=bearer(token))
    assert resp.status == 200
    return [s["filename"] for s in (await resp.json())["sounds"]]


@pytest.mark.parametrize(("breaker", "old_sound_stays"), [
    (_file_instead_of_folder, False),
    (_read_only_bind_mount, True),
    (_no_write_permission, True),
])
async def test_unwritable_media_folder_is_a_clear_error(make_client, tmp_path: Path, breaker: Breaker,
                                                        old_sound_stays: bool) -> None:
    client = await make_client(limits={"upload_per_minute": 100})
    user_id, token = await make_user(client.app)
    kept = make_mp3(0.3)
    assert (await _upload(client, token, kept, "kept")).status == 200
    folder = client.app[keys.MEDIA].user_dir(user_id)
    before = sorted(folder.iterdir())
    restore = breaker(folder, tmp_path)
    try:
        resp = await _upload(client, token, make_mp3(0.4), "new")
        assert resp.status == 500 and await resp.json() == STORAGE_FAILED
        assert await _listed(client, token) == ["kept.mp3"]  # no row
        if old_sound_stays:
            assert sorted(folder.iterdir()) == before  # no new file, no temp file
            sound = await client.get(f"/static/sounds/{user_id}/kept.mp3")
            assert sound.status == 200 and await sound.read() == kept
            # A delete the folder refuses keeps the row, so list and disk still agree.
            resp = await client.post("/v2/sounds/delete", json={"filename": "kept.mp3"}, headers=bearer(token))
            assert resp.status == 500 and await resp.json() == STORAGE_FAILED
            assert await _listed(client, token) == ["kept.mp3"]
    finally:
        restore()
    assert sorted(folder.iterdir()) == before
    assert_nothing_half_written(client.app[keys.MEDIA].root)
    # Repaired without a restart: the same upload now works.
    assert (await _upload(client, token, make_mp3(0.4), "new")).status == 200
    assert sorted(await _listed(client, token)) == ["kept.mp3", "new.mp3"]


# --- 3b. disk full ----------------------------------------------------------------------------------------

TMPFS_BYTES: Final = 128 * 1024  # 32 pages of 4 KiB: six 16 KiB sounds fit, the seventh is cut mid-write


async def test_disk_full_is_507_and_nothing_half_written(make_client, tmp_path: Path) -> None:
    sounds_dir = tmp_path / "data" / "media" / "sounds"
    sounds_dir.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    reason = _run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(sounds_dir))
    if reason:
        pytest.skip(f"cannot mount a tmpfs here: {reason}")
    try:
        client = await make_client(limits={"upload_per_minute": 1000})
        user_id, token = await make_user(client.app)
        clip = make_mp3(2.0)
        sent: dict[str, bytes] = {}
        for n in range(20):
            data = clip + id3v1(f"s{n}")
            stat = os.statvfs(sounds_dir)
            free = stat.f_bavail * stat.f_frsize
            resp = await _upload(client, token, data, f"s{n}")
            if resp.status != 200:
                break
            sent[f"s{n}.mp3"] = data
        else:
            pytest.fail("the tmpfs never filled up")
        assert resp.status == 507
        assert await resp.json() == {"detail": "could not store the file: no space left", "code": "storage_full"}
        assert 0 < free < len(data), "the failing write should have been cut off part-way"
        assert len(sent) >= 3
        # Nothing of the failed upload: no row, no file, no temp file; everything else whole.
        listed = await _listed(client, token)
        assert sorted(listed) == sorted(sent)
        folder = sounds_dir / str(user_id)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == sent
        # The server still serves, and recovers once space is freed.
        health = await client.get("/health")
        assert health.status == 200 and (await health.json())["db"] == "ok"
        first = sorted(sent)[0]
        sound = await client.get(f"/static/sounds/{user_id}/{first}")
        assert await sound.read() == sent[first]
        resp = await client.post("/v2/sounds/delete", json={"filename": first}, headers=bearer(token))
        assert resp.status == 200
        assert (await _upload(client, token, data, f"s{n}")).status == 200
        assert (folder / f"s{n}.mp3").read_bytes() == data
    finally:
        _umount(sounds_dir)


# --- 4. hostile WebSocket frames --------------------------------------------------------------------------

async def next_frame(ws: aiohttp.ClientWebSocketResponse, type_: str) -> dict[str, Any]:
    """The next frame of a type, skipping status frames; anything else fails."""
    while True:
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if frame["type"] == type_:
            return frame
        assert frame["type"] == "status", frame


async def assert_socket_works(client: TestClient, token: str) -> None:
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await ws.send_json({"action": "ping"})
    await next_frame(ws, "pong")
    await ws.close()


async def wait_no_sockets(client: TestClient, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        body = await (await client.get("/health")).json()
        if body["ws_clients"] == 0:
            return
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.01)


@pytest.fixture
async def ws_client(make_client) -> tuple[TestClient, str]:
    client = await make_client(live_source=ScriptedSource())
    user_id, token = await make_user(client.app)
    await client.app[keys.SETTINGS].update(user_id, {"auto_connect": False})
    return client, token


async def test_thousands_of_bad_messages_each_get_an_error_and_the_socket_stays(ws_client) -> None:
    client, token = ws_client
    rng = random.Random(SEED)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    junk = ["", "{", "[]", "null", "1", '"x"', "{}", '{"action": 5}', '{"action": "fly"}',
            '{"action": "resume", "since": "x"}', '{"action": "connect_tiktok", "username": 7}']
    count = 3000
    # One burst without reading: many messages arrive in one read, and the replies must not count the client
    # as too slow (the reader waits for them to drain instead).
    for i in range(count):
        if i % 3 == 0:
            await ws.send_bytes(rng.randbytes(rng.randint(0, 64)))
        elif i % 3 == 1:
            await ws.send_str(rng.choice(junk))
        else:
            await ws.send_str("".join(chr(rng.randint(32, 0x24F)) for _ in range(rng.randint(1, 40))))
    await ws.send_json({"action": "ping"})
    for _ in range(count):
        assert (await next_frame(ws, "error"))["code"] == "bad_request"
    await next_frame(ws, "pong")
    await ws.close()


async def test_message_under_the_limit_is_read_at_the_limit_closes_1009(ws_client) -> None:
    client, token = ws_client
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    # aiohttp's max_msg_size is exclusive: the largest message read is one byte under 64 KiB.
    await ws.send_str("x" * (MAX_CLIENT_MESSAGE - 1))
    assert (await next_frame(ws, "error"))["code"] == "bad_request"
    await ws.send_str("x" * MAX_CLIENT_MESSAGE)
    msg = await ws.receive(timeout=5)
    while msg.type is WSMsgType.TEXT:
        msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.MESSAGE_TOO_BIG
    await ws.close()
    await wait_no_sockets(client)
    await assert_socket_works(client, token)


class RawSocket:
    """A hand-built client for frames aiohttp's own client will not produce (bad opcodes, lengths, UTF-8)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: random.Random) -> None:
        self.reader, self.writer, self.rng = reader, writer, rng

    @classmethod
    async def connect(cls, client: TestClient, path: str) -> RawSocket:
        rng = random.Random(SEED)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        key = base64.b64encode(rng.randbytes(16)).decode()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     .encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer, rng)

    def send(self, opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
             declared: int | None = None) -> None:
        """One masked client frame; `declared` puts another length in the header (and sends no payload)."""
        length = len(payload) if declared is None else declared
        head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
        if length < 126:
            head += bytes([0x80 | length])
        elif length < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = self.rng.randbytes(4)
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def close_code(self) -> int:
        """Reads the server's frames up to its close frame; answers it and returns its code."""
        while True:
            b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 5)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
            if b0 & 0x0F == 0x8:
                self.send(0x8, payload[:2])
                self.writer.close()
                return struct.unpack("!H", payload[:2])[0]


OP_CONT, OP_TEXT, OP_PING, OP_CLOSE = 0x0, 0x1, 0x9, 0x8
FRAME_FAULTS: Final = {
    "invalid UTF-8 text": ([(OP_TEXT, b'{"action": "\xff\xfe"}', {})], WSCloseCode.INVALID_TEXT),
    "reserved opcode": ([(0x3, b"x", {})], WSCloseCode.PROTOCOL_ERROR),
    "reserved bit without an extension": ([(OP_TEXT, b"{}", {"rsv": 0b100})], WSCloseCode.PROTOCOL_ERROR),
    "control frame over 125 bytes": ([(OP_PING, b"p" * 126, {})], WSCloseCode.PROTOCOL_ERROR),
    "fragmented control frame": ([(OP_PING, b"p", {"fin": False})], WSCloseCode.PROTOCOL_ERROR),
    "continuation without a start": ([(OP_CONT, b"x", {})], WSCloseCode.PROTOCOL_ERROR),
    "new message inside a fragmented one": ([(OP_TEXT, b"{", {"fin": False}), (OP_TEXT, b"}", {})],
                                            WSCloseCode.PROTOCOL_ERROR),
    "fragments adding up past the limit": ([(OP_TEXT, b"x" * 40_000, {"fin": False}),
                                            (OP_CONT, b"x" * 30_000, {})], WSCloseCode.MESSAGE_TOO_BIG),
    "header declaring a terabyte": ([(OP_TEXT, b"", {"declared": 1 << 40})], WSCloseCode.MESSAGE_TOO_BIG),
    "close with an invalid code": ([(OP_CLOSE, struct.pack("!H", 999), {})], WSCloseCode.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("fault", list(FRAME_FAULTS))
async def test_protocol_violations_close_with_their_code(ws_client, fault: str) -> None:
    client, token = ws_client
    frames, expected = FRAME_FAULTS[fault]
    raw = await RawSocket.connect(client, f"/v2/ws?token={token}")
    for opcode, payload, options in frames:
        raw.send(opcode, payload, **options)
    assert await raw.close_code() == expected
    await wait_no_sockets(client)
    await assert_socket_works(client, token)


# --- 5. 500 sockets at once -------------------------------------------------------------------------------

USERS: Final = 100
SOCKETS_PER_USER: Final = 5  # 500 handshakes at once


async def test_500_concurrent_sockets_open_and_close_cleanly(make_client) -> None:
    client = await make_client(live_source=ScriptedSource())
    app = client.app
    users = [await make_user(app, f"user{i:03d}") for i in range(USERS)]
    for user_id, _ in users:
        await app[keys.SETTINGS].update(user_id, {"auto_connect": False})
    await wait_no_sockets(client)
    # The app's own workers, the test client's keep-alive handler, this test. Counted, not compared as a set:
    # a worker waiting with asyncio.wait_for gets a new inner task on each round.
    baseline = len(asyncio.all_tasks())
    url = str(client.make_url("/v2/ws"))

    async def outcome(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str | None]:
        while (msg := await ws.receive(timeout=20)).type is WSMsgType.TEXT:
            pass
        return (msg.data, msg.extra) if msg.type is WSMsgType.CLOSE else (None, None)

    # The test client's session caps connections at 100 and a socket holds its connection: no cap here.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=TIMEOUT) as session:
        # Phase 1: 500 handshakes at once; per user the last one registered stays, the other four get 4001.
        sockets = await asyncio.gather(*(session.ws_connect(f"{url}?token={token}")
                                         for _, token in users for _ in range(SOCKETS_PER_USER)))
        readers = [asyncio.create_task(outcome(ws)) for ws in sockets]
        deadline = time.monotonic() + 15
        while ((await (await client.get("/health")).json())["ws_clients"] != USERS
               or sum(r.done() for r in readers) < USERS * (SOCKETS_PER_USER - 1)):
            assert time.monotonic() < deadline, sum(r.done() for r in readers)
            await asyncio.sleep(0.02)
        survivors = []
        for u in range(USERS):
            mine = list(zip(sockets, readers))[u * SOCKETS_PER_USER:(u + 1) * SOCKETS_PER_USER]
            replaced = [r.result() for _, r in mine if r.done()]
            assert replaced == [(CLOSE_REPLACED, "replaced")] * (SOCKETS_PER_USER - 1), (u, replaced)
            survivors += [ws for ws, r in mine if not r.done()]
        await asyncio.gather(*(ws.close() for ws in survivors))
        await asyncio.wait_for(asyncio.gather(*readers), 10)

        # Phase 2: churn: each user connects and closes at once, five times in a row, all users in parallel.
        async def churn(token: str) -> None:
            for _ in range(SOCKETS_PER_USER):
                ws = await session.ws_connect(f"{url}?token={token}")
                await ws.close()
                assert ws.close_code in (WSCloseCode.OK, CLOSE_REPLACED), ws.close_code

        await asyncio.wait_for(asyncio.gather(*(churn(token) for _, token in users)), 30)

    await wait_no_sockets(client)
    assert app[keys.LIVE].active_count() == 0
    # Every task a socket started (handler, writer, closer) is gone; nothing new outlives the sockets.
    deadline = time.monotonic() + 5
    while len(tasks := asyncio.all_tasks()) > baseline or any(t.get_name().startswith("ws-") for t in tasks):
        assert time.monotonic() < deadline, (baseline, sorted(t.get_name() for t in tasks))
        await asyncio.sleep(0.01)
