"""Serving: TLS if configured, graceful shutdown on SIGINT/SIGTERM (aiohttp's run_app handles both)."""

from __future__ import annotations

import errno
import logging
import ssl
from typing import Final

from aiohttp import web

from .app import create_app
from .config import Config
from .db import DatabaseUnavailable

_LOGGER = logging.getLogger(__name__)

LISTEN_FAILED_EXIT: Final = 3  # exit code when the address cannot be bound (busy port, no permission)
DATABASE_FAILED_EXIT: Final = 4  # exit code when the configured PostgreSQL cannot be reached at start
_LISTEN_ERRORS: Final = {
    errno.EADDRINUSE: "the port is already in use (is another TTBoost running?); stop that program or choose "
                      "another port ([server] port, TTBOOST_SERVER_PORT)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE); choose a port of 1024 "
                  "or more",
    errno.EADDRNOTAVAIL: "this machine has no such address; check [server] host",
}


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    return context


def serve(config: Config) -> int:
    """Runs until SIGINT/SIGTERM; the process exit code (LISTEN_FAILED_EXIT when the address cannot be bound)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if config.server.env == "prod" and not config.public_url.startswith("https://"):
        _LOGGER.warning("server.public_url is %s: in prod the app should reach the server over https/wss",
                        config.public_url)
    host, port = config.server.host, config.server.port

    def listening(_banner: str) -> None:  # run_app calls it once every socket is bound, not before
        _LOGGER.info("TTBoost listening on %s:%d, public URL %s", host, port, config.public_url)

    try:
        web.run_app(
            create_app(config),
            host=host,
            port=port,
            ssl_context=_ssl_context(config),
            shutdown_timeout=config.server.shutdown_timeout,
            access_log=None,  # our own middleware logs one redacted line per request
            print=listening,
            handle_signals=True,
        )
    except DatabaseUnavailable as exc:
        _LOGGER.error("%s", exc)
        return DATABASE_FAILED_EXIT
    except OSError as exc:
        reason = _LISTEN_ERRORS.get(exc.errno or 0)
        if reason is None:
            raise
        _LOGGER.error("cannot listen on %s:%d: %s", host, port, reason)
        return LISTEN_FAILED_EXIT
    return 0
