"""Serving: TLS if configured, the hardened connection layer, graceful shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import ssl
from typing import Callable, Final

from aiohttp import web

from .app import create_app
from .config import Config
from .cluster.broker import BrokerUnavailable
from .db import DatabaseUnavailable
from .fileio import make_private_dir
from .protocol import AcceptErrorLog, HardenedRunner

_LOGGER = logging.getLogger(__name__)

FD_RESERVE_SHARE: Final = 0.2  # of the open-file limit kept for everything but client connections (db, TikTok…)
LISTEN_FAILED_EXIT: Final = 3  # exit code when the address cannot be bound (busy port, no permission)
DATABASE_FAILED_EXIT: Final = 4  # exit code when the configured PostgreSQL (or, in a cluster, NATS) is not there
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
    make_private_dir(config.data_dir)
    if config.server.env == "prod" and not config.public_url.startswith("https://"):
        _LOGGER.warning("server.public_url is %s: in prod the app should reach the server over https/wss",
                        config.public_url)
    host, port = config.server.host, config.server.port

    def listening(_banner: str) -> None:  # called once the socket is bound, not before
        _LOGGER.info("TTBoost listening on %s:%d, public URL %s", host, port, config.public_url)

    try:
        _run(create_app(config), config, listening)
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        _LOGGER.error("%s", exc)
        return DATABASE_FAILED_EXIT
    except OSError as exc:
        reason = _LISTEN_ERRORS.get(exc.errno or 0)
        if reason is None:
            raise
        _LOGGER.error("cannot listen on %s:%d: %s", host, port, reason)
        return LISTEN_FAILED_EXIT
    return 0


def max_connections(config: Config) -> int:
    """The configured cap, or 80 % of the open-file limit, raised to its hard maximum first (a unit without
    LimitNOFILE gets 1024 on most systems; the hard limit is often far higher)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if config.server.max_connections:
        return config.server.max_connections
    limit = soft if soft != resource.RLIM_INFINITY else 65536
    return max(16, int(limit * (1 - FD_RESERVE_SHARE)))


def _run(app: web.Application, config: Config, listening: Callable[[str], None]) -> None:
    """aiohttp's run_app, with HardenedRunner: run_app cannot be given another runner. Same order on the way
    out: the serving task is cancelled (its finally cleans the app up) before any other task."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(AcceptErrorLog())
    main = loop.create_task(_serve(app, config, listening))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            _cancel(loop, {main})
            _cancel(loop, asyncio.all_tasks(loop))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(app: web.Application, config: Config, listening: Callable[[str], None]) -> None:
    cap = max_connections(config)
    runner = HardenedRunner(app, header_timeout=config.server.header_timeout, max_connections=cap,
                            handle_signals=True, shutdown_timeout=config.server.shutdown_timeout,
                            access_log=None)  # our own middleware logs one redacted line per request
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port, ssl_context=_ssl_context(config))
        await site.start()
        _LOGGER.debug("at most %d connections, request headers within %.0f s", cap, config.server.header_timeout)
        listening(site.name)
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def _cancel(loop: asyncio.AbstractEventLoop, tasks: set[asyncio.Task[object]]) -> None:
    tasks = {t for t in tasks if not t.done()}
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception during shutdown",
                                         "exception": task.exception(), "task": task})
