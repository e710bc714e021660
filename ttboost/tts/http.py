"""GET /static/tts/{name}: the cached MP3, or the synthesis streamed while it runs, or 404."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import AsyncIterator, Final

from aiohttp import hdrs, web

from .. import errors, keys
from .engine import TTSError

_LOGGER = logging.getLogger(__name__)

_NAME_RE: Final = re.compile(r"([0-9a-f]{32})\.mp3")
# Content-addressed: a key's audio never changes, so clients and proxies may keep it for a year.
_FILE_HEADERS: Final = {
    hdrs.CONTENT_TYPE: "audio/mpeg",
    hdrs.CACHE_CONTROL: "public, max-age=31536000, immutable",
    hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
}
# A stream may still be cut off by a failing synthesis: nobody may keep it; the next GET gets the file.
_STREAM_HEADERS: Final = {
    hdrs.CONTENT_TYPE: "audio/mpeg",
    hdrs.CACHE_CONTROL: "no-store",
    hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
}


async def serve_speech(request: web.Request) -> web.StreamResponse:
    match = _NAME_RE.fullmatch(request.match_info.get("name", ""))
    if match is None:
        raise errors.not_found()
    speech = request.app[keys.SPEECH]
    found = speech.open(match[1]) or await speech.fetch(match[1])  # fetch: made by another worker of a cluster
    if found is None:
        raise errors.not_found()
    if isinstance(found, Path):
        return web.FileResponse(found, headers=_FILE_HEADERS)  # Range, If-None-Match and HEAD included
    try:
        return await _follow(request, match[1], found)
    finally:
        await found.aclose()  # also when the handler is cancelled mid-way


async def _follow(request: web.Request, key: str, chunks: AsyncIterator[bytes]) -> web.StreamResponse:
    """Streams a running synthesis: chunks so far at once, then the rest as the engine makes them."""
    try:
        # Answer only once audio exists, so a phrase that fails or is shed before its first chunk is a 404.
        first = await anext(chunks)
    except (StopAsyncIteration, TTSError):
        raise errors.not_found() from None
    response = web.StreamResponse(headers=_STREAM_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method == hdrs.METH_HEAD:  # aiohttp would put written bytes on the wire even for HEAD
        await response.write_eof()
        return response
    try:
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    except TTSError as exc:
        # The 200 is out; cutting the connection before the last chunk is the only way left to say "broken",
        # so the player does not take a cut-off phrase for a complete one.
        _LOGGER.warning("tts stream of %s broke off: %s", key, exc)
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionError:  # the app stopped listening (skipped the phrase): nothing to report
        return response
    await response.write_eof()
    return response
