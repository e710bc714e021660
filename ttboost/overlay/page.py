"""The overlay page: one self-contained HTML file (styles, script, icons inline), read once and served per key."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Final

from aiohttp import web

PAGE_FILE: Final = Path(__file__).with_name("page.html")
ALERT_TYPES: Final = ("gift", "follow", "subscribe", "share", "like", "viewer_join")  # what events= may list
DEFAULT_EVENTS: Final = ("gift", "follow", "subscribe", "share")
HOLD_RANGE: Final = (1, 60)  # seconds an alert stays at least (its sound may keep it longer)


class OverlayPage:
    """The template, read from the package off the loop on first use; each answer gets its own script nonce."""

    def __init__(self) -> None:
        self._template: str | None = None

    async def response(self, *, language: str) -> web.Response:
        if self._template is None:
            self._template = await asyncio.to_thread(PAGE_FILE.read_text, encoding="utf-8")
        nonce = secrets.token_urlsafe(16)
        html = self._template.replace("{{nonce}}", nonce).replace("{{lang}}", language)
        csp = "; ".join((
            "default-src 'none'", f"script-src 'nonce-{nonce}'", f"style-src 'nonce-{nonce}'",
            # The page's own socket, and the event's audio wherever [server] media_url puts it.
            "connect-src 'self'", "media-src 'self' http: https:", "base-uri 'none'", "form-action 'none'",
        ))
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers={
            "Content-Security-Policy": csp,
            # The key is in the page's URL: the audio requests (possibly to a media host) must not carry it.
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        })
