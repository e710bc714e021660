"""The real app on a local port in a thread of its own, for schemathesis (whose calls block), and the envelope check.

Shared by tests/test_fuzz.py (a short run) and bench/fuzz.py (the long one).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Final, Mapping

from aiohttp import web

from tests.conftest import make_config
from tests.fake_live import ScriptedSource
from tests.fake_tts import FakeEngine
from tests.helpers import make_user
from ttboost.app import create_app

WEB_API_KEY: Final = "fuzz-web-api-key"
UNLIMITED: Final = 1_000_000  # requests a minute: the fuzzer should reach the handlers, not only 429
STARTUP_SECONDS: Final = 10.0
# Operations schemathesis cannot drive: a WebSocket upgrade is not a request/response exchange.
WEBSOCKET_TAG: Final = "websocket"


def fuzz_config(data_dir: Path, port: int) -> Any:
    return make_config(
        data_dir,
        server={"public_url": f"http://127.0.0.1:{port}"},
        auth={"web_issue_api_key": WEB_API_KEY},
        limits={"auth_per_minute": UNLIMITED, "upload_per_minute": UNLIMITED, "triggers_per_minute": UNLIMITED,
                "tts_per_minute": UNLIMITED},
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """create_app() served by AppRunner/TCPSite on 127.0.0.1 from a background thread's event loop.

    Fakes stand in for TikTok and edge-tts, so nothing leaves the machine. `headers` authenticate as a user
    with an active license and carry the Web-Api-Key of /v2/license/issue-web.
    """

    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._config = fuzz_config(data_dir, self.port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.headers: dict[str, str] = {}
        self.statuses: Counter[int] = Counter()  # every response the server sent, by status

    async def _count(self, _request: web.Request, response: web.StreamResponse) -> None:
        self.statuses[response.status] += 1

    def _run(self, coro_factory: Callable[[], Any]) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro_factory(), self._loop)
        return future.result(STARTUP_SECONDS)

    async def _start(self) -> None:
        app = create_app(self._config, live_source=ScriptedSource(), tts_engine=FakeEngine())
        app.on_response_prepare.append(self._count)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        _user_id, token = await make_user(app, "fuzzer")
        self.headers = {"Authorization": f"Bearer {token}", "Web-Api-Key": WEB_API_KEY}

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        try:
            self._run(self._start)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self._run(self._stop)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STARTUP_SECONDS)
            self._loop.close()


def envelope_problem(status: int, content_type: str, body: Any) -> str | None:
    """Why an error response is not the envelope {detail, code[, fields]} (spec §2), or None if it is."""
    if status < 400:
        return None
    if not content_type.startswith("application/json"):
        return f"{status} with Content-Type {content_type!r}, not JSON"
    if not isinstance(body, Mapping):
        return f"{status} body is not a JSON object: {body!r:.200}"
    for key in ("detail", "code"):
        if not isinstance(body.get(key), str) or not body[key]:
            return f"{status} body lacks a non-empty string {key!r}: {body!r:.200}"
    fields = body.get("fields")
    if fields is not None and not (isinstance(fields, Mapping) and all(
            isinstance(v, list) and all(isinstance(m, str) for m in v) for v in fields.values())):
        return f"{status} body has a malformed 'fields': {fields!r:.200}"
    if status == 422 and fields is None:
        return f"422 without 'fields': {body!r:.200}"
    return None


def envelope_check(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schemathesis check: every 4xx/5xx is {"detail", "code"[, "fields"]} (spec §2)."""
    body: Any = None
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.content
    content_type = (response.headers.get("content-type") or [""])[0]
    problem = envelope_problem(response.status_code, content_type, body)
    if problem:
        raise AssertionError(f"{case.operation.label}: {problem}")
    return None
