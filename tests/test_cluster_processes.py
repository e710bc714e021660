"""Cluster mode as operators run it: three `python run.py` workers, one PostgreSQL, one NATS server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.audio_samples import make_mp3
from tests.fake_tiktok import FakeTikTok
from tests.helpers import eventually
from tests.server_process import ServerProcess
from tests.test_live_e2e import ANYA
from tests.test_ws import recv_type

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
        # 3 s: a 1 s lease (renewed every 0.33 s) lapsed under a fully loaded machine and the registry read 0.
        "TTBOOST_CLUSTER_WORKER_ID": name, "TTBOOST_CLUSTER_LEASE_SECONDS": "3"}) for name in ("w1", "w2", "w3")]
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
            assert await eventually(lambda: _workers_seen(http, w1), lambda n: n == 2, timeout=10) == 2
            assert await w3.terminate() == 0  # a graceful stop leaves the registry at once
            assert await _workers_seen(http, w1) == 1
    finally:
        for worker in workers:
            worker.kill()


async def test_one_tiktok_connection_per_streamer_and_takeover_after_kill_9(tmp_path: Path, pg_url: str,
                                                                            nats_url: str) -> None:
    async with FakeTikTok() as fake:
        fake.set_user("streamer")
        tiktok = fake.config()
        workers = [ServerProcess(tmp_path / name / "data", env={
            "TTBOOST_STORAGE_DATABASE_URL": pg_url, "TTBOOST_CLUSTER_NATS_URL": nats_url,
            "TTBOOST_CLUSTER_WORKER_ID": name, "TTBOOST_CLUSTER_LEASE_SECONDS": "1",
            "TTBOOST_TIKTOK_SIGN_API_KEY": tiktok.sign_api_key, "TTBOOST_TIKTOK_SIGN_API_URL": tiktok.sign_api_url,
            "TTBOOST_TIKTOK_APP_URL": tiktok.app_url, "TTBOOST_TIKTOK_WEBCAST_URL": tiktok.webcast_url}) for name in
            ("w1", "w2")]
        for worker in workers:
            worker.data_dir.parent.mkdir(parents=True)
        try:
            await asyncio.gather(*(worker.start() for worker in workers))
            w1, w2 = workers
            key = await w1.issue_license(PLAN)
            async with aiohttp.ClientSession() as http:
                status, body = await _json(http, "POST", w1.url + "/v2/auth/redeem-license",
                                           json={"username": "streamer", "password": "secret-pw",
                                                 "license_key": key})
                assert status == 200
                token = body["access_token"]
                # The app's socket on w1: auto_connect watches @streamer from there, under the lease.
                on_w1 = await http.ws_connect(f"{w1.ws_url}/v2/ws?token={token}")
                before = await recv_type(on_w1, "status", state="connected")
                assert fake.connections == 1
                # A second socket through w2 (no sticky routing): its watch finds the lease taken and waits.
                on_w2 = await http.ws_connect(f"{w2.ws_url}/v2/ws?token={token}")
                waiting = await recv_type(on_w2, "status", state="reconnecting")
                assert "w1" in waiting["message"]
                await fake.send_chat(ANYA, "first")
                assert (await recv_type(on_w1, "chat"))["message"] == "first"
                assert fake.connections == 1  # w2 tried after w1 connected, and opened nothing
                for _ in range(3):  # w2 keeps waiting: its back-off grows (1, 2 s, …) but never past a lease
                    assert (await recv_type(on_w2, "status", state="reconnecting"))["retry_in"] <= 1

                w1.kill()  # kill -9: its lease expires after lease_seconds, and w2 takes the streamer over
                after = await recv_type(on_w2, "status", state="connected")
                assert fake.connections == 2
                assert after["seq"] > before["seq"]
                await fake.send_chat(ANYA, "second")
                chat = await recv_type(on_w2, "chat")
                assert chat["message"] == "second" and chat["seq"] > after["seq"]
                await on_w2.close()
                await on_w1.close()
                # A graceful stop deletes the lease at once: no later test on this NATS server waits for it.
                assert await w2.terminate() == 0
        finally:
            for worker in workers:
                worker.kill()
