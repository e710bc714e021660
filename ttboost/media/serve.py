"""GET /static/sounds/{user_id}/{filename}: a stored sound with its real type, ranges and short caching."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from .. import keys
from ..errors import not_found
from .audio import CONTENT_TYPES

# A same-name upload replaces the file in place, so the URL is not immutable; ETag/Last-Modified revalidate.
CACHE_CONTROL: Final = "public, max-age=300"  # seconds
_USER_ID: Final = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit() also takes "١"), fits int64


async def serve_sound(request: web.Request) -> web.StreamResponse:
    user_id = request.match_info.get("user_id", "")
    filename = request.match_info.get("filename", "")
    if _USER_ID.fullmatch(user_id) is None:
        raise not_found()
    # path_for is a few stat calls on a local disk: microseconds, fine on the loop.
    store = request.app[keys.MEDIA]
    path = store.path_for(int(user_id), filename) or await store.fetch(int(user_id), filename)
    if path is None:
        raise not_found()
    return web.FileResponse(path, headers={
        "Content-Type": CONTENT_TYPES[path.suffix],
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": CACHE_CONTROL,
    })
