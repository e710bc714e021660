"""A network partition between the app and the test PostgreSQL: a TCP proxy in front of the server's Unix socket
that, frozen, passes nothing in either direction and closes nothing (no RST, no FIN: what a dead host or a
dropped route looks like), and after a thaw delivers what it held, as TCP's retransmissions would."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit


class Partition:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        folder = Path(parse_qs(parts.query)["host"][0])
        self._socket = str(next(folder.glob(".s.PGSQL.*")))
        self._url = parts
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = urlunsplit(self._url._replace(netloc=f"{self._url.username}@127.0.0.1:{port}", query=""))

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        self._open.set()

    async def close(self) -> None:
        self.thaw()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._open.wait()  # a connect during the partition is never answered
            server_reader, server_writer = await asyncio.open_unix_connection(self._socket)
            try:
                await asyncio.gather(self._pump(client_reader, server_writer), self._pump(server_reader, client_writer))
            finally:
                server_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            client_writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._open.wait()
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
