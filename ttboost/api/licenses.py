"""License endpoints: the web shop's POST /v2/license/issue-web and a user's POST /v2/license/redeem."""

from __future__ import annotations

import logging

from aiohttp import web

from .. import accounts, keys, licenses
from ..errors import ApiError, json_response
from ..openapi import WEB_API_KEY, docs
from ..schemas import IssueWebSchema, RedeemSchema
from ..security import constant_time_equals
from .common import authenticate, limit_by_ip, limit_by_user, load_body
from .responses import IP_RATE_LIMITED, LICENSE_ERRORS, IssuedLicenseSchema, RedeemedSchema

_LOGGER = logging.getLogger(__name__)

routes = web.RouteTableDef()


async def _check_web_api_key(request: web.Request) -> None:
    expected = request.app[keys.CONFIG].auth.web_issue_api_key
    if not expected:  # never open: an unset key disables the endpoint
        raise ApiError(503, "web issuing disabled", "web_issuing_disabled")
    given = request.headers.get("Web-Api-Key", "")
    if not constant_time_equals(given, expected):
        client = request.app[keys.CLIENT_IP](request)
        _LOGGER.warning("issue-web: wrong or missing Web-Api-Key from %s", client)
        # Wrong keys share the per-IP auth budget: guessing the key costs 10 tries a minute, not thousands.
        await limit_by_ip(request, "auth")
        raise ApiError(401, "invalid api key", "invalid_api_key")


@routes.post("/v2/license/issue-web")
@docs("Issue a license key for a web shop order (idempotent by order_id)", tags=["license"],
      security=(WEB_API_KEY,), body=IssueWebSchema,
      responses={200: IssuedLicenseSchema, 401: "invalid api key (Web-Api-Key header missing or wrong)",
                 429: "too many wrong Web-Api-Key attempts from this IP; see Retry-After",
                 403: "plan not allowed", 503: "web issuing disabled (no key configured)"})
async def issue_web(request: web.Request) -> web.Response:
    await _check_web_api_key(request)
    body = await load_body(request, IssueWebSchema())
    app = request.app
    lic = await licenses.issue_web(app[keys.DB], app[keys.CONFIG], order_id=body["order_id"], plan=body["plan"],
                                   ttl_days=body["ttl_days"], email=body["email"], amount=body["amount"],
                                   currency=body["currency"])
    return json_response({"key": lic.key, "plan": lic.plan, "expires_at": lic.expires_at})


@routes.post("/v2/license/redeem")
@docs("Bind another license key to the logged-in account (renewal)", tags=["license"], body=RedeemSchema,
      responses={200: RedeemedSchema, **LICENSE_ERRORS, 429: f"{IP_RATE_LIMITED}, or per user"})
async def redeem(request: web.Request) -> web.Response:
    await limit_by_ip(request, "redeem")
    user = await authenticate(request)
    await limit_by_user(request, "redeem", user)
    body = await load_body(request, RedeemSchema())
    db = request.app[keys.DB]
    await accounts.redeem_for_user(db, user, body["license_key"])
    plan = await licenses.plan_for_user(db, user.id)
    return json_response({"status": "ok", "plan": plan.plan_id, "license_expires_at": plan.expires_at,
                          "license_active": plan.active})
