"""File writes that never leave half a file, and units of work that finish even when their caller is cancelled."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Awaitable, Final, TypeVar

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")


PRIVATE_FILE: Final = 0o600  # data files: the server alone reads them (it serves media itself)
PRIVATE_DIR: Final = 0o700


def make_private_dir(folder: Path) -> None:
    """Blocking. mkdir -p where every folder created is owner-only, whatever the umask (Path.mkdir gives the
    parents it creates the umask's default mode). Existing folders are left as the operator set them."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile by another task or process: theirs stands
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode passes through the umask, which could only take bits away


def create_private_file(path: Path) -> None:
    """Blocking. Creates path empty with mode 0600 unless it exists, so that whatever writes it later (SQLite,
    which gives its -wal and -shm files the database file's mode) starts from owner-only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    os.fchmod(fd, PRIVATE_FILE)
    os.close(fd)


def write_atomic(folder: Path, filename: str, data: bytes, *, prefix: str, suffix: str,
                 mode: int = PRIVATE_FILE) -> None:
    """Blocking (run it in a thread). Temp file in the same folder, fsync, rename, fsync the folder: the final
    name only ever holds complete data, also after a crash; the temp file (prefix…suffix) is removed on error."""
    tmp = stage_file(folder, data, prefix=prefix, suffix=suffix, mode=mode)
    try:
        publish_file(tmp, filename)
    except BaseException:
        discard_file(tmp)
        raise


def stage_file(folder: Path, data: bytes, *, prefix: str, suffix: str, mode: int = PRIVATE_FILE) -> Path:
    """Blocking. Writes data, complete and on disk, to a new temp file in folder (removed again on error).

    The slow half of an atomic write, split off so that a caller can do it before taking a lock and only
    publish (rename) inside it."""
    make_private_dir(folder)
    # Same folder as the target, so the later os.replace is a rename within one file system: readers see the
    # old file or the new one, never half of one.
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        with open(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())  # data on disk before the rename makes it visible
    except BaseException:
        discard_file(Path(name))
        raise
    return Path(name)


def publish_file(tmp: Path, filename: str) -> None:
    """Blocking. Renames a staged file to its final name in the same folder and makes the rename durable."""
    os.replace(tmp, tmp.parent / filename)
    _fsync_dir(tmp.parent)


def discard_file(tmp: Path) -> None:
    """Blocking. Removes a staged file that will not be published (already gone is fine)."""
    with suppress(FileNotFoundError):
        os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself survive a power cut (best effort: some file systems refuse it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


async def run_to_end(aw: Awaitable[_T]) -> _T:
    """Awaits a unit of file (and row) work to its end even when the caller is cancelled meanwhile (client gone,
    shutdown), then re-raises the cancellation. A thread cannot be stopped: returning early would let a
    rollback or close() run while the thread still renames or unlinks a file."""
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done():
            raise
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                continue  # cancelled again: still wait, the unit takes milliseconds
        if not task.cancelled() and task.exception() is not None:  # retrieved here, or asyncio logs it later
            _LOGGER.warning("a unit finished with an error after its caller was cancelled: %r", task.exception())
        raise
