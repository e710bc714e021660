"""Serving: TLS if configured, graceful shutdown on SIGINT/SIGTERM (aiohttp's run_app handles both)."""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from .app import create_app
from .config import Config

_LOGGER = logging.getLogger(__name__)


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    return context


def serve(config: Config) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if config.server.env == "prod" and not config.public_url.startswith("https://"):
        _LOGGER.warning("server.public_url is %s: in prod the app should reach the server over https/wss",
                        config.public_url)
    _LOGGER.info("TTBoost listening on %s:%d, public URL %s", config.server.host, config.server.port,
                 config.public_url)
    web.run_app(
        create_app(config),
        host=config.server.host,
        port=config.server.port,
        ssl_context=_ssl_context(config),
        shutdown_timeout=config.server.shutdown_timeout,
        access_log=None,  # our own middleware logs one redacted line per request
        print=None,
        handle_signals=True,
    )
