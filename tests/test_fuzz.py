"""schemathesis against GET /v2/openapi.json of the real app on a local port: no 5xx, every error in the envelope.

Bounded to stay fast: schemathesis' coverage phase (boundary values, wrong types, missing fields: deterministic)
plus a few generated examples per operation, derandomized. bench/fuzz.py is the long run.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.fuzzing import WEBSOCKET_TAG, LiveServer, envelope_check, envelope_problem

MAX_EXAMPLES = 8  # generated cases per operation, on top of the coverage phase: ~1200 requests, ~6 s


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("fuzz") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def live_schema(live_server: LiveServer) -> Any:
    """The document as the server serves it (the fuzzer reads it like any client would)."""
    return schemathesis.openapi.from_url(f"{live_server.base_url}/v2/openapi.json",
                                         config=schemathesis.Config.from_dict({}))


# A WebSocket upgrade is no request/response exchange schemathesis could drive.
schema = schemathesis.pytest.from_fixture("live_schema").exclude(tag=WEBSOCKET_TAG)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          # a live server is slow next to an in-process function; generated bodies can be large
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
def test_api_fuzz(case: schemathesis.Case, live_server: LiveServer) -> None:
    case.call_and_validate(base_url=live_server.base_url, headers=live_server.headers,
                           checks=[not_a_server_error, envelope_check])


def test_fuzzed_document_is_served_publicly(live_server: LiveServer) -> None:
    resp = requests.get(f"{live_server.base_url}/v2/openapi.json", timeout=10)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["servers"] == [{"url": live_server.base_url}]
    assert {"/v2/sounds/upload", "/v2/triggers/set", "/v2/ws"} <= set(doc["paths"])


@pytest.mark.parametrize(("status", "content_type", "body", "ok"), [
    (422, "application/json", {"detail": "validation error", "code": "validation_error", "fields": {"x": ["bad"]}},
     True),
    (404, "application/json; charset=utf-8", {"detail": "not found", "code": "not_found"}, True),
    (200, "text/plain", "anything", True),  # successes are not the check's business
    (400, "text/plain", b"Bad Request", False),
    (500, "application/json", ["detail", "code"], False),
    (401, "application/json", {"detail": "invalid token"}, False),
    (409, "application/json", {"detail": "", "code": "x"}, False),
    (422, "application/json", {"detail": "d", "code": "c", "fields": {"x": "not a list"}}, False),
])
def test_the_envelope_check_fails_on_what_it_must(status: int, content_type: str, body: object, ok: bool) -> None:
    assert (envelope_problem(status, content_type, body) is None) is ok
