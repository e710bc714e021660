"""What every handler shares: JSON body loading through a schema, the Bearer check, rate limits."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .. import keys
from ..bodies import BodySchema, InvalidJSON, parse_json
from ..errors import ApiError, invalid_token, validation_error
from ..openapi import docs_of
from ..ratelimit import ip_bucket
from ..users import User, get_user


async def load_body(request: web.Request, schema: BodySchema) -> dict[str, Any]:
    """The request's JSON object validated by schema (unknown fields dropped, known ones strict: spec §2);
    size limited by the app.

    schema must be the body schema of the route's @docs, so the OpenAPI document cannot describe another one.
    """
    documented = docs_of(request.match_info.route.handler)
    if not isinstance(schema, BodySchema) or documented is None or documented.body is not type(schema):
        raise RuntimeError(f"{request.method} {request.path}: load_body with {type(schema).__name__}, "
                           f"but the route's @docs body is {documented and documented.body}")
    timeout = request.app[keys.CONFIG].server.body_timeout
    try:
        # A body trickled a byte at a time would hold the handler, and the connection, for ever: such a
        # connection counts as busy, so header_timeout never closes it and the connection cap never frees it.
        async with asyncio.timeout(timeout if timeout > 0 else None):
            raw = await request.read()  # client_max_size (limits.max_body_bytes) answers 413 past the limit
    except TimeoutError:
        raise ApiError(408, "request timeout", "request_timeout", headers={"Connection": "close"}) from None
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = parse_json(raw)
        except InvalidJSON:
            raise ApiError(400, "invalid JSON", "bad_request") from None
    if not isinstance(data, dict):
        raise validation_error({"_schema": ["a JSON object is required"]})
    return schema.load(data)  # ValidationError → 422 in the error middleware


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def user_for_token(request: web.Request, token: str | None) -> User:
    """The token's user, or 401 `invalid token` (missing, bad, expired, or revoked by a password change)."""
    claims = request.app[keys.TOKENS].decode(token) if token else None
    if claims is None:
        raise invalid_token()
    user = await get_user(request.app[keys.DB], claims.user_id)
    if user is None or user.token_version != claims.version:
        raise invalid_token()
    request[keys.USER_ID] = user.id  # for the request log line
    return user


async def authenticate(request: web.Request) -> User:
    return await user_for_token(request, bearer_token(request))


async def limit_by_ip(request: web.Request, name: str) -> None:
    await request.app[keys.LIMITERS][name].check(ip_bucket(request.app[keys.CLIENT_IP](request)))


async def limit_by_user(request: web.Request, name: str, user: User) -> None:
    await request.app[keys.LIMITERS][name].check(f"user:{user.id}")
