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
from tests.test_ws import recv, recv_type

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


async def _frames_until(ws: aiohttp.ClientWebSocketResponse, seen: list[dict[str, Any]], type_: str,
                       timeout: float = 15, **match: Any) -> dict[str, Any]:
    """recv_type that keeps every frame it reads in seen (the app's whole view, to check seq on)."""
    while True:
        frame = await recv(ws, timeout=timeout)
        seen.append(frame)
        if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def test_one_tiktok_connection_per_streamer_and_nothing_lost_when_workers_die(tmp_path: Path, pg_url: str,
                                                                                    nats_url: str) -> None:
    async with FakeTikTok() as fake:
        fake.set_user("streamer")
        tiktok = fake.config()
        workers = [ServerProcess(tmp_path / name / "data", env={
            "TTBOOST_STORAGE_DATABASE_URL": pg_url, "TTBOOST_CLUSTER_NATS_URL": nats_url,
            "TTBOOST_CLUSTER_WORKER_ID": name, "TTBOOST_CLUSTER_LEASE_SECONDS": "2",  # 1 s can lapse under a full load
            "TTBOOST_TIKTOK_SIGN_API_KEY": tiktok.sign_api_key, "TTBOOST_TIKTOK_SIGN_API_URL": tiktok.sign_api_url,
            "TTBOOST_TIKTOK_APP_URL": tiktok.app_url, "TTBOOST_TIKTOK_WEBCAST_URL": tiktok.webcast_url}) for name in
            ("w1", "w2", "w3")]
        for worker in workers:
            worker.data_dir.parent.mkdir(parents=True)
        seen: list[dict[str, Any]] = []  # every frame the app got, on whichever worker
        try:
            await asyncio.gather(*(worker.start() for worker in workers))
            w1, w2, w3 = workers
            key = await w1.issue_license(PLAN)
            async with aiohttp.ClientSession() as http:
                status, body = await _json(http, "POST", w1.url + "/v2/auth/redeem-license",
                                           json={"username": "streamer", "password": "secret-pw",
                                                 "license_key": key})
                assert status == 200
                token = body["access_token"]
                # The app's first socket on w1: w1 becomes the user's home and watches @streamer.
                on_w1 = await http.ws_connect(f"{w1.ws_url}/v2/ws?token={token}")
                await _frames_until(on_w1, seen, "status", timeout=45, state="connected")  # loads TikTokLive too
                # The app comes back through w2 (no sticky routing): w1 keeps the TikTok connection.
                on_w2 = await http.ws_connect(f"{w2.ws_url}/v2/ws?token={token}&since={seen[-1]['seq']}")
                assert (await on_w1.receive(timeout=10)).data == 4001  # one app socket per user in the cluster
                await fake.send_chat(ANYA, "first")
                assert (await _frames_until(on_w2, seen, "chat"))["message"] == "first"
                assert fake.connections == 1

                w2.kill()  # kill -9 of the app's own worker: the LIVE goes on at w1 meanwhile
                last = seen[-1]["seq"]
                await fake.send_chat(ANYA, "missed-1")
                await fake.send_chat(ANYA, "missed-2")
                on_w3 = await http.ws_connect(f"{w3.ws_url}/v2/ws?token={token}&since={last}")
                missed = [await _frames_until(on_w3, seen, "chat"), await _frames_until(on_w3, seen, "chat")]
                assert [f["message"] for f in missed] == ["missed-1", "missed-2"]  # nothing lost in the window

                w1.kill()  # kill -9 of the home: w3, where the app is, takes the streamer over after the lease
                await _frames_until(on_w3, seen, "status", state="reconnecting")
                # A ceiling: w3 loads TikTokLive for the first time here (about 2 CPU-seconds; 9-15 s measured
                # with the machine saturated by other work).
                await _frames_until(on_w3, seen, "status", timeout=45, state="connected")
                assert fake.connections == 2  # the dead worker's connection, then w3's: never two at once
                await fake.send_chat(ANYA, "after")
                assert (await _frames_until(on_w3, seen, "chat"))["message"] == "after"
                # seq rises and is never reused: a number seen again is the same frame (a new socket gets the
                # current status once more, with its seq), and each new number is above every earlier one.
                by_seq: dict[int, dict[str, Any]] = {}
                for frame in (f for f in seen if "seq" in f):
                    if frame["seq"] in by_seq:
                        assert by_seq[frame["seq"]] == frame, (frame, by_seq[frame["seq"]])
                    else:
                        assert not by_seq or frame["seq"] > max(by_seq), (frame, max(by_seq))
                        by_seq[frame["seq"]] = frame
                auth = {"Authorization": f"Bearer {token}"}
                # The dead home's stream row was closed by the new home; the new one is live (its row is
                # written just after "connected" is sent: waited for, not raced, on a loaded machine).
                status, history = await eventually(
                    lambda: _json(http, "GET", w3.url + "/v2/streams", headers=auth),
                    lambda r: r[0] == 200 and len(r[1]["streams"]) == 2, timeout=15)
                assert status == 200
                assert [s["end_reason"] for s in history["streams"]] == [None, "crashed"]
                await on_w3.close()
                await on_w2.close()
                await on_w1.close()
                assert await w3.terminate() == 0
        finally:
            for worker in workers:
                worker.kill()
