"""Headless Debian chromium driven over the DevTools protocol with aiohttp's WebSocket client (no extra library).

.ci/run installs the `chromium` package. Without it the browser tests skip locally, and fail under CI (CI set),
so that a CI machine that lost its browser cannot pass by skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Final

import aiohttp
import pytest

WIDTH, HEIGHT = 1920, 1080  # an OBS canvas
_START_SECONDS: Final = 20.0  # for chromium to open its DevTools port (a cold start on a loaded machine)
_CALL_SECONDS: Final = 10.0  # for one DevTools command
# Flags of a quiet, private, offline browser; autoplay as OBS allows it (no click before sound).
FLAGS: Final = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                "--autoplay-policy=no-user-gesture-required", "--mute-audio", f"--window-size={WIDTH},{HEIGHT}",
                "--remote-debugging-port=0", "--remote-allow-origins=*")


def binary() -> str:
    """The chromium executable, or the test is skipped (locally) / failed (CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install chromium; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must run the browser tests")
        pytest.skip(message)
    return found


class Page:
    """One DevTools session on the browser's first tab."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []  # console messages and exceptions, to show when a test fails
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, _CALL_SECONDS)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The expression's value in the page (promises awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 5.0) -> Any:
        """Polls until the expression is truthy (one that throws, e.g. while a page loads, is not yet); returns its
        value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()")
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"not true within {timeout} s: {expression}\nconsole: {self.console}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._ws.close()

    async def _read(self) -> None:
        async for msg in self._ws:
            data = json.loads(msg.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in data["params"]["args"]))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(data["params"]["exceptionDetails"]))


async def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    """The port chromium chose (it writes it to DevToolsActivePort in its profile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_SECONDS
    port_file = profile / "DevToolsActivePort"
    while loop.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"chromium exited with {process.returncode}")
        if port_file.exists():
            first = port_file.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"chromium opened no DevTools port within {_START_SECONDS} s")


async def _end_group(pgid: int) -> None:
    """Kills what is left of chromium's process group and waits until none of it remains (5 s at most)."""
    for _ in range(100):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:  # the group is empty
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def launch() -> AsyncIterator[Page]:
    """A fresh headless chromium (its own temporary profile) and a session on its tab; all gone afterwards."""
    executable = binary()
    with tempfile.TemporaryDirectory(prefix="ttboost-chromium-") as profile:
        # Its own process group: chromium's helpers (zygote, renderer, crashpad) may outlive the browser process and
        # still write into the profile while it is being removed; the whole group goes at the end.
        process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            port = await _devtools_port(Path(profile), process)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json()
                url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                page = Page(await http.ws_connect(url, max_msg_size=64 * 1024 * 1024))
                try:
                    await page.call("Runtime.enable")
                    await page.call("Page.enable")
                    await page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                                    deviceScaleFactor=1, mobile=False)
                    # What OBS composites: everything the page does not paint stays transparent.
                    await page.call("Emulation.setDefaultBackgroundColorOverride", color={"r": 0, "g": 0, "b": 0,
                                                                                          "a": 0})
                    yield page
                finally:
                    await page.close()
        finally:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
            await _end_group(process.pid)
