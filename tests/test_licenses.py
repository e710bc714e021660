"""Licenses: the web shop's issue-web, renewal by /v2/license/redeem, and the service rules behind both."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from ttboost import keys, licenses
from ttboost.timeutil import iso, parse_iso, utcnow

pytestmark = pytest.mark.both_backends  # storage behaviour must match on SQLite and PostgreSQL

PLAN = "nova_streamer_one_mobile"
API_KEY = "shop-key-0123456789"
WEB = {"auth": {"web_issue_api_key": API_KEY}}


async def issue_key(client: Any, days: int = 30, *, ago_days: int = 0) -> str:
    [lic] = await licenses.issue(client.app[keys.DB], client.app[keys.CONFIG], PLAN, days,
                                 now=utcnow() - timedelta(days=ago_days))
    return lic.key


async def login_token(client: Any, username: str = "streamer") -> str:
    resp = await client.post("/v2/auth/redeem-license",
                             json={"username": username, "password": "secret1", "license_key": await issue_key(client)})
    assert resp.status == 200
    return (await resp.json())["access_token"]


async def assert_error(resp: Any, status: int, detail: str) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert body["detail"] == detail and body["code"]
    return body


def order(**extra: Any) -> dict[str, Any]:
    return {"order_id": "order-1", "plan": PLAN, **extra}


# --- issue-web -----------------------------------------------------------------------------------------------


async def test_issue_web_disabled_without_a_key(client) -> None:
    resp = await client.post("/v2/license/issue-web", json=order(), headers={"Web-Api-Key": ""})
    await assert_error(resp, 503, "web issuing disabled")


async def test_issue_web_refuses_wrong_or_missing_key(make_client) -> None:
    client = await make_client(**WEB)
    await assert_error(await client.post("/v2/license/issue-web", json=order()), 401, "invalid api key")
    resp = await client.post("/v2/license/issue-web", json=order(), headers={"Web-Api-Key": API_KEY + "x"})
    await assert_error(resp, 401, "invalid api key")
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM licenses") == 0


async def test_issue_web_refuses_a_key_that_is_not_utf8(make_client) -> None:
    """A header's undecodable bytes reach the handler as surrogates; comparing them was a UnicodeEncodeError (500)."""
    client = await make_client(**WEB)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST /v2/license/issue-web HTTP/1.1\r\nHost: test\r\nWeb-Api-Key: \xff\xfe\r\n"
                     b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"401"
    assert answer.endswith(b'{"detail": "invalid api key", "code": "invalid_api_key"}')


async def test_issue_web_issues_a_redeemable_key(make_client) -> None:
    client = await make_client(**WEB)
    resp = await client.post("/v2/license/issue-web", headers={"Web-Api-Key": API_KEY},
                             json=order(ttl_days=7, email="buyer@example.org", amount=1999, currency="eur"))
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"key", "plan", "expires_at"} and body["plan"] == PLAN
    assert abs(parse_iso(body["expires_at"]) - utcnow() - timedelta(days=7)) < timedelta(seconds=5)
    row = await client.app[keys.DB].fetchone("SELECT * FROM licenses WHERE key = ?", (body["key"],))
    assert (row["order_id"], row["email"], row["amount"], row["currency"]) == (
        "order-1", "buyer@example.org", 1999, "EUR")
    redeem = await client.post("/v2/auth/redeem-license",
                               json={"username": "buyer", "password": "secret1", "license_key": body["key"]})
    assert redeem.status == 200


async def test_issue_web_default_ttl_is_30_days(make_client) -> None:
    client = await make_client(**WEB)
    body = await (await client.post("/v2/license/issue-web", json=order(), headers={"Web-Api-Key": API_KEY})).json()
    assert abs(parse_iso(body["expires_at"]) - utcnow() - timedelta(days=30)) < timedelta(seconds=5)


async def test_issue_web_is_idempotent_under_concurrent_retries(make_client) -> None:
    client = await make_client(**WEB)
    responses = await asyncio.gather(*(
        client.post("/v2/license/issue-web", json=order(order_id="same"), headers={"Web-Api-Key": API_KEY})
        for _ in range(20)))
    assert {r.status for r in responses} == {200}
    assert len({(await r.json())["key"] for r in responses}) == 1
    assert await client.app[keys.DB].fetchval("SELECT COUNT(*) FROM licenses") == 1
    later = await client.post("/v2/license/issue-web", json=order(order_id="same"), headers={"Web-Api-Key": API_KEY})
    assert (await later.json())["key"] == (await responses[0].json())["key"]


async def test_issue_web_plan_rules(make_client) -> None:
    client = await make_client(auth={**WEB["auth"], "web_allowed_plans": ("nova_streamer_duo",)})
    headers = {"Web-Api-Key": API_KEY}
    resp = await client.post("/v2/license/issue-web", json=order(plan="no_such_plan"), headers=headers)
    assert "plan" in (await assert_error(resp, 422, "validation error"))["fields"]
    await assert_error(await client.post("/v2/license/issue-web", json=order(), headers=headers), 403,
                       "plan not allowed")
    ok = await client.post("/v2/license/issue-web", json=order(plan="nova_streamer_duo"), headers=headers)
    assert ok.status == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"order_id": None}, "order_id"),
    ({"order_id": "x" * 129}, "order_id"),
    ({"ttl_days": 0}, "ttl_days"),
    ({"ttl_days": 3651}, "ttl_days"),
    ({"ttl_days": "30"}, "ttl_days"),
    ({"amount": 1.5}, "amount"),
    ({"currency": "EURO"}, "currency"),
    ({"email": "not-an-email"}, "email"),
    ({"order_id": "o\x00"}, "order_id"),
    ({"amount": 2**63}, "amount"),  # past SQLite's INTEGER: was an OverflowError (500)
])
async def test_issue_web_validation(make_client, body: dict[str, Any], field: str) -> None:
    client = await make_client(**WEB)
    resp = await client.post("/v2/license/issue-web", json=order(**body), headers={"Web-Api-Key": API_KEY})
    assert list((await assert_error(resp, 422, "validation error"))["fields"]) == [field]


@pytest.mark.parametrize(("body", "days"), [
    ({"ttl_days": 1}, 1), ({"ttl_days": 3650}, 3650), ({"order_id": "o" * 128}, 30),
])
async def test_issue_web_accepts_the_edges(make_client, body: dict[str, Any], days: int) -> None:
    client = await make_client(**WEB)
    resp = await client.post("/v2/license/issue-web", json=order(**body), headers={"Web-Api-Key": API_KEY})
    assert resp.status == 200
    lic = await resp.json()
    row = await client.server.app[keys.DB].fetchone("SELECT issued_at, expires_at FROM licenses WHERE key = ?",
                                                    (lic["key"],))
    assert (parse_iso(row["expires_at"]) - parse_iso(row["issued_at"])).days == days


# --- redeem (renewal) ----------------------------------------------------------------------------------------


async def test_redeem_binds_a_renewal_key(client) -> None:
    token = await login_token(client)
    renewal = await issue_key(client, 365)
    resp = await client.post("/v2/license/redeem", json={"license_key": renewal},
                             headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    body = await resp.json()
    assert body["plan"] == PLAN and body["license_active"] is True
    assert parse_iso(body["license_expires_at"]) - utcnow() > timedelta(days=364)
    me = await (await client.get("/v2/auth/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert me["license_expires_at"] == body["license_expires_at"]


async def test_redeem_errors(client) -> None:
    headers = {"Authorization": f"Bearer {await login_token(client, 'first')}"}
    other_key = await issue_key(client)
    await client.post("/v2/auth/redeem-license",
                      json={"username": "second", "password": "secret1", "license_key": other_key})
    revoked = await issue_key(client)
    await licenses.revoke(client.app[keys.DB], revoked)
    expired = await issue_key(client, 30, ago_days=31)
    cases = [("TTB-0000-0000-0000", 404, "license not found"), (revoked, 403, "license not active"),
             (expired, 403, "license expired"), (other_key, 409, "license already bound to another user")]
    for key, status, detail in cases:
        await assert_error(await client.post("/v2/license/redeem", json={"license_key": key}, headers=headers),
                           status, detail)
    await assert_error(await client.post("/v2/license/redeem", json={"license_key": other_key}), 401,
                       "invalid token")
    resp = await client.post("/v2/license/redeem", json={"license_key": 5, "x": 1}, headers=headers)
    assert list((await assert_error(resp, 422, "validation error"))["fields"]) == ["license_key"]


# --- service rules -------------------------------------------------------------------------------------------


async def test_plan_for_user_prefers_the_latest_expiring_active_license(client) -> None:
    db, config = client.app[keys.DB], client.app[keys.CONFIG]
    user_id = await db.execute("INSERT INTO users (username, created_at) VALUES ('u1', ?)", (iso(utcnow()),))
    assert await licenses.plan_for_user(db, user_id) == (None, None, False)
    old = (await licenses.issue(db, config, PLAN, 10, now=utcnow() - timedelta(days=20)))[0]
    older = (await licenses.issue(db, config, "nova_streamer_duo", 5, now=utcnow() - timedelta(days=20)))[0]
    for lic in (old, older):
        await licenses.bind(db, lic.key, user_id)
    assert await licenses.plan_for_user(db, user_id) == (PLAN, old.expires_at, False)  # latest expired one
    short = (await licenses.issue(db, config, "nova_streamer_duo", 10))[0]
    long = (await licenses.issue(db, config, PLAN, 40))[0]
    for lic in (short, long):
        await licenses.bind(db, lic.key, user_id)
    assert await licenses.plan_for_user(db, user_id) == (PLAN, long.expires_at, True)
    await licenses.revoke(db, long.key)
    assert await licenses.plan_for_user(db, user_id) == ("nova_streamer_duo", short.expires_at, True)


async def test_extend_adds_days_to_the_current_expiry(client) -> None:
    db, config = client.app[keys.DB], client.app[keys.CONFIG]
    [lic] = await licenses.issue(db, config, PLAN, 10)
    extended = await licenses.extend(db, lic.key, 5)
    assert parse_iso(extended.expires_at) - parse_iso(lic.expires_at) == timedelta(days=5)
    # An expired key restarts from now, so the added days can actually be used.
    [old] = await licenses.issue(db, config, PLAN, 10, now=utcnow() - timedelta(days=100))
    revived = await licenses.extend(db, old.key, 5)
    assert abs(parse_iso(revived.expires_at) - utcnow() - timedelta(days=5)) < timedelta(seconds=5)
    with pytest.raises(Exception, match="license not found"):
        await licenses.extend(db, "TTB-0000-0000-0000", 5)


async def test_issued_keys_have_the_spec_format(client) -> None:
    issued = await licenses.issue(client.app[keys.DB], client.app[keys.CONFIG], PLAN, 1, count=50)
    assert len({lic.key for lic in issued}) == 50
    for lic in issued:
        prefix, *groups = lic.key.split("-")
        assert prefix == "TTB" and [len(g) for g in groups] == [4, 4, 4]
        assert not set("".join(groups)) & set("ILOU")
        assert lic.status == "active" and lic.user_id is None


async def test_wrong_web_api_keys_are_rate_limited(make_client) -> None:
    client = await make_client(**WEB, limits={"auth_per_minute": 3})
    for _ in range(3):
        resp = await client.post("/v2/license/issue-web", json=order(), headers={"Web-Api-Key": "guess"})
        await assert_error(resp, 401, "invalid api key")
    resp = await client.post("/v2/license/issue-web", json=order(), headers={"Web-Api-Key": "guess"})
    await assert_error(resp, 429, "too many requests")
    assert int(resp.headers["Retry-After"]) >= 1
