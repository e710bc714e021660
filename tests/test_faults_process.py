"""Faults of the real server process (`python run.py`, tests/server_process.py): kill -9 and SIGTERM
in the middle of uploads and trigger writes, then restart and check every answered write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Final

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType

from tests.audio_samples import id3v1, make_mp3
from tests.helpers import assert_nothing_half_written, bearer
from tests.server_process import ServerProcess
from ttboost.config import ServerConfig
from ttboost.media.store import TEMP_PREFIX

SEED: Final = 20240607
PLAN: Final = "fault_test"
# A plan roomy enough that quota never answers for the storage: every refusal in these tests is a fault.
CONFIG_TOML: Final = f'[plans.{PLAN}]\nname = "Fault test"\nmax_triggers = 100000\nmax_sounds = 100000\n'
LOAD_ENV: Final = {"TTBOOST_LIMITS_UPLOAD_PER_MINUTE": "1000000", "TTBOOST_LIMITS_TRIGGERS_PER_MINUTE": "1000000",
                   "TTBOOST_LIMITS_TTS_PER_MINUTE": "1000000"}  # the last one also limits /v2/events/simulate
TIMEOUT: Final = aiohttp.ClientTimeout(total=10)

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


# --- kill -9 in the middle of writes -----------------------------------------------------------------------

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


# --- SIGTERM: graceful shutdown ---------------------------------------------------------------------------

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


# --- kill -9 under an event flood: seq never goes back ---------------------------------------------------------

async def _flood(session: aiohttp.ClientSession, server: ServerProcess, token: str, stop: asyncio.Event) -> None:
    """Simulated follows as fast as the server takes them, until the server is gone."""
    while not stop.is_set():
        try:
            async with session.post(server.url + "/v2/events/simulate", json={"type": "follow"},
                                    headers=bearer(token)) as resp:
                assert resp.status == 200, await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return


async def test_seq_after_a_kill_9_under_an_event_flood_exceeds_every_seq_seen(server: ServerProcess) -> None:
    await server.start()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        _, token = await account(session, server, "flooded")
        ws = await session.ws_connect(f"{server.ws_url}/v2/ws?token={token}")
        stop = asyncio.Event()
        floods = [asyncio.create_task(_flood(session, server, token, stop)) for _ in range(6)]
        seen: list[int] = []
        # Kill at an arbitrary point of the batched event log (it writes every second or 500 rows).
        kill_after = random.Random(SEED).randrange(700, 1500)
        while len(seen) < kill_after:
            msg = await ws.receive(timeout=10)
            assert msg.type is WSMsgType.TEXT, msg
            seen.append(json.loads(msg.data)["seq"])
        server.kill()
        stop.set()
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:  # what was already sent
            seen.append(json.loads(msg.data)["seq"])
        await asyncio.gather(*floods)
        assert seen == sorted(set(seen))

        await server.start()
        ws = await session.ws_connect(f"{server.ws_url}/v2/ws?token={token}")
        first = json.loads((await ws.receive(timeout=10)).data)
        assert first["type"] == "status" and first["seq"] > max(seen), (first, max(seen))
        async with session.post(server.url + "/v2/events/simulate", json={"type": "follow"},
                                headers=bearer(token)) as resp:
            assert resp.status == 200
        follow = json.loads((await ws.receive(timeout=10)).data)
        assert follow["type"] == "follow" and follow["seq"] > first["seq"]
        await ws.close()
    assert await server.terminate() == 0
