"""create_app(): wiring only. No I/O here; every resource is a cleanup context, the database closing last."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, AsyncIterator, Callable

import aiohttp_cors
from aiohttp import web

from . import keys, openapi, ws
from .api import auth
from .api import events, health
from .api import metrics as metrics_api
from .api import overlay as overlay_api
from .api import openapi as openapi_api
from .api import licenses as licenses_api
from .api import settings as settings_api
from .api import sounds as sounds_api
from .api import streams as streams_api
from .api import triggers as triggers_api
from .api import tts as tts_api
from .config import Config
from .cluster.wiring import cluster_ctx, hand_over_homes, homes_ctx
from .db import AnyDatabase, PostgresDatabase, make_database
from .licenses import has_active_license
from .live.history import StreamRows
from .live.manager import LiveManager
from .live.source import LiveSource
from .media import MediaStore
from .pipeline.actions import ActionEngine
from .pipeline.bus import EventBus
from .pipeline.dispatch import Dispatcher
from .errors import error_middleware
from .home import LocalHome
from .janitor import MemoryJanitor
from .metrics import Metrics, app_state
from .overlay.page import OverlayPage
from .logsetup import access_log_middleware
from .ratelimit import ClientIP, RateLimiter
from .revocation import RevocationWatch
from .security import PasswordHasher, TokenService, load_or_create_secret
from .settings import SettingsStore
from .triggers import TriggerStore
from .tts.catalog import VoiceCatalog
from .tts.engine import TTSEngine
from .tts.service import SpeechService
from .sockets import SocketRegistry
from .streams.recorder import StreamRecorder
from .streams.rehearsal import NotCounted, Pacer, Rehearsals

_LOGGER = logging.getLogger(__name__)


def _limiters(config: Config) -> dict[str, RateLimiter]:
    lim = config.limits
    return {
        "auth": RateLimiter(lim.auth_per_minute, name="auth"),
        # key redemption by a logged-in user: guessing keys costs what guessing passwords costs (per IP and user)
        "redeem": RateLimiter(lim.auth_per_minute, name="redeem"),
        "upload": RateLimiter(lim.upload_per_minute, name="upload"),
        "triggers": RateLimiter(lim.triggers_per_minute, name="triggers"),
        "tts": RateLimiter(lim.tts_per_minute, name="tts"),
        # simulate can trigger speech: it shares the TTS budget's size
        "simulate": RateLimiter(lim.tts_per_minute, name="simulate"),
    }


async def _server_secret(app: web.Application, name: str) -> str:
    """data/<name>.secret, made once; on PostgreSQL kept in the database, so that every worker of a cluster
    signs tokens and names speech alike without a shared disk."""
    db = app[keys.DB]
    if isinstance(db, PostgresDatabase):
        return await db.shared_secret(name)
    return await asyncio.to_thread(load_or_create_secret, app[keys.CONFIG].data_dir / f"{name}.secret")


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    db = make_database(config)
    await db.open()
    app[keys.DB] = db
    secret = config.auth.jwt_secret or await _server_secret(app, "jwt")
    app[keys.TOKENS] = TokenService(secret, config.auth.token_ttl_hours * 3600)
    # The dummy hash (~250 ms of bcrypt) is made beside start-up, not in its way.
    warm_up = asyncio.create_task(app[keys.PASSWORDS].warm_up(), name="bcrypt-warm-up")
    yield
    warm_up.cancel()
    await asyncio.gather(warm_up, return_exceptions=True)
    app[keys.PASSWORDS].close()
    await db.close()


async def _media_ctx(app: web.Application) -> AsyncIterator[None]:
    """The media folder; temp files a crash left mid-upload are removed before any upload is served."""
    store = MediaStore(app[keys.CONFIG].data_dir / "media")
    await store.cleanup_temp()
    app[keys.MEDIA] = store
    yield


def _make_engine(config: Config) -> TTSEngine:
    if config.tts.engine == "espeak":
        from .tts.espeak import EspeakEngine

        if not EspeakEngine.available():
            raise RuntimeError("tts.engine is espeak but espeak-ng is not installed (apt-get install espeak-ng)")
        return EspeakEngine()
    from .tts.edge import EdgeEngine

    return EdgeEngine(config.tts.edge_wss_url)


def _speech_ctx(engine: TTSEngine | None):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[keys.CONFIG]
        tts_engine = engine or _make_engine(config)
        # Its own secret: cache names must not be guessable from a text, and rotating the JWT secret
        # should not throw the speech cache away.
        secret = await _server_secret(app, "tts")
        speech = SpeechService(tts_engine, config.data_dir / "media" / "tts", secret.encode("ascii"),
                               max_bytes=int(config.tts.cache_max_mb * 1024 * 1024),
                               max_concurrency=config.tts.max_concurrency, max_pending=config.tts.max_pending,
                               max_pending_triggers=config.tts.max_pending_triggers,
                               on_synthesis=app[keys.METRICS].speech_done)
        catalog = VoiceCatalog(tts_engine, refresh=config.tts.refresh_voices)
        await speech.start()
        await catalog.start()
        app[keys.SPEECH], app[keys.VOICES] = speech, catalog
        yield
        await catalog.close()
        await speech.close()

    return ctx


async def _rules_ctx(app: web.Application) -> AsyncIterator[None]:
    """Settings, triggers and the action engine; after the database (and speech, when wired), before live."""
    config, db = app[keys.CONFIG], app[keys.DB]
    settings = SettingsStore(db, default_voice=config.tts.default_voice, voice_known=app[keys.VOICES].known)
    triggers = TriggerStore(db, config)
    await triggers.start()
    app[keys.SETTINGS], app[keys.TRIGGERS] = settings, triggers
    app[keys.ACTIONS] = ActionEngine(settings, triggers, app[keys.SPEECH], media_url=config.media_url,
                                     default_voice=config.tts.default_voice)
    yield
    await triggers.close()  # writes the executed_count increments still pending


def _live_ctx(source: LiveSource | None, backoff_min: float, clock: Callable[[], float],
              stream_rows: Callable[[AnyDatabase], StreamRows]):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[keys.CONFIG]
        recorder = StreamRecorder(app[keys.DB])  # the figures of each stream, fed by the bus
        await recorder.start()
        bus = EventBus(app[keys.DB], replay_events=config.limits.replay_events,
                       replay_seconds=config.limits.replay_seconds, language=config.server.language,
                       retention_seconds=config.storage.event_retention_days * 86400, recorder=recorder,
                       clock=clock)
        await bus.start()
        dispatcher = Dispatcher(bus, app[keys.ACTIONS])
        if source is None:
            from .live.tiktok import TikTokAdapter  # the adapter imports TikTokLive lazily itself

            live_source: LiveSource = TikTokAdapter(config.tiktok)
        else:
            live_source = source
        db = app[keys.DB]
        live = LiveManager(live_source, dispatcher, db, config.tiktok,
                           license_active=functools.partial(has_active_license, db), backoff_min=backoff_min,
                           rows=stream_rows(db))
        await live.start_reaper(close_dangling_streams=not config.cluster.nats_url)
        janitor = MemoryJanitor(bus=bus, live=live, sockets=app[keys.SOCKETS], settings=app[keys.SETTINGS],
                                triggers=app[keys.TRIGGERS], actions=app[keys.ACTIONS],
                                window_seconds=config.limits.replay_seconds)
        await janitor.start()
        app[keys.BUS], app[keys.DISPATCHER], app[keys.LIVE], app[keys.JANITOR] = bus, dispatcher, live, janitor
        app[keys.RECORDER] = recorder
        app[keys.HOME] = LocalHome(app)  # cluster mode: homes_ctx puts the cluster's in its place
        yield
        await janitor.close()
        await live.close()
        await bus.close()
        await recorder.close()  # after the last frames (combos flushed by the sessions' stop)

    return ctx


def _rehearsals_ctx(pacer: Pacer | None):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        """After live: rehearsals stop before the bus closes."""
        config = app[keys.CONFIG]

        def engine(stream_clock: Callable[[], float]) -> ActionEngine:
            # Its own engine per rehearsal: fresh cooldowns and per-stream counters, running on the recorded
            # time, and firings that do not count.
            triggers: Any = NotCounted(app[keys.TRIGGERS])
            return ActionEngine(app[keys.SETTINGS], triggers, app[keys.SPEECH], media_url=config.media_url,
                                default_voice=config.tts.default_voice, clock=stream_clock)

        rehearsals = Rehearsals(app[keys.DB], app[keys.BUS], engine, pacer)
        app[keys.REHEARSALS] = rehearsals
        app[keys.JANITOR].keep_while(rehearsals.running)  # a rehearsal may go minutes without a frame
        yield
        await rehearsals.close()

    return ctx


async def _revocation_ctx(app: web.Application) -> AsyncIterator[None]:
    """After live: it stops the LIVE watch of a user whose licence ended."""
    watch = RevocationWatch(app[keys.DB], app[keys.SOCKETS], app[keys.LIVE],
                            app[keys.CONFIG].auth.revocation_check_seconds)
    await watch.start()
    app[keys.REVOCATION] = watch
    yield
    await watch.close()


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """No Python/aiohttp versions in answers: they only help someone looking for a known hole."""
    response.headers["Server"] = "TTBoost"


async def _close_sockets(app: web.Application) -> None:
    """on_shutdown: sockets get 1001 now, or shutdown would wait for each client's timeout."""
    await app[keys.SOCKETS].close_all()


def create_app(config: Config, *, live_source: LiveSource | None = None, tts_engine: TTSEngine | None = None,
               reconnect_min_seconds: float = 1.0, rehearsal_pacer: Pacer | None = None,
               clock: Callable[[], float] = time.monotonic,
               stream_rows: Callable[[AnyDatabase], StreamRows] = StreamRows) -> web.Application:
    """The whole server as one aiohttp application; tests build it the same way with fakes injected.

    live_source replaces the TikTok adapter (tests of the pipeline), tts_engine the configured speech engine;
    reconnect_min_seconds is the first
    back-off step (tests shrink it instead of sleeping); rehearsal_pacer replaces real time for rehearsals;
    clock times the replay window and with it the release of idle users' memory (tests move it by hand);
    stream_rows makes the writer of the LIVE streams' rows (tests hold or break its INSERT).
    """
    app = web.Application(
        middlewares=[access_log_middleware, error_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    app[keys.CONFIG] = config
    app[keys.STARTED_AT] = time.monotonic()
    app[keys.PASSWORDS] = PasswordHasher(config.auth.bcrypt_rounds, workers=config.auth.hash_workers,
                                         queue=config.auth.hash_queue,
                                         max_wait=config.auth.hash_max_wait_seconds)
    app[keys.CLIENT_IP] = ClientIP(config.server.trusted_proxies)
    app[keys.LIMITERS] = _limiters(config)
    app[keys.SOCKETS] = SocketRegistry()
    app[keys.METRICS] = metrics = Metrics()
    metrics.watch(functools.partial(app_state, app))
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_media_ctx)
    app.cleanup_ctx.append(_speech_ctx(tts_engine))
    app.cleanup_ctx.append(_rules_ctx)
    if config.cluster.nats_url:
        app.cleanup_ctx.append(cluster_ctx)
    app.cleanup_ctx.append(_live_ctx(live_source, reconnect_min_seconds, clock, stream_rows))
    if config.cluster.nats_url:
        app.cleanup_ctx.append(homes_ctx)
    app.cleanup_ctx.append(_rehearsals_ctx(rehearsal_pacer))
    app.cleanup_ctx.append(_revocation_ctx)
    app[keys.OPENAPI] = openapi.OpenApiDocument()
    app[keys.OVERLAY_PAGE] = OverlayPage()
    # First at startup, before any resource opens: by then every route (CORS too) exists, and one without
    # docs stops the server rather than silently missing from /v2/openapi.json.
    app.on_startup.insert(0, openapi.check_on_startup)
    if config.cluster.nats_url:
        app.on_shutdown.append(hand_over_homes)  # first: the users' new homes exist before their apps come back
    app.on_shutdown.append(_close_sockets)
    app.on_response_prepare.append(_server_header)

    app.router.add_routes(health.routes)
    app.router.add_routes(metrics_api.routes)
    app.router.add_routes(overlay_api.routes)
    app.router.add_routes(openapi_api.routes)
    app.router.add_routes(events.routes)
    app.router.add_routes(ws.routes)
    app.router.add_routes(auth.routes)
    app.router.add_routes(licenses_api.routes)
    app.router.add_routes(settings_api.routes)
    app.router.add_routes(triggers_api.routes)
    app.router.add_routes(tts_api.routes)
    app.router.add_routes(sounds_api.routes)
    app.router.add_routes(streams_api.routes)
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
        if route.method != "HEAD" and not route.resource.canonical.startswith(("/ws", "/v2/ws", "/v2/overlay/ws")):
            cors.add(route)
