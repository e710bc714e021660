"""Stolen or forged credentials (issue 9): strict token claims, key guessing limited per IP and user, IPv6 by /64."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
from typing import Any

import jwt
import pytest
from yarl import URL

from tests.conftest import JWT_SECRET, make_config
from tests.helpers import bearer, make_user
from ttboost import keys
from ttboost.errors import ApiError
from ttboost.logsetup import RedactingFilter
from ttboost.ratelimit import ip_bucket
from ttboost.security import PasswordHasher


def signed(**claims: Any) -> str:
    """A token signed with the server's real secret (a leaked secret, or a bug in issuing), with odd claims."""
    now = int(time.time())
    return jwt.encode({"sub": "1", "iat": now, "exp": now + 3600, "ver": 0, **claims}, JWT_SECRET,
                      algorithm="HS256")


@pytest.mark.parametrize("claims", [
    {"sub": " 1"}, {"sub": "01"}, {"sub": "+1"}, {"sub": "1.0"}, {"sub": 1}, {"sub": "1" * 40}, {"sub": "0"},
    {"sub": str(2**63)}, {"ver": "0"}, {"ver": 0.5}, {"ver": 0.0}, {"ver": False}, {"ver": -1}, {"ver": None},
    {"ver": 10**30},
])
async def test_only_canonical_integer_claims_are_accepted(make_client, claims: dict[str, Any]) -> None:
    client = await make_client()
    user_id, _token = await make_user(client.app)
    assert user_id == 1
    assert (await client.get("/v2/auth/me", headers=bearer(signed()))).status == 200  # the baseline works
    resp = await client.get("/v2/auth/me", headers=bearer(signed(**claims)))
    assert resp.status == 401 and (await resp.json())["detail"] == "invalid token", claims
    ws = await client.get(f"/v2/ws?token={signed(**claims)}")
    assert ws.status == 401


async def test_key_redemption_is_limited_per_ip_and_per_user(make_client) -> None:
    client = await make_client(limits={"auth_per_minute": 3})
    _, token_a = await make_user(client.app, "alice")
    _, token_b = await make_user(client.app, "bob")
    guess = {"license_key": "TTB-0000-0000-0000"}
    for _ in range(3):
        resp = await client.post("/v2/license/redeem", json=guess, headers=bearer(token_a))
        assert resp.status == 404
    resp = await client.post("/v2/license/redeem", json=guess, headers=bearer(token_a))
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["detail"] == "too many requests"
    # another user from the same address shares the per-IP budget
    resp = await client.post("/v2/license/redeem", json=guess, headers=bearer(token_b))
    assert resp.status == 429


async def test_redeem_is_limited_per_user_across_addresses(make_client) -> None:
    """Behind a trusted proxy each request names another client address: the per-user budget still holds."""
    client = await make_client(limits={"auth_per_minute": 2}, server={"trusted_proxies": ["127.0.0.1"]})
    _, token = await make_user(client.app)
    guess = {"license_key": "TTB-0000-0000-0000"}
    statuses = []
    for i in range(3):
        headers = {**bearer(token), "X-Forwarded-For": f"203.0.113.{i + 1}"}
        statuses.append((await client.post("/v2/license/redeem", json=guess, headers=headers)).status)
    assert statuses == [404, 404, 429]


async def test_ipv6_clients_share_a_bucket_per_64(make_client) -> None:
    client = await make_client(limits={"auth_per_minute": 2}, server={"trusted_proxies": ["127.0.0.1"]})
    statuses = []
    for host in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2:abcd:1:2:3"):
        resp = await client.post("/v2/auth/login", json={"username": "nobody", "password": "whatever"},
                                 headers={"X-Forwarded-For": host})
        statuses.append(resp.status)
    assert statuses == [401, 401, 429]
    # the next /64 has its own budget
    resp = await client.post("/v2/auth/login", json={"username": "nobody", "password": "whatever"},
                             headers={"X-Forwarded-For": "2001:db8:1:3::1"})
    assert resp.status == 401


@pytest.mark.parametrize(("ip", "bucket"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8:0:0:ffff:ffff:ffff:ffff", "2001:db8::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("not-an-ip", "not-an-ip"),
])
def test_ip_bucket(ip: str, bucket: str) -> None:
    assert ip_bucket(ip) == bucket


async def test_no_url_shape_puts_a_token_in_the_log(make_client, caplog: pytest.LogCaptureFixture) -> None:
    client = await make_client()
    _, token = await make_user(client.app)
    caplog.set_level(logging.DEBUG)
    for target in (f"/v2/ws?x=1;token={token}", f"//ws/{token}", f"/v2/ws?%74oken={token}", f"/x/../ws/{token}",
                   f"/ws//{token}", f"/v2/ws?demo=1&access_token={token}", f"/nothing?q={token}"):
        # raw targets: the test client would read //ws/... as a host name
        url = URL(f"http://{client.host}:{client.port}{target}", encoded=True)
        await client.session.get(url, allow_redirects=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "ttboost.access"]
    assert len(lines) == 7
    assert not [line for line in lines if token in line or token.split(".")[2] in line]


def test_the_log_filter_redacts_library_records_and_tracebacks() -> None:
    token = signed()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("aiohttp.server.test")
    logger.addHandler(handler)
    try:
        logger.error("Error handling request from %s: %r", "1.2.3.4", f"GET /ws/{token} HTTP/1.1")
        try:
            raise ValueError(f"bad target /v2/ws?token={token}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "1.2.3.4" in text and "ValueError: bad target" in text
    assert token not in text and token.split(".")[1] not in text


async def test_password_hashing_is_bounded_and_sheds_at_once() -> None:
    """One worker, one waiting: of three hashes asked for at once, the third is refused before any runs."""
    hasher = PasswordHasher(4, workers=1, queue=1)
    try:
        results = await asyncio.gather(*(hasher.hash("secret1") for _ in range(3)), return_exceptions=True)
    finally:
        hasher.close()
    assert [isinstance(r, str) for r in results] == [True, True, False]
    refused = results[2]
    assert isinstance(refused, ApiError) and refused.status == 503 and int(refused.headers["Retry-After"]) >= 1


async def test_warm_ups_at_once_make_one_dummy_hash_and_never_shed() -> None:
    # The app's start-up warm-up and the first unknown-user login (or a second warm-up) overlap: the later one
    # waits for that dummy rather than queueing a second hash, which a full queue answered 503.
    hasher = PasswordHasher(4, workers=1, queue=0)
    try:
        results = await asyncio.gather(*(hasher.warm_up() for _ in range(3)), return_exceptions=True)
        assert results == [None, None, None]
        assert await hasher.verify("whatever", None) is False
    finally:
        hasher.close()


async def test_a_login_past_the_queue_gets_503_with_retry_after(make_client) -> None:
    client = await make_client(auth={"bcrypt_rounds": 4, "hash_workers": 1, "hash_queue": 0})
    hasher = client.app[keys.PASSWORDS]
    await hasher.warm_up()
    gate = threading.Event()
    busy = asyncio.ensure_future(hasher._run(gate.wait, 10))  # the one worker held by another login
    try:
        resp = await client.post("/v2/auth/login", json={"username": "nobody", "password": "whatever"})
        assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
        assert await resp.json() == {"detail": "busy, try again", "code": "busy"}
    finally:
        gate.set()
        await busy
    resp = await client.post("/v2/auth/login", json={"username": "nobody", "password": "whatever"})
    assert resp.status == 401  # a free worker: answered as usual


async def test_data_files_and_folders_are_owner_only_whatever_the_umask(make_client, tmp_path) -> None:
    old = os.umask(0)  # the most permissive umask: nothing may come out group- or world-readable anyway
    try:
        data = tmp_path / "fresh" / "data"
        client = await make_client(make_config(data))
        _, token = await make_user(client.app)
        resp = await client.post("/v2/tts/generate", json={"text": "hello there"}, headers=bearer(token))
        assert resp.status == 200
        await client.get(URL((await resp.json())["url"]).path)  # the speech file is written
        await client.app[keys.DB].backup(tmp_path / "backup.db")
    finally:
        os.umask(old)
    paths = [p for p in (tmp_path / "fresh").rglob("*")] + [tmp_path / "fresh", tmp_path / "backup.db"]
    assert any(p.name.endswith("-wal") for p in paths) and any(p.suffix == ".mp3" for p in paths)
    loose = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in paths
             if p.stat().st_mode & 0o077}
    assert loose == {}
