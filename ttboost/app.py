"""create_app(): wiring only. No I/O here; every resource is a cleanup context, the database closing last."""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator, Callable

import aiohttp_cors
from aiohttp import web

from . import keys, ws
from .api import auth
from .api import events, health
from .api import licenses as licenses_api
from .api import settings as settings_api
from .api import triggers as triggers_api
from .config import Config
from .db import Database
from .live.manager import LiveManager
from .live.source import LiveSource
from .pipeline.actions import ActionEngine
from .pipeline.bus import EventBus
from .pipeline.dispatch import Dispatcher
from .errors import error_middleware
from .logsetup import access_log_middleware
from .ratelimit import ClientIP, RateLimiter
from .security import PasswordHasher, TokenService, load_or_create_secret
from .settings import SettingsStore
from .triggers import TriggerStore
from .tts.voices import EDGE_VOICE_RE, builtin_edge_voices
from .ws import SocketRegistry

_LOGGER = logging.getLogger(__name__)


def _limiters(config: Config) -> dict[str, RateLimiter]:
    lim = config.limits
    return {
        "auth": RateLimiter(lim.auth_per_minute),
        "upload": RateLimiter(lim.upload_per_minute),
        "triggers": RateLimiter(lim.triggers_per_minute),
        "tts": RateLimiter(lim.tts_per_minute),
        # simulate can trigger speech: it shares the TTS budget's size
        "simulate": RateLimiter(lim.tts_per_minute),
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


def _voice_known(app: web.Application) -> Callable[[str], bool]:
    """A voice id the engine lists, a built-in one, or any edge ShortName (the live list has hundreds more)."""
    builtin = frozenset(v.id for v in builtin_edge_voices())

    def known(voice_id: str) -> bool:
        if voice_id in builtin or EDGE_VOICE_RE.fullmatch(voice_id):
            return True
        speech = app.get(keys.SPEECH)
        return speech is not None and any(v.id == voice_id for v in speech.engine.voices())

    return known


async def _rules_ctx(app: web.Application) -> AsyncIterator[None]:
    """Settings, triggers and the action engine; after the database (and speech, when wired), before live."""
    config, db = app[keys.CONFIG], app[keys.DB]
    settings = SettingsStore(db, default_voice=config.tts.default_voice, voice_known=_voice_known(app))
    triggers = TriggerStore(db, config)
    await triggers.start()
    app[keys.SETTINGS], app[keys.TRIGGERS] = settings, triggers
    app[keys.ACTIONS] = ActionEngine(settings, triggers, app.get(keys.SPEECH), media_url=config.media_url,
                                     default_voice=config.tts.default_voice)
    yield
    await triggers.close()  # writes the executed_count increments still pending


def _live_ctx(source: LiveSource | None, backoff_min: float):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[keys.CONFIG]
        bus = EventBus(app[keys.DB], replay_events=config.limits.replay_events,
                       replay_seconds=config.limits.replay_seconds, language=config.server.language)
        await bus.start()
        dispatcher = Dispatcher(bus, app[keys.ACTIONS])
        if source is None:
            from .live.tiktok import TikTokAdapter  # the adapter imports TikTokLive lazily itself

            live_source: LiveSource = TikTokAdapter(config.tiktok)
        else:
            live_source = source
        live = LiveManager(live_source, dispatcher, app[keys.DB], config.tiktok, backoff_min=backoff_min)
        await live.start_reaper()
        app[keys.BUS], app[keys.DISPATCHER], app[keys.LIVE] = bus, dispatcher, live
        yield
        await live.close()
        await bus.close()

    return ctx


async def _close_sockets(app: web.Application) -> None:
    """on_shutdown: sockets get 1001 now, or shutdown would wait for each client's timeout."""
    await app[keys.SOCKETS].close_all()


def create_app(config: Config, *, live_source: LiveSource | None = None,
               reconnect_min_seconds: float = 1.0) -> web.Application:
    """The whole server as one aiohttp application; tests build it the same way with fakes injected.

    live_source replaces the TikTok adapter (tests of the pipeline); reconnect_min_seconds is the first
    back-off step (tests shrink it instead of sleeping).
    """
    app = web.Application(
        middlewares=[access_log_middleware, error_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    app[keys.CONFIG] = config
    app[keys.STARTED_AT] = time.monotonic()
    app[keys.PASSWORDS] = PasswordHasher(config.auth.bcrypt_rounds)
    app[keys.CLIENT_IP] = ClientIP(config.server.trusted_proxies)
    app[keys.LIMITERS] = _limiters(config)
    app[keys.SOCKETS] = SocketRegistry()
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_rules_ctx)
    app.cleanup_ctx.append(_live_ctx(live_source, reconnect_min_seconds))
    app.on_shutdown.append(_close_sockets)

    app.router.add_routes(health.routes)
    app.router.add_routes(events.routes)
    app.router.add_routes(ws.routes)
    app.router.add_routes(auth.routes)
    app.router.add_routes(licenses_api.routes)
    app.router.add_routes(settings_api.routes)
    app.router.add_routes(triggers_api.routes)
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
