"""Account endpoints: /v2/auth/* (redeem-license, login, me, password) and the legacy POST /auth/login."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from .. import accounts, keys, licenses
from ..errors import ApiError, json_response
from ..openapi import docs
from ..schemas import LegacyLoginSchema, LoginSchema, PasswordChangeSchema, RedeemLicenseSchema
from .common import authenticate, limit_by_ip, load_body
from .responses import (HASH_BUSY, IP_RATE_LIMITED, LICENSE_ERRORS, LegacyLoginResponseSchema, MeSchema,
                        TokenResponseSchema)

_LOGGER = logging.getLogger(__name__)

routes = web.RouteTableDef()

# Settings /me repeats at the top level: the original app's screens and tools read them there (spec §4).
ME_FLAT_SETTINGS: Final = ("voice_id", "tts_enabled", "tts_volume", "gifts_volume")


@routes.post("/v2/auth/redeem-license")
@docs("First login with a license key (creates the account, or logs in and binds the key)", tags=["auth"],
      security=(), body=RedeemLicenseSchema,
      responses={200: TokenResponseSchema, 401: "invalid credentials (existing account, wrong password)",
                 **LICENSE_ERRORS, 429: IP_RATE_LIMITED,
                 503: f"{HASH_BUSY}; or the account changed meanwhile"})
async def redeem_license(request: web.Request) -> web.Response:
    await limit_by_ip(request, "auth")
    body = await load_body(request, RedeemLicenseSchema())
    app = request.app
    user, claimed = await accounts.redeem_license(app[keys.DB], app[keys.PASSWORDS], username=body["username"],
                                                  password=body["password"], license_key=body["license_key"])
    if claimed:  # the cached settings resolved tiktok_username from the old, empty username
        app[keys.SETTINGS].invalidate(user.id)
    request[keys.USER_ID] = user.id
    return json_response(await accounts.token_response(app[keys.DB], app[keys.TOKENS], user))


@routes.post("/v2/auth/login")
@docs("Log in with username and password", tags=["auth"], security=(), body=LoginSchema,
      responses={200: TokenResponseSchema, 401: "invalid credentials", 429: IP_RATE_LIMITED, 503: HASH_BUSY})
async def login(request: web.Request) -> web.Response:
    await limit_by_ip(request, "auth")
    body = await load_body(request, LoginSchema())
    app = request.app
    user = await accounts.login(app[keys.DB], app[keys.PASSWORDS], body["username"], body["password"])
    request[keys.USER_ID] = user.id
    return json_response(await accounts.token_response(app[keys.DB], app[keys.TOKENS], user))


@routes.get("/v2/auth/me")
@docs("The logged-in account, its license and settings", tags=["auth"],
      responses={200: MeSchema, 429: "too many failed attempts from this IP; see Retry-After"})
async def me(request: web.Request) -> web.Response:
    # The app polls /me with a valid token; only failed attempts (token guessing) count against the
    # per-IP auth limit, or a polling app would lock itself out.
    try:
        user = await authenticate(request)
    except ApiError:
        await limit_by_ip(request, "auth")
        raise
    app = request.app
    plan = await licenses.plan_for_user(app[keys.DB], user.id)
    plan_config = app[keys.CONFIG].plan(plan.plan_id) if plan.plan_id else None
    settings = await app[keys.SETTINGS].get(user.id)
    return json_response({
        "id": user.id,
        "username": user.username,
        "tiktok_username": settings.get("tiktok_username") or user.username,
        "plan": plan.plan_id,
        # A plan removed from the config after the key was sold still shows something readable.
        "plan_name": plan_config.name if plan_config else plan.plan_id,
        "license_expires_at": plan.expires_at,
        "license_active": plan.active,
        "created_at": user.created_at,
        "settings": settings,
        **{key: settings[key] for key in ME_FLAT_SETTINGS},
    })


@routes.post("/v2/auth/password")
@docs("Change the password; every earlier token is revoked and a new one returned", tags=["auth"],
      body=PasswordChangeSchema, responses={200: TokenResponseSchema, 401: "invalid token | invalid credentials",
                                            429: IP_RATE_LIMITED, 503: HASH_BUSY})
async def change_password(request: web.Request) -> web.Response:
    await limit_by_ip(request, "auth")
    user = await authenticate(request)
    body = await load_body(request, PasswordChangeSchema())
    app = request.app
    updated = await accounts.change_password(app[keys.DB], app[keys.PASSWORDS], user,
                                             body["current_password"], body["new_password"])
    await app[keys.REVOCATION].check(user.id)  # this process's sockets of the old token: 4002 now
    return json_response(await accounts.token_response(app[keys.DB], app[keys.TOKENS], updated))


@routes.post("/auth/login")
@docs("Legacy login with the license key alone (first mobile build)", tags=["legacy"], security=(),
      body=LegacyLoginSchema,
      responses={200: LegacyLoginResponseSchema, 404: LICENSE_ERRORS[404], 429: IP_RATE_LIMITED,
                 403: f"{LICENSE_ERRORS[403]} | password required (the key's account has a password: use "
                      "/v2/auth/login)"})
async def legacy_login(request: web.Request) -> web.Response:
    await limit_by_ip(request, "auth")
    body = await load_body(request, LegacyLoginSchema())
    app = request.app
    user = await accounts.legacy_login(app[keys.DB], body["license_key"])
    request[keys.USER_ID] = user.id
    return json_response(accounts.legacy_response(app[keys.TOKENS], app[keys.CONFIG], user))
