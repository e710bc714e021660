"""GET /v2/openapi.json: complete, valid OpenAPI 3, and built from the very schemas the handlers validate with."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import hdrs, web
from marshmallow import fields
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from tests.conftest import ClientFactory, make_config
from tests.fake_tts import FakeEngine
from tests.helpers import bearer, make_user
from ttboost import __version__
from ttboost.api.common import load_body
from ttboost.app import create_app
from ttboost.errors import error_middleware
from ttboost.openapi import UndocumentedRouteError, build_document, docs, docs_of, documented_routes, schema_name
from ttboost.schemas import LoginSchema, RedeemSchema

API_KEY = "web-key-for-tests"
ERROR_REF = "#/components/schemas/Error"


async def get_document(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/v2/openapi.json")  # public: no token
    assert resp.status == 200
    assert resp.content_type == "application/json"
    return await resp.json()


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in doc["paths"].items() for method, op in item.items()}


def fill_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1.mp3", path)  # with an extension: DELETE /v2/sounds/{filename} needs one


async def test_document_is_valid_openapi_3(client: TestClient) -> None:
    doc = await get_document(client)
    validate(doc)  # openapi-spec-validator: the document against the OpenAPI 3.0 meta-schema
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["version"] == __version__
    assert doc["servers"] == [{"url": "http://testserver"}]  # the configured public URL
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer",
                                                              "bearerFormat": "JWT"}
    again = await client.get("/v2/openapi.json")
    assert await again.json() == doc  # built once, then served from memory


async def test_every_route_is_an_operation_and_nothing_else(client: TestClient) -> None:
    doc = await get_document(client)
    ops = operations(doc)
    routes = {(r.method, r.resource.canonical) for r in client.server.app.router.routes() if r.resource is not None}
    api_routes = {(m, p) for m, p in routes if m != hdrs.METH_HEAD}
    assert set(ops) == api_routes
    # aiohttp's automatic HEAD twins are covered by their GET
    assert {("GET", p) for m, p in routes if m == hdrs.METH_HEAD} <= set(ops)
    assert len({op["operationId"] for op in ops.values()}) == len(ops)
    for (method, path), op in ops.items():
        assert op["summary"] and op["tags"] and op["responses"], (method, path)


async def test_request_bodies_are_the_schemas_load_body_uses(client: TestClient) -> None:
    doc = await get_document(client)
    ops = operations(doc)
    components = doc["components"]["schemas"]
    body_routes = [(m, p, info) for m, p, _h, info in documented_routes(client.server.app) if info.body is not None]
    assert len(body_routes) >= 14  # every JSON POST of the API
    for method, path, info in body_routes:
        content = ops[(method, path)]["requestBody"]["content"]
        assert list(content) == ["application/json"], path
        name = schema_name(info.body)
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}, path
        declared = info.body().fields
        assert set(components[name]["properties"]) == {f.data_key or n for n, f in declared.items()}, path
        # unknown fields are ignored (spec §2): the document must not promise a 422 for them
        assert components[name].get("additionalProperties", True) is not False, path


async def test_handlers_validate_with_their_documented_schema(make_client: ClientFactory) -> None:
    """load_body refuses a schema other than the route's @docs body; a wrong-typed known field proves the schema
    ran, and an unknown one beside it is no error."""
    client = await make_client(auth={"web_issue_api_key": API_KEY})
    _user_id, token = await make_user(client.server.app)
    headers = {**bearer(token), "Web-Api-Key": API_KEY}
    for method, path, _handler, info in documented_routes(client.server.app):
        if info.body is None:
            continue
        name, field = next((n, f) for n, f in info.body().load_fields.items()
                           if not isinstance(f, (fields.Raw, fields.Dict)) or isinstance(f, fields.String))
        key = field.data_key or name
        resp = await client.request(method, fill_path(path), json={"not_a_field": 1, key: {"x": 1}},
                                    headers=headers)
        assert resp.status == 422, (method, path, await resp.text())
        errors = (await resp.json())["fields"]
        assert key in errors and "not_a_field" not in errors, path


async def test_load_body_with_another_schema_is_a_bug(aiohttp_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    @docs("documented with LoginSchema", tags=["t"], body=LoginSchema, responses={200: "ok"})
    async def drifted(request: web.Request) -> web.Response:
        await load_body(request, RedeemSchema())
        return web.Response()

    async def undocumented(request: web.Request) -> web.Response:
        await load_body(request, RedeemSchema())
        return web.Response()

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/drifted", drifted)
    app.router.add_post("/undocumented", undocumented)
    client = await aiohttp_client(app)
    for path in ("/drifted", "/undocumented"):
        resp = await client.post(path, json={"license_key": "TTB-AAAA-BBBB-CCCC"})
        assert resp.status == 500
    assert "load_body with RedeemSchema" in caplog.text


async def test_errors_are_the_envelope_and_requests_get_only_documented_statuses(make_client: ClientFactory) -> None:
    client = await make_client(auth={"web_issue_api_key": API_KEY})
    doc = await get_document(client)
    assert doc["components"]["schemas"]["Error"]["required"] == ["code", "detail"]
    for (method, path), op in operations(doc).items():
        for status, response in op["responses"].items():
            if int(status) >= 400 and path != "/health":  # /health's 503 is its own body, for monitors
                assert response["content"] == {"application/json": {"schema": {"$ref": ERROR_REF}}}, (path, status)
        # Without credentials: 401 exactly where the document asks for them, and only documented statuses.
        resp = await client.request(method, fill_path(path), json={})
        assert str(resp.status) in op["responses"], (method, path, resp.status)
        if op["security"]:
            assert resp.status == 401, (method, path)


async def test_upload_websockets_and_path_parameters(client: TestClient) -> None:
    ops = operations(await get_document(client))
    upload = ops[("POST", "/v2/sounds/upload")]["requestBody"]["content"]
    assert upload == {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/UploadForm"}}}
    assert "413" in ops[("POST", "/v2/sounds/upload")]["responses"]

    ws = ops[("GET", "/v2/ws")]
    assert "101" in ws["responses"] and "401" in ws["responses"]
    assert {p["name"] for p in ws["parameters"] if p["in"] == "query"} == {"token", "since", "demo", "timing"}
    assert ws["security"] == [{"bearer": []}, {"queryToken": []}]
    assert "101" in ops[("GET", "/ws/{token}")]["responses"]

    for (_method, path), op in ops.items():
        names = re.findall(r"\{([^}]+)\}", path)
        params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "path"}
        assert set(params) == set(names), path
        assert all(p["required"] for p in params.values()), path


async def test_main_successes_have_response_schemas(client: TestClient) -> None:
    ops = operations(await get_document(client))
    expected = {("POST", "/v2/auth/login"): "TokenResponse", ("GET", "/v2/auth/me"): "Me",
                ("GET", "/v2/settings"): "SettingsResponse", ("POST", "/v2/triggers/set"): "TriggerResponse",
                ("GET", "/v2/sounds/list"): "SoundList", ("POST", "/v2/sounds/upload"): "UploadedSound",
                ("POST", "/v2/tts/generate"): "Speech", ("GET", "/v2/voices"): "VoiceList"}
    for key, name in expected.items():
        ok = ops[key]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{name}"}, key


async def test_me_response_schema_matches_a_real_answer(client: TestClient) -> None:
    """The docs-only response schemas name exactly the keys the handlers send."""
    doc = await get_document(client)
    schemas = doc["components"]["schemas"]
    _user_id, token = await make_user(client.server.app)
    me = await (await client.get("/v2/auth/me", headers=bearer(token))).json()
    assert set(schemas["Me"]["required"]) == set(me)
    assert set(schemas["Settings"]["required"]) == set(me["settings"])


def test_a_route_without_docs_fails_the_build(tmp_path: Any) -> None:
    app = create_app(make_config(tmp_path / "data"), tts_engine=FakeEngine())

    async def forgotten(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/v2/forgotten", forgotten)
    assert docs_of(forgotten) is None
    with pytest.raises(UndocumentedRouteError, match="POST /v2/forgotten"):
        build_document(app)


async def test_a_route_without_docs_stops_the_server(tmp_path: Any) -> None:
    app = create_app(make_config(tmp_path / "data"), tts_engine=FakeEngine())

    async def forgotten(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v2/forgotten", forgotten)
    runner = web.AppRunner(app)
    with pytest.raises(UndocumentedRouteError, match="GET /v2/forgotten"):
        await runner.setup()  # the check runs first at startup: nothing was opened yet
    assert not (tmp_path / "data" / "ttboost.db").exists()


async def test_cors_preflight_routes_are_not_operations(make_client: ClientFactory) -> None:
    client = await make_client(server={"public_url": "http://testserver", "cors_origins": ["https://app.example"]})
    doc = await get_document(client)
    assert not any("options" in item for item in doc["paths"].values())
    resp = await client.post("/v2/auth/login", json={}, headers={"Origin": "https://app.example"})
    assert resp.status == 422  # the handler load_body checks is still the documented one under CORS
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
