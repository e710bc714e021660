"""Sound files on disk: <root>/sounds/<user id>/<name>, written atomically, looked up without escaping."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from pathlib import Path
from typing import Final, Protocol

from ..fileio import discard_file, publish_file, stage_file
from .names import is_sound_name

_LOGGER = logging.getLogger(__name__)

# Temp files start with a dot, so is_sound_name() never matches them: never listed, counted or served.
TEMP_PREFIX: Final = ".upload-"
TEMP_SUFFIX: Final = ".tmp"


class SoundReplica(Protocol):
    """Where every worker of a cluster finds the sounds (no shared disk); this worker's folder is its cache."""

    async def put(self, user_id: int, filename: str, data: bytes) -> None: ...

    async def get(self, user_id: int, filename: str) -> bytes | None: ...

    async def delete(self, user_id: int, filename: str) -> None: ...


class MediaStore:
    """The media folder. Lookups are synchronous (a few stat calls); writes and scans run in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sounds = self.root / "sounds"
        self.replica: SoundReplica | None = None  # cluster mode (cluster/media.py); None in one process

    async def fetch(self, user_id: int, filename: str) -> Path | None:
        """A sound missing here that the cluster has: copied into this folder, then served like any other."""
        if self.replica is None or not _is_user_id(user_id) or not is_sound_name(filename):
            return None
        data = await self.replica.get(user_id, filename)
        if data is None:
            return None
        await self.save(user_id, filename, data)
        return self.path_for(user_id, filename)

    def user_dir(self, user_id: int) -> Path:
        if not _is_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        return self.sounds / str(user_id)

    def path_for(self, user_id: int, filename: str) -> Path | None:
        """The file of an existing sound, or None for anything that is not a plain file with a sanitized name."""
        # The name check refuses "/", "\\", "..", hidden and temp files before the disk is touched.
        if not _is_user_id(user_id) or not is_sound_name(filename):
            return None
        candidate = self.sounds / str(user_id) / filename
        try:
            if candidate.is_symlink():
                return None
            real = candidate.resolve(strict=True)
            # Resolving also follows a symlinked user folder: the file must really be where its name says.
            expected = self.sounds.resolve(strict=True) / str(user_id) / filename
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if real != expected or not real.is_file():
            return None
        return real

    async def save(self, user_id: int, filename: str, data: bytes) -> None:
        """Writes the sound atomically (replacing one of the same name); on failure nothing is left behind."""
        _check_name(filename)  # before anything touches the disk
        tmp = await self.stage(user_id, data)
        try:
            await self.publish(tmp, filename)
        except BaseException:
            await self.discard(tmp)
            raise

    async def stage(self, user_id: int, data: bytes) -> Path:
        """Writes the bytes to a temp file in the user's folder (complete and synced, not yet visible)."""
        # Owner-only like every data file: the server serves sounds itself (spec §1, issue 9).
        return await asyncio.to_thread(stage_file, self.user_dir(user_id), data, prefix=TEMP_PREFIX,
                                       suffix=TEMP_SUFFIX)

    async def publish(self, tmp: Path, filename: str) -> None:
        """Renames a staged file to its sound name, replacing one of the same name."""
        _check_name(filename)
        await asyncio.to_thread(publish_file, tmp, filename)

    async def discard(self, tmp: Path) -> None:
        await asyncio.to_thread(discard_file, tmp)

    async def delete(self, user_id: int, filename: str) -> bool:
        """Removes the sound; False when there is no such sound."""
        return await asyncio.to_thread(self._delete, user_id, filename)

    def _delete(self, user_id: int, filename: str) -> bool:
        path = self.path_for(user_id, filename)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:  # a concurrent delete won
            return False
        return True

    async def cleanup_temp(self) -> int:
        """Removes temp files a crash left mid-upload; call at startup, before uploads are served."""
        count = await asyncio.to_thread(self._cleanup_temp)
        if count:
            _LOGGER.warning("removed %d unfinished upload(s) from %s", count, self.sounds)
        return count

    def _cleanup_temp(self) -> int:
        count = 0
        for path in self.sounds.glob(f"*/{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            with suppress(FileNotFoundError):
                path.unlink()
                count += 1
        return count


def _check_name(filename: str) -> None:
    if not is_sound_name(filename):
        raise ValueError(f"not a sanitized sound name: {filename!r}")


def _is_user_id(user_id: object) -> bool:
    return isinstance(user_id, int) and not isinstance(user_id, bool) and user_id >= 0
