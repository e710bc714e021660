"""The app shell: health, the one error envelope for unknown routes and methods, config validation."""

from __future__ import annotations

import pytest

from ttboost.config import ConfigError, load_config


async def test_health_reports_ok_without_secrets(client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["db"] == "ok"
    assert set(body) == {"status", "version", "uptime_s", "db", "live_sessions", "ws_clients"}
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
