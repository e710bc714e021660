"""create_app(): wiring only. No I/O here; every resource is a cleanup context, the database closing last."""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator

import aiohttp_cors
from aiohttp import web

from . import keys
from .api import health
from .config import Config
from .db import Database
from .errors import error_middleware
from .logsetup import access_log_middleware
from .ratelimit import ClientIP, RateLimiter
from .security import PasswordHasher, TokenService, load_or_create_secret

_LOGGER = logging.getLogger(__name__)


def _limiters(config: Config) -> dict[str, RateLimiter]:
    lim = config.limits
    return {
        "auth": RateLimiter(lim.auth_per_minute),
        "upload": RateLimiter(lim.upload_per_minute),
        "triggers": RateLimiter(lim.triggers_per_minute),
        "tts": RateLimiter(lim.tts_per_minute),
    }


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    db = Database(config.data_dir / "ttboost.db")
    await db.open()
    app[keys.DB] = db
    secret = config.auth.jwt_secret or load_or_create_secret(config.data_dir / "jwt.secret")
    app[keys.TOKENS] = TokenService(secret, config.auth.token_ttl_hours * 3600)
    yield
    await db.close()


def create_app(config: Config) -> web.Application:
    """The whole server as one aiohttp application; tests build it the same way with fakes injected."""
    app = web.Application(
        middlewares=[access_log_middleware, error_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    app[keys.CONFIG] = config
    app[keys.STARTED_AT] = time.monotonic()
    app[keys.PASSWORDS] = PasswordHasher(config.auth.bcrypt_rounds)
    app[keys.CLIENT_IP] = ClientIP(config.server.trusted_proxies)
    app[keys.LIMITERS] = _limiters(config)
    app.cleanup_ctx.append(_database_ctx)

    app.router.add_routes(health.routes)
    _setup_cors(app, config)
    return app


def _setup_cors(app: web.Application, config: Config) -> None:
    """Exact-origin allow-list; with none configured no CORS headers are ever sent."""
    if not config.server.cors_origins:
        return
    options = aiohttp_cors.ResourceOptions(allow_credentials=False, expose_headers=("Retry-After",),
                                           allow_headers=("Authorization", "Content-Type", "Web-Api-Key"),
                                           max_age=600)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in config.server.cors_origins})
    for route in list(app.router.routes()):
        if route.method != "HEAD" and not route.resource.canonical.startswith(("/ws", "/v2/ws")):
            cors.add(route)
