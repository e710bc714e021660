"""Cluster mode as operators run it: three `python run.py` workers, one PostgreSQL, one NATS server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.audio_samples import make_mp3
from tests.helpers import eventually
from tests.server_process import ServerProcess

PLAN = "nova_streamer_one_mobile"


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json()


async def _workers_seen(http: aiohttp.ClientSession, worker: ServerProcess) -> int:
    return (await _json(http, "GET", worker.url + "/health"))[1]["cluster"]["workers"]


async def test_three_workers_share_accounts_and_sounds_and_leave_the_registry(tmp_path: Path, pg_url: str,
                                                                              nats_url: str) -> None:
    workers = [ServerProcess(tmp_path / name / "data", env={
        "TTBOOST_STORAGE_DATABASE_URL": pg_url, "TTBOOST_CLUSTER_NATS_URL": nats_url,
        "TTBOOST_CLUSTER_WORKER_ID": name, "TTBOOST_CLUSTER_LEASE_SECONDS": "1"}) for name in ("w1", "w2", "w3")]
    for worker in workers:
        worker.data_dir.parent.mkdir(parents=True)
    try:
        await asyncio.gather(*(worker.start() for worker in workers))
        w1, w2, w3 = workers
        key = await w1.issue_license(PLAN)  # the CLI, on the cluster's database
        async with aiohttp.ClientSession() as http:
            for worker in workers:
                assert await _workers_seen(http, worker) == 3
            status, body = await _json(http, "POST", w2.url + "/v2/auth/redeem-license",
                                       json={"username": "streamer", "password": "secret-pw", "license_key": key})
            assert status == 200
            status, login = await _json(http, "POST", w3.url + "/v2/auth/login",
                                        json={"username": "streamer", "password": "secret-pw"})
            assert status == 200 and login["user_id"] == body["user_id"]
            auth = {"Authorization": f"Bearer {login['access_token']}"}
            form = aiohttp.FormData()
            clip = make_mp3(0.3)
            form.add_field("file", clip, filename="rose.mp3", content_type="audio/mpeg")
            status, sound = await _json(http, "POST", w1.url + "/v2/sounds/upload", data=form, headers=auth)
            assert status == 200
            path = sound["url"].split("/static/", 1)[1]
            async with http.get(f"{w3.url}/static/{path}") as resp:  # another process, another data folder
                assert resp.status == 200 and await resp.read() == clip

            w2.kill()  # kill -9: its registry entry ends with its lease
            assert await eventually(lambda: _workers_seen(http, w1), lambda n: n == 2) == 2
            assert await w3.terminate() == 0  # a graceful stop leaves the registry at once
            assert await _workers_seen(http, w1) == 1
    finally:
        for worker in workers:
            worker.kill()
