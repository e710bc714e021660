"""A corpus of malformed input thrown at every route and at the socket (issue 9): never a 5xx, every error in
the envelope with `Server: TTBoost`, the socket stays a WebSocket, and the log holds no traceback or error."""

from __future__ import annotations

import json
import logging
import re

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.fuzzing import envelope_problem
from tests.helpers import make_user
from tests.test_protocol import Site, site  # noqa: F401  (the hardened server on a local port)
from ttboost import keys
from ttboost.openapi import documented_routes

DEEP = 1000  # levels: past Python's recursion limit in the C decoder
BODIES: list[bytes] = [
    b"[" * DEEP + b"]" * DEEP,
    b'{"a": ' * DEEP + b"1" + b"}" * DEEP,
    b"[" * 33 + b"]" * 33,
    b"NaN", b'{"tts_volume": Infinity, "text": "x"}', b'{"count": 1e309, "since": -1e999}',
    b'{"text": "\\ud800", "username": "\\udfff"}',
    b"\xff\xfe\x00{", b'{"text": "caf\xe9"}',  # not UTF-8
    b"1" * 5000, b'{"id": ' + b"9" * 5000 + b"}",
    b'{"id": 99999999999999999999999999999, "priority": -1e30, "tts_volume": 1e400}',
    json.dumps({"text": "a\u0000b", "username": "x\u0000", "password": "secret1\u0000", "license_key": "\u0000",
                "filename": "a\u0000.mp3", "order_id": "\u0000", "plan": "\u0000"}).encode(),
    json.dumps({"enabled": "yes", "force": 1, "tts_enabled": "true", "once_per_stream": 0}).encode(),
    b'{"action_params": ' + b"[" * 40 + b"]" * 40 + b"}",
    b"", b"{", b"null", b"[]", b'"x"',
]


def fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1.mp3", path)


def clean_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Records that would be a problem: errors, and anything with a traceback."""
    return [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_every_route_survives_the_corpus(site: Site, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO)
    app: web.Application = site.app
    _user_id, token = await make_user(app)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    routes = [(m, p) for m, p, _h, _i in documented_routes(app) if m != "HEAD"]
    assert len(routes) >= 30
    problems = []
    # limits off: the corpus should reach the handlers, not the 429s
    for limiter in app[keys.LIMITERS].values():
        limiter.limit = 0
    async with aiohttp.ClientSession(f"http://127.0.0.1:{site.port}") as session:
        for method, path in routes:
            for body in BODIES:
                async with session.request(method, fill(path), data=body, headers=headers) as resp:
                    raw = await resp.read()
                    status, ctype = resp.status, resp.headers.get("Content-Type", "")
                    try:
                        data = json.loads(raw) if ctype.startswith("application/json") else raw
                    except ValueError:
                        data = raw
                    problem = envelope_problem(status, ctype, data)
                    # 503 `web issuing disabled` is the spec's answer of issue-web with no key configured
                    expected_503 = status == 503 and isinstance(data, dict) and data.get("code") == \
                        "web_issuing_disabled"
                    if (status >= 500 and not expected_503) or problem or resp.headers.get("Server") != "TTBoost":
                        problems.append(f"{method} {path} {body[:40]!r}: {status} {problem or ''}")
    assert problems == [], "\n".join(problems)
    assert clean_log(caplog) == []


QUERIES = ["?limit=1e309&before=99999999999999999999999&after_seq=-1&since=NaN&speed=Infinity",
           "?limit=%00&before=%ff&since=9" + "9" * 5000 + "&force=yes&demo=%00&token=%00&key=%ff",
           "?" + "&".join(f"p{i}=1" for i in range(2000))]


async def test_every_get_survives_malformed_queries(site: Site, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO)
    _user_id, token = await make_user(site.app)
    problems = []
    async with aiohttp.ClientSession(f"http://127.0.0.1:{site.port}") as session:
        for method, path, _h, _i in documented_routes(site.app):
            for query in QUERIES:
                url = URL(f"http://127.0.0.1:{site.port}{fill(path)}{query}", encoded=True)
                async with session.request(method, url, headers={"Authorization": f"Bearer {token}"}) as resp:
                    raw = await resp.read()
                    ctype = resp.headers.get("Content-Type", "")
                    data = json.loads(raw) if ctype.startswith("application/json") else raw
                    problem = envelope_problem(resp.status, ctype, data)
                    if resp.status >= 500 and not (isinstance(data, dict) and data.get("code") ==
                                                   "web_issuing_disabled") or problem:
                        problems.append(f"{method} {path}{query[:40]}: {resp.status} {problem or ''}")
    assert problems == [], "\n".join(problems)
    assert clean_log(caplog) == []


@pytest.mark.parametrize("header", [b"X-Big: " + b"a" * 9000, b"X-Nul: a\x00b", b"X-Bad\xff: 1",
                                    b"Content-Length: -1", b"Content-Length: 99999999999999999999999"])
async def test_every_route_answers_bad_headers_in_the_envelope(site: Site, header: bytes,  # noqa: F811
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for method, path, _h, _i in documented_routes(site.app):
        raw = f"{method} {fill(path)} HTTP/1.1\r\nHost: x\r\n".encode() + header + b"\r\n\r\n"
        status, headers, body = await site.exchange(raw)
        assert 400 <= status < 500, (method, path, status)
        assert headers["server"] == "TTBoost" and json.loads(body)["code"], (method, path)
    assert clean_log(caplog) == []


async def test_no_405_advertises_a_method_the_document_lacks(site: Site) -> None:  # noqa: F811
    documented: dict[str, set[str]] = {}
    for method, path, _h, _i in documented_routes(site.app):
        documented.setdefault(path, set()).add(method)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{site.port}") as session:
        for path, methods in documented.items():
            async with session.request("PATCH", fill(path)) as resp:
                if resp.status == 405:
                    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
                    assert allowed <= methods | {"HEAD"}, (path, allowed, methods)


SOCKET_CORPUS: list[str | bytes] = [
    "[" * DEEP + "]" * DEEP, '{"action": ' * 5000 + "1" + "}" * 5000, '{"action": "resume", "since": Infinity}',
    '{"action": "resume", "since": 1e309}', '{"action": "resume", "since": NaN}',
    '{"action": "resume", "since": ' + "9" * 5000 + "}", '{"action": "resume", "since": -1}',
    '{"action": "resume", "since": "1e3"}', '{"action": "connect_tiktok", "username": "a\\u0000b"}',
    '{"action": "connect_tiktok", "username": ["x"]}', '{"action": "\\ud800"}', '{"action": null}',
    "not json", "", "null", "[]", '"ping"', '{"action": "ping"', b"\x00\xff binary",
]


async def test_the_socket_survives_the_corpus(site: Site, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO)
    _user_id, token = await make_user(site.app, "socketeer")  # licensed: an unlicensed socket closes at once
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://127.0.0.1:{site.port}/v2/ws?token={token}&demo=1")
        for message in SOCKET_CORPUS:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
            while True:  # the answer, past status and demo frames
                try:
                    msg = await ws.receive(timeout=5)
                except TimeoutError:
                    raise AssertionError(f"no answer to {message[:60]!r}") from None
                assert msg.type is aiohttp.WSMsgType.TEXT, (message[:40], msg)
                frame = msg.json()
                if frame["type"] == "error":
                    assert frame["code"] == "bad_request", message[:40]
                    break
        await ws.send_json({"action": "ping"})
        while (await ws.receive_json(timeout=5))["type"] != "pong":
            pass
        await ws.close()
    assert clean_log(caplog) == []
