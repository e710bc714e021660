"""The original backend's own tools, unchanged, against the real server process: its test_ws_connection.py does
blocking HTTP (legacy key login) and a plain `websockets` client on the returned ws_url."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from tests.server_process import ServerProcess


def _http(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def test_ws_connection(base: str, license_key: str) -> list[dict[str, Any]]:
    """What the seed's script does: probe, log in with the key, open ws_url, ping, read a few frames."""
    probe = _http("GET", base + "/")
    assert probe["status"] == "ok" and probe["service"] == "ttboost" and probe["version"]
    login = _http("POST", base + "/auth/login", {"license_key": license_key})
    assert login["status"] == "ok"
    assert isinstance(login["user_id"], str) and isinstance(login["ws_token"], str)
    assert login["expires_at"] > login["server_time"]  # ISO 8601 UTC strings compare in time order
    me = _http("GET", base + "/v2/auth/me", token=login["ws_token"])  # the ws_token is also a Bearer token
    assert str(me["id"]) == login["user_id"] and me["tts_volume"] == 100 and me["tts_enabled"] is True
    frames = []
    with connect(login["ws_url"], open_timeout=10) as ws:
        ws.send(json.dumps({"action": "ping"}))
        while not any(f["type"] in ("chat", "gift") for f in frames):  # the demo stream of a key-only account
            frames.append(json.loads(ws.recv(timeout=10)))
        ws.send(json.dumps({"action": "disconnect_tiktok"}))
        sent = len(frames)
        while not any(f["type"] == "status" for f in frames[sent:]):  # demo frames may come first
            frames.append(json.loads(ws.recv(timeout=10)))
    return frames


# Not collected as a test itself: it needs a server and a key, which the test below provides.
test_ws_connection.__test__ = False  # type: ignore[attr-defined]


async def test_the_seeds_ws_connection_script_works_unchanged(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"TTBOOST_LIMITS_DEMO_MIN_SECONDS": "0.05",
                                                   "TTBOOST_LIMITS_DEMO_MAX_SECONDS": "0.1"})
    try:
        await server.start()
        key = await server.issue_license("nova_streamer_one_mobile")
        frames = await asyncio.to_thread(test_ws_connection, server.url, key)
    finally:
        server.stop()
    assert frames[0]["type"] == "status" and frames[0]["state"] == "idle"
    assert any(f["type"] == "pong" for f in frames)
    assert frames[-1]["type"] == "status" and frames[-1]["state"] == "idle"  # disconnect_tiktok's answer
    seqs = [f["seq"] for f in frames if "seq" in f]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
