"""Reads reused until the database changes: keyed by SQLite's own change counter, which every commit moves."""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable, Final, Hashable, TypeVar

T = TypeVar("T")

# The first copy of the WAL-index header at the start of the -shm file (sqlite.org/walformat.html): its
# iChange counter and mxFrame move on every commit by any connection of any process (this server, the CLI),
# which is how SQLite itself tells a reader that its cached pages are stale.
_HEADER_BYTES: Final = 48
MAX_ENTRIES: Final = 10_000  # past this the cache starts over (one entry per account and kind of read)


class ReadCache:
    """Values loaded from the database, served again while no commit has happened since they were loaded.

    Only for a database in WAL mode on a file (the -shm file holds the counter); otherwise every get loads.
    The counter is read before the load: a commit that lands during the load makes the entry stale at once.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._entries: dict[Hashable, tuple[bytes, Any]] = {}

    def open(self, shm_path: str) -> None:
        try:
            # Read with pread, not mmap: a truncated file gives a short read here, not SIGBUS.
            self._fd = os.open(shm_path, os.O_RDONLY)
        except OSError:
            self._fd = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._entries.clear()

    def version(self) -> bytes | None:
        """The database's change counter now (a local page-cache read, ~1 µs), or None if there is none."""
        if self._fd is None:
            return None
        header = os.pread(self._fd, _HEADER_BYTES, 0)
        return header if len(header) == _HEADER_BYTES else None

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T]], *, bypass: bool = False) -> T:
        """The value cached under `key`, or `load()`'s (then cached) if the database changed since."""
        version = None if bypass else self.version()
        if version is None:
            return await load()
        entry = self._entries.get(key)
        if entry is not None and entry[0] == version:
            return entry[1]  # type: ignore[no-any-return]
        value = await load()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (version, value)
        return value
