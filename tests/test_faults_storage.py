"""Faults of the storage: an unwritable media folder and a full disk give a clear error and leave nothing
half-written; event-log rows written while the disk is full are stored once it has room. Mounts (read-only
bind, a tiny tmpfs) need root and mount(8): without them those cases skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Final

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.audio_samples import id3v1, make_mp3
from tests.helpers import assert_nothing_half_written, bearer, make_user, eventually
from ttboost import keys
from ttboost.db import Database
from ttboost.pipeline.bus import EventBus

# --- the media folder refuses writes -----------------------------------------------------------------------

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


# --- disk full ------------------------------------------------------------------------------------------------

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


async def test_event_log_rows_of_a_full_disk_are_stored_once_it_has_room(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    reason = _run("mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(folder))
    if reason:
        pytest.skip(f"cannot mount a tmpfs here: {reason}")
    db = Database(folder / "t.db")
    try:
        await db.open()
        await db.execute("INSERT INTO users (username, created_at) VALUES ('u', 'x')")
        bus = EventBus(db, replay_events=10, replay_seconds=60, retry_seconds=(0.01, 0.05))
        await bus.channel(1)
        await bus.start()
        filler = folder / "filler"
        with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as out:  # ENOSPC ends it
            while True:
                out.write(b"\0" * 4096)
        for i in range(300):
            bus.publish(1, "chat", {"message": f"{i} " + "x" * 1000})
        assert "retrying in" in await eventually(lambda: caplog.text, lambda text: "retrying in" in text)
        assert bus.log.health() == {"waiting": 300, "dropped": 0}
        filler.unlink()
        assert await eventually(lambda: bus.log.waiting, lambda n: n == 0) == 0  # stored once it had room
        rows = await db.fetchall("SELECT seq FROM events ORDER BY id")
        assert [r["seq"] for r in rows] == list(range(1, 301))
        await bus.close()
    finally:
        await db.close()
        _umount(folder)
