"""Accounts over HTTP: redeem-license, login, me, password change, tokens, rate limits, the legacy key login."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import JWT_SECRET
from tests.helpers import Clock
from ttboost import keys, licenses
from ttboost.security import TokenClaims, TokenService
from ttboost.timeutil import parse_iso, utcnow

pytestmark = pytest.mark.both_backends  # storage behaviour must match on SQLite and PostgreSQL

PLAN = "nova_streamer_one_mobile"
NO_LIMIT = {"auth_per_minute": 0}  # 0 disables the limiter: tests that make many requests


async def issue_key(client: Any, days: int = 30, *, plan: str = PLAN, ago_days: int = 0) -> str:
    [lic] = await licenses.issue(client.app[keys.DB], client.app[keys.CONFIG], plan, days,
                                 now=utcnow() - timedelta(days=ago_days))
    return lic.key


async def redeem(client: Any, key: str, username: str = "streamer", password: str = "secret1", **extra: Any):
    return await client.post("/v2/auth/redeem-license",
                             json={"username": username, "password": password, "license_key": key, **extra})


async def token_for(client: Any, username: str = "streamer", password: str = "secret1") -> str:
    resp = await redeem(client, await issue_key(client), username, password)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_error(resp: Any, status: int, detail: str) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert body["detail"] == detail and body["code"]
    return body


# --- redeem-license ------------------------------------------------------------------------------------------


async def test_redeem_creates_account_and_returns_token(client) -> None:
    key = await issue_key(client, 30)
    resp = await redeem(client, key.lower().replace("-", "- "), username="  @Streamer.One ")
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "user_id", "username", "plan",
                         "license_expires_at"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 24 * 3600
    assert body["username"] == "streamer.one" and body["plan"] == PLAN
    expires = parse_iso(body["license_expires_at"])
    assert abs((expires - utcnow()) - timedelta(days=30)) < timedelta(seconds=5)
    me = await client.get("/v2/auth/me", headers=bearer(body["access_token"]))
    assert me.status == 200
    assert (await me.json())["id"] == body["user_id"]


async def test_redeem_existing_account_needs_its_password(client) -> None:
    first = await (await redeem(client, await issue_key(client, 10))).json()
    second_key = await issue_key(client, 60)
    await assert_error(await redeem(client, second_key, password="wrong-password"), 401, "invalid credentials")
    resp = await redeem(client, second_key)
    assert resp.status == 200
    body = await resp.json()
    assert body["user_id"] == first["user_id"]
    assert body["license_expires_at"] > first["license_expires_at"]  # the latest-expiring key wins
    again = await redeem(client, second_key)  # a key already bound to this user is fine
    assert again.status == 200


async def test_redeem_key_errors(client) -> None:
    await assert_error(await redeem(client, "TTB-0000-0000-0000"), 404, "license not found")
    revoked = await issue_key(client)
    await licenses.revoke(client.app[keys.DB], revoked)
    await assert_error(await redeem(client, revoked), 403, "license not active")
    expired = await issue_key(client, 30, ago_days=31)
    await assert_error(await redeem(client, expired), 403, "license expired")
    taken = await issue_key(client)
    assert (await redeem(client, taken, username="first")).status == 200
    await assert_error(await redeem(client, taken, username="second"), 409, "license already bound to another user")
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM users") == 1  # failures created nobody
    # The key is checked first (spec §4): an existing account with a wrong password still gets the 409.
    await token_for(client, "third", "secret3")
    await assert_error(await redeem(client, taken, username="third", password="nope-nope"), 409,
                       "license already bound to another user")


@pytest.mark.parametrize(("body", "field"), [
    ({"username": "x"}, "username"),
    ({"username": "bad name!"}, "username"),
    ({"username": "a" * 25}, "username"),
    ({"password": "short"}, "password"),
    ({"password": "é" * 36 + "a"}, "password"),  # 73 bytes in UTF-8, though only 37 characters
    ({"license_key": ""}, "license_key"),
    ({"password": "secret1\x00"}, "password"),
    ({"username": "stream\x00er"}, "username"),
])
async def test_redeem_validation(client, body: dict[str, Any], field: str) -> None:
    payload = {"username": "streamer", "password": "secret1", "license_key": await issue_key(client), **body}
    resp = await client.post("/v2/auth/redeem-license", json=payload)
    result = await assert_error(resp, 422, "validation error")
    assert list(result["fields"]) == [field]


async def test_password_of_72_bytes_is_accepted(client) -> None:
    password = "é" * 36  # 72 bytes
    assert (await redeem(client, await issue_key(client), password=password)).status == 200
    resp = await client.post("/v2/auth/login", json={"username": "streamer", "password": password})
    assert resp.status == 200


async def test_concurrent_redeems_of_one_key_have_one_winner(make_client) -> None:
    # 20 new accounts hash 20 passwords at once: more than the default hash queue (one per core + 16) admits on
    # a busy machine, whose 503s are tested in test_stolen_credentials, not here.
    client = await make_client(limits=NO_LIMIT, auth={"hash_queue": 32})
    key = await issue_key(client)
    responses = await asyncio.gather(*(redeem(client, key, username=f"user{i}") for i in range(20)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 19
    winner = next(r for r in responses if r.status == 200)
    owner = await client.app[keys.DB].fetchval("SELECT user_id FROM licenses WHERE key = ?", (key,))
    assert owner == (await winner.json())["user_id"]
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM users") == 1


async def test_concurrent_redeems_by_one_new_user_make_one_account(make_client) -> None:
    client = await make_client(limits=NO_LIMIT)
    key = await issue_key(client)
    responses = await asyncio.gather(*(redeem(client, key) for _ in range(5)))
    assert [r.status for r in responses] == [200] * 5
    assert len({(await r.json())["user_id"] for r in responses}) == 1


# --- login, me, tokens ---------------------------------------------------------------------------------------


async def test_login_and_me(client) -> None:
    await token_for(client, "streamer", "secret1")
    resp = await client.post("/v2/auth/login", json={"username": "@STREAMER", "password": "secret1"})
    assert resp.status == 200
    token = (await resp.json())["access_token"]
    me = await (await client.get("/v2/auth/me", headers=bearer(token))).json()
    assert set(me) == {"id", "username", "tiktok_username", "plan", "plan_name", "license_expires_at",
                       "license_active", "created_at", "settings", "voice_id", "tts_enabled", "tts_volume",
                       "gifts_volume"}
    assert me["username"] == "streamer" and me["tiktok_username"] == "streamer"
    assert me["plan"] == PLAN and me["plan_name"] == "Nova Streamer One (mobile)" and me["license_active"] is True
    assert me["created_at"].endswith("Z") and isinstance(me["settings"], dict)


async def test_login_failures_look_the_same(client) -> None:
    await token_for(client, "streamer", "secret1")
    wrong = await client.post("/v2/auth/login", json={"username": "streamer", "password": "wrong-one"})
    unknown = await client.post("/v2/auth/login", json={"username": "nobody", "password": "secret1"})
    assert await assert_error(wrong, 401, "invalid credentials") == await assert_error(
        unknown, 401, "invalid credentials")


async def test_me_with_expired_license_is_inactive(client) -> None:
    key = await issue_key(client, 30)
    token = (await (await redeem(client, key)).json())["access_token"]
    await client.app[keys.DB].execute("UPDATE licenses SET expires_at = '2020-01-01T00:00:00Z'")
    me = await (await client.get("/v2/auth/me", headers=bearer(token))).json()
    assert me["license_active"] is False and me["license_expires_at"] == "2020-01-01T00:00:00Z"
    assert me["plan"] == PLAN
    # Still able to log in, to see the expiry and redeem a new key.
    assert (await client.post("/v2/auth/login", json={"username": "streamer", "password": "secret1"})).status == 200


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_bad_tokens_are_refused(client) -> None:
    token = await token_for(client)
    user_id = (await (await client.get("/v2/auth/me", headers=bearer(token))).json())["id"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "==="))
    tampered = ".".join((header, _b64({**claims, "sub": str(user_id + 1)}), signature))
    alg_none = ".".join((_b64({"alg": "none", "typ": "JWT"}), _b64(claims), ""))
    expired = TokenService(JWT_SECRET, 3600).issue(user_id, 0, now=time.time() - 7200)
    other_secret = TokenService("another-secret-" + "y" * 40, 3600).issue(user_id, 0)
    for headers in ({}, {"Authorization": token}, bearer("garbage"), bearer(tampered), bearer(alg_none),
                    bearer(expired), bearer(other_secret)):
        await assert_error(await client.get("/v2/auth/me", headers=headers), 401, "invalid token")


def test_a_remembered_token_still_expires_and_others_are_still_checked() -> None:
    clock = Clock(time.time())
    service = TokenService(JWT_SECRET, 60, clock=clock)
    token = service.issue(7, 3)
    assert service.decode(token) == service.decode(token) == TokenClaims(7, 3, float(int(clock.now) + 60))
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")  # same claims, bad signature
    assert service.decode(forged) is None
    clock.now += 60
    assert service.decode(token) is None  # exp <= now: expired, as PyJWT decides


async def test_password_change_revokes_older_tokens(client) -> None:
    old = await token_for(client, "streamer", "secret1")
    resp = await client.post("/v2/auth/password", headers=bearer(old),
                             json={"current_password": "wrong-pass", "new_password": "brand-new"})
    await assert_error(resp, 401, "invalid credentials")
    resp = await client.post("/v2/auth/password", headers=bearer(old),
                             json={"current_password": "secret1", "new_password": "brand-new"})
    assert resp.status == 200
    new = (await resp.json())["access_token"]
    await assert_error(await client.get("/v2/auth/me", headers=bearer(old)), 401, "invalid token")
    assert (await client.get("/v2/auth/me", headers=bearer(new))).status == 200
    login_old = await client.post("/v2/auth/login", json={"username": "streamer", "password": "secret1"})
    await assert_error(login_old, 401, "invalid credentials")
    assert (await client.post("/v2/auth/login", json={"username": "streamer", "password": "brand-new"})).status == 200


async def test_password_change_validation(client) -> None:
    token = await token_for(client)
    resp = await client.post("/v2/auth/password", headers=bearer(token),
                             json={"current_password": "secret1", "new_password": "x" * 73})
    assert "new_password" in (await assert_error(resp, 422, "validation error"))["fields"]
    resp = await client.post("/v2/auth/password", json={"current_password": "secret1", "new_password": "abcdefg"})
    await assert_error(resp, 401, "invalid token")


# --- rate limits ---------------------------------------------------------------------------------------------


async def test_eleventh_auth_request_in_a_minute_is_429(client) -> None:
    for i in range(10):  # X-Forwarded-For from an untrusted peer must not give new buckets
        resp = await client.post("/v2/auth/login", json={}, headers={"X-Forwarded-For": f"198.51.100.{i}"})
        assert resp.status == 422
    resp = await client.post("/auth/login", json={}, headers={"X-Forwarded-For": "198.51.100.99"})
    await assert_error(resp, 429, "too many requests")
    assert int(resp.headers["Retry-After"]) >= 1


async def test_forwarded_for_is_honoured_from_a_trusted_proxy(make_client) -> None:
    client = await make_client(server={"trusted_proxies": ("127.0.0.1",), "public_url": "http://testserver"})
    for _ in range(10):
        resp = await client.post("/v2/auth/login", json={}, headers={"X-Forwarded-For": "203.0.113.5"})
        assert resp.status == 422
    limited = await client.post("/v2/auth/login", json={}, headers={"X-Forwarded-For": "203.0.113.5"})
    await assert_error(limited, 429, "too many requests")
    other = await client.post("/v2/auth/login", json={}, headers={"X-Forwarded-For": "203.0.113.6"})
    assert other.status == 422


# --- legacy key login ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "ws_base"), [("http://tt.example:8000", "ws://tt.example:8000"),
                                                ("https://tt.example", "wss://tt.example")])
async def test_legacy_login(make_client, base: str, ws_base: str) -> None:
    client = await make_client(server={"public_url": base})
    key = await issue_key(client, 30)
    resp = await client.post("/auth/login", json={"license_key": key})
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"status", "user_id", "ws_token", "ws_url", "server_time", "expires_at"}
    assert body["status"] == "ok" and body["ws_url"] == f"{ws_base}/ws/{body['ws_token']}"
    # Typed as the seed sent them: ids as strings, expires_at = when the token expires (24 h by default).
    assert isinstance(body["user_id"], str) and isinstance(body["ws_token"], str)
    assert parse_iso(body["expires_at"]) - parse_iso(body["server_time"]) == timedelta(hours=24)
    claims = TokenService(JWT_SECRET, 3600).decode(body["ws_token"])
    assert claims is not None and parse_iso(body["expires_at"]).timestamp() == claims.expires_at
    me = await (await client.get("/v2/auth/me", headers=bearer(body["ws_token"]))).json()
    assert str(me["id"]) == body["user_id"] and me["username"] is None and me["license_active"] is True
    again = await (await client.post("/auth/login", json={"license_key": key})).json()
    assert again["user_id"] == body["user_id"]  # the key is bound now: same account


async def test_legacy_login_errors(client) -> None:
    await assert_error(await client.post("/auth/login", json={"license_key": "TTB-0000-0000-0000"}), 404,
                       "license not found")
    revoked = await issue_key(client)
    await licenses.revoke(client.app[keys.DB], revoked)
    await assert_error(await client.post("/auth/login", json={"license_key": revoked}), 403, "license not active")
    expired = await issue_key(client, 30, ago_days=31)
    await assert_error(await client.post("/auth/login", json={"license_key": expired}), 403, "license expired")
    resp = await client.post("/auth/login", json={"license_key": "TTB-\x00"})
    assert "license_key" in (await assert_error(resp, 422, "validation error"))["fields"]


async def test_key_only_account_is_claimed_by_redeem(client) -> None:
    key = await issue_key(client)
    legacy = await (await client.post("/auth/login", json={"license_key": key})).json()
    before = await (await client.get("/v2/auth/me", headers=bearer(legacy["ws_token"]))).json()
    assert before["username"] is None and before["tiktok_username"] is None
    resp = await redeem(client, key, username="claimer", password="secret1")
    assert resp.status == 200
    body = await resp.json()
    assert str(body["user_id"]) == legacy["user_id"] and body["username"] == "claimer"
    after = await (await client.get("/v2/auth/me", headers=bearer(body["access_token"]))).json()
    assert after["username"] == after["tiktok_username"] == after["settings"]["tiktok_username"] == "claimer"
    assert (await client.post("/v2/auth/login", json={"username": "claimer", "password": "secret1"})).status == 200
    # The key now belongs to a named account: someone else cannot claim it.
    await assert_error(await redeem(client, key, username="thief"), 409, "license already bound to another user")


async def test_key_only_account_merges_into_existing_account(client) -> None:
    await token_for(client, "streamer", "secret1")
    key = await issue_key(client, 90)
    legacy = await (await client.post("/auth/login", json={"license_key": key})).json()
    await assert_error(await redeem(client, key, password="bad-password"), 401, "invalid credentials")
    resp = await redeem(client, key, username="streamer", password="secret1")
    assert resp.status == 200
    body = await resp.json()
    assert str(body["user_id"]) != legacy["user_id"]
    db = client.app[keys.DB]
    assert await db.fetchval("SELECT user_id FROM licenses WHERE key = ?", (key,)) == body["user_id"]
    # The emptied key-only account's token is revoked (kept, not deleted, so its id is never handed out again).
    await assert_error(await client.get("/v2/auth/me", headers=bearer(legacy["ws_token"])), 401, "invalid token")
    newcomer = await (await client.post("/auth/login", json={"license_key": await issue_key(client)})).json()
    assert newcomer["user_id"] != legacy["user_id"]
    await assert_error(await client.get("/v2/auth/me", headers=bearer(legacy["ws_token"])), 401, "invalid token")


async def test_legacy_key_login_refused_for_an_account_with_a_password(make_client) -> None:
    """The key is not a second password (spec §4): once the account has one, only /v2/auth/login gets in."""
    client = await make_client(limits=NO_LIMIT)
    key = await issue_key(client)
    assert (await redeem(client, key, username="streamer", password="secret1")).status == 200
    for _ in range(2):  # before and after a password change
        resp = await client.post("/auth/login", json={"license_key": key})
        body = await assert_error(resp, 403, "password required")
        assert body == {"detail": "password required", "code": "password_required"}
        login = await client.post("/v2/auth/login", json={"username": "streamer", "password": "secret1"})
        token = (await login.json())["access_token"]
        changed = await client.post("/v2/auth/password", headers=bearer(token),
                                    json={"current_password": "secret1", "new_password": "secret1"})
        assert changed.status == 200
    # A key-only account (no password yet) still logs in by key; once claimed with a password, it no longer does.
    loose = await issue_key(client)
    assert (await client.post("/auth/login", json={"license_key": loose})).status == 200
    assert (await redeem(client, loose, username="claimer", password="secret2")).status == 200
    await assert_error(await client.post("/auth/login", json={"license_key": loose}), 403, "password required")


async def test_me_repeats_the_apps_settings_at_the_top_level(client) -> None:
    token = await token_for(client)
    update = await client.post("/v2/settings/update", headers=bearer(token),
                               json={"tts_volume": 35, "gifts_volume": 70, "tts_enabled": False,
                                     "voice_id": "en-US-JennyNeural"})
    assert update.status == 200, await update.text()
    me = await (await client.get("/v2/auth/me", headers=bearer(token))).json()
    assert (me["voice_id"], me["tts_enabled"], me["tts_volume"], me["gifts_volume"]) == (
        "en-US-JennyNeural", False, 35, 70)
    assert all(me[key] == me["settings"][key] for key in ("voice_id", "tts_enabled", "tts_volume", "gifts_volume"))
