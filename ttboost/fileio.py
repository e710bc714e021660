"""File writes that never leave half a file, and units of work that finish even when their caller is cancelled."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Awaitable, TypeVar

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")


def write_atomic(folder: Path, filename: str, data: bytes, *, prefix: str, suffix: str, mode: int = 0o644) -> None:
    """Blocking (run it in a thread). Temp file in the same folder, fsync, rename, fsync the folder: the final
    name only ever holds complete data, also after a crash; the temp file (prefix…suffix) is removed on error."""
    tmp = stage_file(folder, data, prefix=prefix, suffix=suffix, mode=mode)
    try:
        publish_file(tmp, filename)
    except BaseException:
        discard_file(tmp)
        raise


def stage_file(folder: Path, data: bytes, *, prefix: str, suffix: str, mode: int = 0o644) -> Path:
    """Blocking. Writes data, complete and on disk, to a new temp file in folder (removed again on error).

    The slow half of an atomic write, split off so that a caller can do it before taking a lock and only
    publish (rename) inside it."""
    folder.mkdir(parents=True, exist_ok=True)
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
