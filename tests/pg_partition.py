"""A network partition between the app and the test PostgreSQL: a TCP proxy in front of the server's Unix socket
that, frozen, passes nothing in either direction and closes nothing (no RST, no FIN: what a dead host or a
dropped route looks like), and after a thaw delivers what it held, as TCP's retransmissions would. Muted, the
connections open now still reach the server but hear nothing back (the answer to a COMMIT lost on the way)."""

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
        self._answers: set[asyncio.Event] = set()  # per open connection: the server's bytes may pass
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = urlunsplit(self._url._replace(netloc=f"{self._url.username}@127.0.0.1:{port}", query=""))

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        self._open.set()

    def mute(self) -> None:
        for answers in self._answers:
            answers.clear()

    def unmute(self) -> None:
        for answers in self._answers:
            answers.set()

    async def close(self) -> None:
        self.thaw()
        self.unmute()
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
            answers = asyncio.Event()
            answers.set()
            self._answers.add(answers)
            try:
                await asyncio.gather(self._pump(client_reader, server_writer, self._open),
                                     self._pump(server_reader, client_writer, self._open, answers))
            finally:
                self._answers.discard(answers)
                server_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            client_writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *gates: asyncio.Event) -> None:
        while data := await reader.read(65536):
            for gate in gates:
                await gate.wait()
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
