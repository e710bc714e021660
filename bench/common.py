"""What every benchmark shares: the server as a child process, users made by direct inserts, figures, results."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final, Iterable, Mapping

import aiohttp

REPO: Final = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

RESULTS_DIR: Final = REPO / "bench" / "results"
JWT_SECRET: Final = "bench-secret-" + "b" * 40  # ≥ 32 characters, as the config requires
PLAN: Final = "nova_streamer_duo"  # the plan with 100 triggers
HEALTH_TIMEOUT: Final = 15.0  # seconds a server gets to answer /health before the benchmark fails
STOP_TIMEOUT: Final = 10.0  # seconds a server gets to exit after SIGINT before it is killed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted list; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of durations given in seconds, in milliseconds, rounded to µs."""
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p90_ms": round(percentile(ms, 90), 3),
            "p99_ms": round(percentile(ms, 99), 3), "max_ms": round(max(ms), 3) if ms else float("nan"),
            "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan")}


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def maps_library(pid: int, fragment: str) -> bool:
    """Whether a shared library whose path contains `fragment` is mapped into the process (e.g. a C extension)."""
    return any(fragment in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_result(name: str, data: Mapping[str, Any]) -> Path:
    """bench/results/<name>.json (git-ignored), and the figures on stdout."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return path


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    import aiohttp as _aiohttp

    return {"python": sys.version.split()[0], "aiohttp": _aiohttp.__version__, "cpus": os.cpu_count(),
            "cpu_model": model, "platform": sys.platform,
            # Other processes on the machine skew every figure: the load average says how busy it was.
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}


def server_tree() -> Path:
    """The checkout whose run.py the benchmarks start: this one, or BENCH_SERVER_TREE (e.g. an older commit
    exported with `git archive`, to measure before and after side by side with the same benchmark code)."""
    return Path(os.environ.get("BENCH_SERVER_TREE", REPO))


class Server:
    """`python run.py` (or another script) as a child process on 127.0.0.1, configured by TTBOOST_* variables.

    Its log goes to a file (a pipe nobody reads would block it); its data directory is a fresh temp dir.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, data_dir: Path | None = None,
                 script: str = "run.py", tree: Path | None = None) -> None:
        self._script = script
        self._tree = tree or server_tree()
        self._tmp = tempfile.TemporaryDirectory(prefix="ttboost-bench-") if data_dir is None else None
        self.data_dir = Path(self._tmp.name) if self._tmp is not None else data_dir
        assert self.data_dir is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "server.log"
        self.env = {
            **os.environ,
            "TTBOOST_SERVER_HOST": "127.0.0.1",
            "TTBOOST_SERVER_PORT": str(self.port),
            "TTBOOST_STORAGE_DATA_DIR": str(self.data_dir / "data"),
            "TTBOOST_AUTH_JWT_SECRET": JWT_SECRET,
            "TTBOOST_TTS_REFRESH_VOICES": "false",  # the live voice list is on the internet
            # Nothing may leave the machine: speech goes to a closed local port unless a benchmark sets its fake.
            "TTBOOST_TTS_EDGE_WSS_URL": f"ws://127.0.0.1:{free_port()}/edge/v1",
            "TTBOOST_TIKTOK_SIGN_API_URL": "http://127.0.0.1:9/",
            "TTBOOST_TIKTOK_APP_URL": "http://127.0.0.1:9/",
            "TTBOOST_TIKTOK_WEBCAST_URL": "http://127.0.0.1:9/webcast",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.data_dir / "data" / "ttboost.db"

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, self._script], cwd=self._tree, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    async def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> float:
        """Polls /health every 5 ms; returns seconds from spawn to the first 200."""
        assert self.proc is not None
        deadline = time.perf_counter() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with session.get(self.url + "/health") as resp:
                        if resp.status == 200:
                            return time.perf_counter() - self.spawned_at
                except aiohttp.ClientError:
                    pass
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"server not healthy after {timeout} s:\n{self.log_tail()}")
                await asyncio.sleep(0.005)

    async def start(self) -> float:
        self.spawn()
        return await self.wait_healthy()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def insert_users(db_path: Path, usernames: Iterable[str], *, settings: Mapping[str, Any] | None = None,
                 plan: str = PLAN, days: int = 30) -> list[int]:
    """Users with an active license, by direct inserts into the running server's database (WAL: safe).

    No password: the benchmarks use tokens signed with the configured secret (see tokens()), so creating
    a thousand users costs milliseconds instead of a thousand bcrypt hashes.
    """
    from ttboost.security import generate_license_key

    now = datetime.now(timezone.utc)
    settings_json = json.dumps(dict(settings or {}))
    ids: list[int] = []
    conn = sqlite3.connect(db_path, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for name in usernames:
            cur = conn.execute("INSERT INTO users (username, settings, created_at) VALUES (?, ?, ?)",
                               (name, settings_json, _iso(now)))
            user_id = int(cur.lastrowid)
            conn.execute("INSERT INTO licenses (key, plan, status, issued_at, expires_at, user_id)"
                         " VALUES (?, ?, 'active', ?, ?, ?)",
                         (generate_license_key(), plan, _iso(now), _iso(now + timedelta(days=days)), user_id))
            ids.append(user_id)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return ids


async def insert_users_pg(database_url: str, usernames: Iterable[str], *, settings: Mapping[str, Any] | None = None,
                          plan: str = PLAN, days: int = 30) -> list[int]:
    """insert_users for a cluster's PostgreSQL database (the workers have made the schema): one transaction."""
    import asyncpg

    from ttboost.security import generate_license_key

    now = datetime.now(timezone.utc)
    settings_json = json.dumps(dict(settings or {}))
    conn = await asyncpg.connect(database_url)
    ids: list[int] = []
    try:
        async with conn.transaction():
            for name in usernames:
                user_id = await conn.fetchval("INSERT INTO users (username, settings, created_at)"
                                              " VALUES ($1, $2, $3) RETURNING id", name, settings_json, _iso(now))
                await conn.execute("INSERT INTO licenses (key, plan, status, issued_at, expires_at, user_id)"
                                   " VALUES ($1, $2, 'active', $3, $4, $5)", generate_license_key(), plan,
                                   _iso(now), _iso(now + timedelta(days=days)), user_id)
                ids.append(int(user_id))
    finally:
        await conn.close()
    return ids


def tokens(user_ids: Iterable[int]) -> list[str]:
    """Bearer tokens the server accepts (same secret, token_version 0)."""
    from ttboost.security import TokenService

    service = TokenService(JWT_SECRET, 24 * 3600)
    return [service.issue(user_id, 0) for user_id in user_ids]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
