"""The real server as a child process (`python run.py`), for tests that need kill -9, SIGTERM and restarts."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final, Mapping

import aiohttp

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
JWT_SECRET: Final = "fault-test-secret-" + "y" * 40
START_TIMEOUT: Final = 30.0  # seconds for the process to answer /health (TikTokLive's import is the slow part)
CLI_TIMEOUT: Final = 30.0  # seconds for one management command
# Nothing listens on the discard port locally: anything that tries TikTok or edge-tts fails at once, offline.
CLOSED_URL: Final = "http://127.0.0.1:9"


def free_port() -> int:
    """A port the kernel just handed out; the tiny race with other processes is acceptable in tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One `python run.py` on a data dir of its own; start() again after kill()/terminate() restarts it on the
    same data. Output goes to a log file (a pipe nobody reads would fill and block the server)."""

    def __init__(self, data_dir: Path, *, config_file: Path | None = None,
                 env: Mapping[str, str] | None = None, nofile: int | None = None) -> None:
        self.data_dir = data_dir
        self.config_file = config_file
        self.port = free_port()
        self.log_path = data_dir.parent / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._extra_env = dict(env or {})
        self._nofile = nofile  # the child's open-file limit (soft and hard), as `ulimit -n` would set it

    @property
    def cwd(self) -> Path:
        """The working directory: beside the data dir, never the repository (a developer's .env stays out)."""
        return self.data_dir.parent

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        # The caller's TTBOOST_* and the seed's legacy names must not leak into the child.
        legacy = {"ENV", "SERVER_HOST", "TTS_BASE_URL", "WEB_ISSUE_API_KEY", "WEB_ALLOWED_PLANS", "SIGN_API_KEY",
                  "DATABASE_URL"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTBOOST_") and k not in legacy}
        env.update({
            "PYTHONUNBUFFERED": "1",
            "TTBOOST_SERVER_HOST": "127.0.0.1",
            "TTBOOST_SERVER_PORT": str(self.port),
            "TTBOOST_STORAGE_DATA_DIR": str(self.data_dir),
            "TTBOOST_AUTH_JWT_SECRET": JWT_SECRET,
            "TTBOOST_AUTH_BCRYPT_ROUNDS": "4",
            "TTBOOST_TTS_REFRESH_VOICES": "false",
            "TTBOOST_TTS_EDGE_WSS_URL": "ws://127.0.0.1:9",
            "TTBOOST_TIKTOK_APP_URL": CLOSED_URL,
            "TTBOOST_TIKTOK_WEBCAST_URL": CLOSED_URL + "/webcast",
            "TTBOOST_TIKTOK_SIGN_API_URL": CLOSED_URL,
        })
        env.update(self._extra_env)
        return env

    def _argv(self, *args: str) -> list[str]:
        config = ["--config", str(self.config_file)] if self.config_file else []
        return [sys.executable, str(REPO_ROOT / "run.py"), *config, *args]

    async def start(self) -> None:
        """Starts the server and returns once /health answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._argv(), cwd=self.cwd, env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._limits)
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode} at start:\n{self.log_tail()}")
                try:
                    async with session.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not answer /health within {START_TIMEOUT} s:\n{self.log_tail()}")

    def _limits(self) -> None:
        if self._nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self._nofile, self._nofile))

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all, like a power cut for the process (not for the disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    async def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and the exit code; waits in a thread so the test's own sockets keep being served."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server still running {timeout} s after SIGTERM:\n{self.log_tail()}") from None

    async def cli(self, *args: str) -> str:
        """Runs a management command on the same data (and config) as the server; returns its stdout."""
        done = await asyncio.to_thread(subprocess.run, self._argv(*args), cwd=self.cwd, env=self.env(),
                                       capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"run.py {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    async def issue_license(self, plan: str, days: int = 30) -> str:
        [key] = (await self.cli("license", "issue", "--plan", plan, "--days", str(days))).split()
        return key

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        """Cleanup for finally blocks: whatever state it is in, the process is gone afterwards."""
        self.kill()
