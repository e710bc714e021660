"""GET /v2/openapi.json: the document of ttboost.openapi, built once and served as is."""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..openapi import docs
from .responses import OpenApiSchema

routes = web.RouteTableDef()


@routes.get("/v2/openapi.json")
@docs("This OpenAPI 3 document (public)", tags=["meta"], security=(), responses={200: OpenApiSchema})
async def openapi_document(request: web.Request) -> web.Response:
    text = await request.app[keys.OPENAPI].text(request.app)
    return web.Response(text=text, content_type="application/json", charset="utf-8")
