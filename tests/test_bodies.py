"""What a JSON body or socket message may be (spec §2): depth 32 at the edge, no NaN/Infinity/1e309, lone surrogates."""

from __future__ import annotations

import json

import pytest

from tests.helpers import bearer, make_user
from tests.fake_live import ScriptedSource
from tests.test_ws import recv, recv_type
from ttboost.bodies import MAX_DEPTH, BodySchema, InvalidJSON, parse_json
from ttboost.openapi import documented_routes, schema_name


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def nested_object(depth: int) -> str:
    """{"tts_volume": 5, "x": [[...]]}: an object `depth` levels deep in all, a valid update otherwise."""
    return '{"tts_volume": 5, "x": ' + nested(depth - 1) + "}"


@pytest.mark.parametrize("raw", [
    nested(MAX_DEPTH + 1), nested(1000), nested(100_000), '{"a": ' * 5000 + "1" + "}" * 5000,
    "NaN", "[Infinity]", '{"a": -Infinity}', "1e309", "[-1e400]", '"\\ud800"', '{"\\udfff": 1}', "1" * 5000,
    b"\xff\xfe", "{", "",
])
def test_parse_json_refuses(raw: str | bytes) -> None:
    with pytest.raises(InvalidJSON):
        parse_json(raw)


def test_parse_json_edges() -> None:
    assert parse_json(nested(MAX_DEPTH)) is not None
    assert parse_json("1e308") == 1e308
    assert parse_json('"\\ud83d\\ude00"') == "😀"  # a surrogate pair is a character


async def test_http_bodies_at_the_depth_edge(make_client) -> None:
    client = await make_client()
    _, token = await make_user(client.app)
    resp = await client.post("/v2/settings/update", data=nested_object(MAX_DEPTH), headers=bearer(token))
    assert resp.status == 200, await resp.text()
    for raw in (nested_object(MAX_DEPTH + 1), nested(1000), '{"tts_volume": NaN}', '{"tts_volume": 1e309}'):
        resp = await client.post("/v2/settings/update", data=raw, headers=bearer(token))
        assert (resp.status, await resp.json()) == (400, {"detail": "invalid JSON", "code": "bad_request"})
    # no login needed to send one: still a 400, not a 500
    resp = await client.post("/v2/auth/login", data=nested(1000))
    assert resp.status == 400


async def test_socket_messages_that_broke_the_parser_get_bad_request(make_client) -> None:
    client = await make_client(live_source=ScriptedSource())
    _, token = await make_user(client.app)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    assert (await recv(ws))["type"] == "status"
    for raw in ('{"action": "resume", "since": Infinity}', '{"action": "resume", "since": 1e309}',
                '{"action": "resume", "since": 1.5}', '{"action": "resume", "since": 99999999999999999999}',
                '{"action": "resume", "since": true}', nested(5000), '{"action": "ping", "x": ' + nested(40) + "}"):
        await ws.send_str(raw)
        frame = await recv_type(ws, "error")  # status frames of the LIVE watch may come between
        assert frame["code"] == "bad_request", raw
    await ws.send_str(json.dumps({"action": "ping", "unknown": 1}))
    assert (await recv_type(ws, "pong"))["type"] == "pong"  # still open, and unknown fields are no error here either
    await ws.close()


async def test_every_body_is_a_body_schema_with_bounded_numbers(client) -> None:
    """New routes inherit the rules: their body schema is a BodySchema, and every integer has both bounds."""
    doc = await (await client.get("/v2/openapi.json")).json()
    components = doc["components"]["schemas"]
    bodies = [info.body for *_rest, info in documented_routes(client.server.app) if info.body is not None]
    assert bodies
    for body in bodies:
        assert issubclass(body, BodySchema), body
        pending = [components[schema_name(body)]]
        while pending:
            schema = pending.pop()
            for name, prop in schema.get("properties", {}).items():
                if "$ref" in prop:
                    pending.append(components[prop["$ref"].rsplit("/", 1)[1]])
                if prop.get("type") == "integer" or "integer" in prop.get("type", []):
                    assert "minimum" in prop and "maximum" in prop, (body.__name__, name, prop)
