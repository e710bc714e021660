"""The app shell: health, the one error envelope for unknown routes and methods, config validation."""

from __future__ import annotations

import pytest

from ttboost.config import ConfigError, load_config


async def test_health_reports_ok_without_secrets(client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["db"] == "ok"
    assert set(body) == {"status", "version", "uptime_s", "db", "live_sessions", "ws_clients", "event_log"}
    assert body["event_log"] == {"waiting": 0, "dropped": 0}
    assert "secret" not in (await resp.text()).lower()


async def test_unknown_route_is_enveloped_404(client) -> None:
    resp = await client.get("/v2/nothing-here")
    assert resp.status == 404
    assert await resp.json() == {"detail": "not found", "code": "not_found"}


async def test_wrong_method_is_enveloped_405(client) -> None:
    resp = await client.delete("/health")
    assert resp.status == 405
    assert (await resp.json())["code"] == "method_not_allowed"


def test_env_overrides_and_lists() -> None:
    cfg = load_config(None, env={"TTBOOST_SERVER_PORT": "9000", "TTBOOST_SERVER_TRUSTED_PROXIES": "127.0.0.1,10.0.0.2",
                                 "SERVER_HOST": "https://example.org", "WEB_ALLOWED_PLANS": "nova_streamer_duo"})
    assert cfg.server.port == 9000
    assert cfg.server.trusted_proxies == ("127.0.0.1", "10.0.0.2")
    assert cfg.public_url == "https://example.org" and cfg.ws_base == "wss://example.org"
    assert cfg.media_url == "https://example.org"
    assert cfg.auth.web_allowed_plans == ("nova_streamer_duo",)


@pytest.mark.parametrize(("env", "needle"), [
    ({"TTBOOST_SERVER_PORT": "eighty"}, "server.port"),
    ({"TTBOOST_TTS_ENGINE": "festival"}, "tts.engine"),
    ({"TTBOOST_LIMITS_AUTH_PER_MINUTE": "-1"}, "limits.auth_per_minute"),
    ({"TTBOOST_LIMITS_WS_READ_TIMEOUT_SECONDS": "0"}, "limits.ws_read_timeout_seconds"),
    ({"TTBOOST_AUTH_JWT_SECRET": "short"}, "auth.jwt_secret"),
    ({"WEB_ALLOWED_PLANS": "no_such_plan"}, "web_allowed_plans"),
])
def test_bad_config_names_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, env=env)


def test_config_file_is_read(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 8123\n[plans.solo]\nname = "Solo"\nmax_triggers = 3\nmax_sounds = 2\n')
    cfg = load_config(path, env={"TTBOOST_SERVER_PORT": "8124"})
    assert cfg.server.port == 8124
    assert cfg.plan("solo").max_triggers == 3 and cfg.plan("nova_streamer_duo") is None


async def test_cors_allows_only_the_exact_configured_origin(make_client) -> None:
    client = await make_client(server={"public_url": "http://testserver", "cors_origins": ("https://app.example",)})
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ok = await client.options("/v2/auth/login", headers={"Origin": "https://app.example", **preflight})
    assert ok.status == 200 and ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    for origin in ("https://app.example.evil.com", "https://evil.com", "http://app.example"):
        refused = await client.options("/v2/auth/login", headers={"Origin": origin, **preflight})
        assert "Access-Control-Allow-Origin" not in refused.headers, origin
    plain = await client.get("/health", headers={"Origin": "https://evil.com"})
    assert "Access-Control-Allow-Origin" not in plain.headers


async def test_no_cors_headers_without_configured_origins(client) -> None:
    resp = await client.get("/health", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_json_bodies_over_64_kib_are_413_and_change_nothing(client) -> None:
    body = '{"username": "someone", "password": "' + "x" * (64 * 1024) + '"}'
    resp = await client.post("/v2/auth/login", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["code"] == "payload_too_large"
    edge = '{"username": "someone", "password": "' + "x" * (64 * 1024 - 60) + '"}'
    assert len(edge.encode()) <= 64 * 1024
    resp = await client.post("/v2/auth/login", data=edge, headers={"Content-Type": "application/json"})
    assert resp.status == 422  # read and validated (password over 72 bytes), not refused for size


@pytest.mark.parametrize(("path", "body"), [
    ("/v2/settings/update", b'{"chat_tts_prefix": "\\ud800"}'),
    ("/v2/events/simulate", b'{"type": "chat", "user": "\\udc00x"}'),
    ("/v2/triggers/set", b'{"event_type": "chat", "action": "tts", "action_params": {"text_template": "\\ud800"}}'),
    ("/v2/settings/update", b'{"chat_tts_prefix": "\xed\xa0\x80"}'),  # the same surrogate as raw bytes
])
async def test_json_with_a_lone_surrogate_is_400(client, path: str, body: bytes) -> None:
    """JSON can spell a lone surrogate, which is no text: it was stored or echoed and failed there (500)."""
    from tests.helpers import bearer, make_user

    _, token = await make_user(client.server.app)
    resp = await client.post(path, data=body, headers={**bearer(token), "Content-Type": "application/json"})
    assert resp.status == 400
    assert await resp.json() == {"detail": "invalid JSON", "code": "bad_request"}
    pair = await client.post("/v2/settings/update", data=b'{"chat_tts_prefix": "\\ud83d\\ude00"}',
                             headers={**bearer(token), "Content-Type": "application/json"})
    assert (await pair.json())["settings"]["chat_tts_prefix"] == "\U0001F600"  # a surrogate pair is text


async def test_tokens_never_reach_the_log(client, caplog) -> None:
    import logging

    from tests.helpers import make_user

    _, token = await make_user(client.server.app)
    caplog.set_level(logging.DEBUG)
    ws = await client.ws_connect(f"/v2/ws?token={token}&demo=1")
    await ws.close()
    await client.get(f"/ws/{token}")
    await client.get("/v2/auth/me", headers={"Authorization": f"Bearer {token}"})
    # aiohttp.access is the test server's own logger; production serve() and setup_logging() silence it.
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ttboost"))
    assert "token=***" in text and "/ws/***" in text
    assert token not in text and token.split(".")[2] not in text


def test_logging_setup_silences_loggers_that_would_print_secrets() -> None:
    import logging

    from ttboost.logsetup import setup_logging

    names = ("", "aiohttp.access", "aiosqlite")
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        setup_logging("DEBUG")
        assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("env", "needle"), [
    ({"TTBOOST_SERVER_PUBLIC_URL": "example.com"}, "server.public_url"),
    ({"TTS_BASE_URL": "cdn.example.com"}, "server.media_url"),
    ({"TTBOOST_SERVER_TRUSTED_PROXIES": "localhost"}, "trusted_proxies"),
    ({"TTBOOST_SERVER_CORS_ORIGINS": "https://app.example/path"}, "cors_origins"),
])
def test_unusable_urls_and_addresses_stop_the_start(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, env=env)


def test_good_urls_and_addresses_are_accepted() -> None:
    cfg = load_config(None, env={"TTBOOST_SERVER_PUBLIC_URL": "https://live.example.com",
                                 "TTBOOST_SERVER_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8,::1",
                                 "TTBOOST_SERVER_CORS_ORIGINS": "https://app.example.com,http://localhost:3000"})
    assert cfg.server.cors_origins == ("https://app.example.com", "http://localhost:3000")


async def test_server_header_names_no_versions(client) -> None:
    for resp in (await client.get("/health"), await client.get("/nothing")):
        assert resp.headers["Server"] == "TTBoost"
