"""Every AppKey of the application, in one place (no string keys, no module-level state)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

if TYPE_CHECKING:  # keys only name types; importing them here would tie every module together
    from .cluster.broker import Broker
    from .cluster.leases import SessionLeases
    from .config import Config
    from .db import AnyDatabase
    from .home import Home
    from .janitor import MemoryJanitor
    from .live.manager import LiveManager
    from .metrics import Metrics
    from .media import MediaStore
    from .openapi import OpenApiDocument
    from .overlay.page import OverlayPage
    from .pipeline.actions import ActionEngine
    from .pipeline.bus import EventBus
    from .pipeline.dispatch import Dispatcher
    from .ratelimit import ClientIP, RateLimiter
    from .revocation import RevocationWatch
    from .security import PasswordHasher, TokenService
    from .settings import SettingsStore
    from .triggers import TriggerStore
    from .tts.catalog import VoiceCatalog
    from .tts.service import SpeechService
    from .sockets import SocketRegistry
    from .streams.recorder import StreamRecorder
    from .streams.rehearsal import Rehearsals

CONFIG: Final = web.AppKey["Config"]("config")
DB: Final = web.AppKey["AnyDatabase"]("db")
TOKENS: Final = web.AppKey["TokenService"]("tokens")
PASSWORDS: Final = web.AppKey["PasswordHasher"]("passwords")
CLIENT_IP: Final = web.AppKey["ClientIP"]("client_ip")
LIMITERS: Final = web.AppKey["dict[str, RateLimiter]"]("limiters")
STARTED_AT: Final = web.AppKey["float"]("started_at")  # monotonic clock at start, for uptime
MEDIA: Final = web.AppKey["MediaStore"]("media")
SPEECH: Final = web.AppKey["SpeechService"]("speech")
VOICES: Final = web.AppKey["VoiceCatalog"]("voices")
SETTINGS: Final = web.AppKey["SettingsStore"]("settings")
TRIGGERS: Final = web.AppKey["TriggerStore"]("triggers")
ACTIONS: Final = web.AppKey["ActionEngine"]("actions")
BUS: Final = web.AppKey["EventBus"]("bus")
DISPATCHER: Final = web.AppKey["Dispatcher"]("dispatcher")
LIVE: Final = web.AppKey["LiveManager"]("live")
SOCKETS: Final = web.AppKey["SocketRegistry"]("sockets")
RECORDER: Final = web.AppKey["StreamRecorder"]("recorder")
REHEARSALS: Final = web.AppKey["Rehearsals"]("rehearsals")
REVOCATION: Final = web.AppKey["RevocationWatch"]("revocation")
JANITOR: Final = web.AppKey["MemoryJanitor"]("janitor")
OPENAPI: Final = web.AppKey["OpenApiDocument"]("openapi")
METRICS: Final = web.AppKey["Metrics"]("metrics")
OVERLAY_PAGE: Final = web.AppKey["OverlayPage"]("overlay_page")
BROKER: Final = web.AppKey["Broker"]("broker")  # cluster mode only (cluster.nats_url set)
LEASES: Final = web.AppKey["SessionLeases"]("leases")  # cluster mode only: each user's home worker
HOME: Final = web.AppKey["Home"]("home")  # where a user's session runs: this process, or its home worker

# Per-request storage.
USER_ID: Final = web.RequestKey("user_id", int)  # the authenticated user, for the request log line
