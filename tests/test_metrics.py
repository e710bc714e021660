"""GET /metrics: who may read it, and the series that need no LIVE (HTTP, speech, slow clients, event log)."""

from __future__ import annotations

import pytest

from tests.conftest import make_config
from tests.helpers import bearer, make_user, sample_sum, scrape
from ttboost.config import ConfigError, load_config


async def test_loopback_reads_metrics_by_default(client) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    for name in ("ttboost_event_latency_seconds", "ttboost_pipeline_latency_seconds",
                 "ttboost_speech_synthesis_seconds", "ttboost_speech_queue_depth", "ttboost_live_sessions",
                 "ttboost_open_sockets", "ttboost_http_request_duration_seconds", "ttboost_slow_client_closes_total",
                 "ttboost_event_log_write_errors_total", "ttboost_event_log_pending_rows"):
        assert f"# TYPE {name} " in text, name


@pytest.mark.parametrize("allow", [("10.0.0.0/8",), ()])
async def test_an_address_outside_metrics_allow_gets_404(make_client, allow) -> None:
    client = await make_client(server={"metrics_allow": allow})
    resp = await client.get("/metrics")
    assert resp.status == 404
    assert await resp.json() == {"detail": "not found", "code": "not_found"}


async def test_behind_a_proxy_the_forwarded_client_decides(make_client) -> None:
    client = await make_client(server={"metrics_allow": ("10.0.0.0/8",), "trusted_proxies": ("127.0.0.1",)})
    assert (await client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})).status == 200
    assert (await client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})).status == 404
    assert (await client.get("/metrics")).status == 404  # the proxy itself is not in metrics_allow


async def test_a_forwarded_request_through_an_untrusted_proxy_is_refused(client) -> None:
    # Loopback is allowed, but a request a local reverse proxy forwarded is not the proxy's own scrape.
    for header in ("X-Forwarded-For", "Forwarded"):
        assert (await client.get("/metrics", headers={header: "127.0.0.1"})).status == 404


@pytest.mark.parametrize("header", ["X-Real-IP", "X-Forwarded-Proto", "X-Forwarded-Host", "Via"])
async def test_a_proxy_that_sends_no_x_forwarded_for_is_still_refused(make_client, header) -> None:
    # nginx configured with only `proxy_set_header X-Real-IP $remote_addr` (a common snippet) forwards no
    # X-Forwarded-For; its loopback peer must not open /metrics to the internet, trusted or not.
    for trusted in ((), ("127.0.0.1",)):
        client = await make_client(server={"trusted_proxies": trusted})
        assert (await client.get("/metrics", headers={header: "203.0.113.9"})).status == 404, trusted


async def test_http_requests_are_counted_by_route_pattern_and_status_class(client) -> None:
    _, token = await make_user(client.server.app)
    assert (await client.get("/v2/auth/me", headers=bearer(token))).status == 200
    assert (await client.get("/v2/auth/me")).status == 401
    assert (await client.delete("/v2/sounds/a.mp3", headers=bearer(token))).status == 404
    assert (await client.get("/no/such/path/123")).status == 404
    ws = await client.ws_connect(f"/v2/ws?token={token}&demo=0")  # a socket's life is no request time
    await ws.receive()
    await ws.close()
    assert (await client.get("/v2/ws?token=bad")).status == 401  # but a refusal before the upgrade is
    samples = await scrape(client)
    count = "ttboost_http_request_duration_seconds_count"
    assert sample_sum(samples, count, route="/v2/auth/me", status="2xx", method="GET") == 1
    assert sample_sum(samples, count, route="/v2/auth/me", status="4xx") == 1
    assert sample_sum(samples, count, route="/v2/sounds/{filename}", status="4xx", method="DELETE") == 1
    assert sample_sum(samples, count, route="unmatched", status="4xx") == 1
    assert not any("/no/such" in dict(labels).get("route", "") for _, labels in samples)
    assert sample_sum(samples, count, route="/v2/ws") == sample_sum(samples, count, route="/v2/ws", status="4xx") == 1


async def test_speech_synthesis_is_timed_by_engine(client) -> None:
    _, token = await make_user(client.server.app)
    resp = await client.post("/v2/tts/generate", json={"text": "привет"}, headers=bearer(token))
    assert resp.status == 200
    samples = await scrape(client)
    assert sample_sum(samples, "ttboost_speech_synthesis_seconds_count", engine="fake") == 1
    assert sample_sum(samples, "ttboost_speech_queue_depth") == 0


def test_metrics_allow_entries_must_be_networks(tmp_path) -> None:
    with pytest.raises(ConfigError, match="metrics_allow"):
        load_config(None, env={"TTBOOST_SERVER_METRICS_ALLOW": "127.0.0.1,localhost"})
    assert make_config(tmp_path).server.metrics_allow == ("127.0.0.0/8", "::1/128")
