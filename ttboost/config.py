"""Typed configuration: config.toml, then TTBOOST_<SECTION>_<KEY> and the seed's legacy env names."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Mapping

from dotenv import dotenv_values


class ConfigError(Exception):
    """A config value is missing or wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8000
    public_url: str = ""  # base of every returned URL; default http://127.0.0.1:<port>
    media_url: str = ""  # base of media links; defaults to public_url
    env: str = "dev"  # dev | prod
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    language: str = "ru"  # ru | en: texts of status/error frames
    shutdown_timeout: float = 5.0  # seconds given to open requests on shutdown
    header_timeout: float = 10.0  # seconds a connection has to deliver a request's headers; 0: no limit
    body_timeout: float = 30.0  # seconds a JSON request body (≤ 64 KiB) has to arrive after its headers; 0: no limit
    max_connections: int = 0  # open connections at most; 0: 80 % of the open-file limit
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # who may read GET /metrics; empty: nobody


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: str = "data"
    # empty: SQLite <data_dir>/ttboost.db; sqlite:///path (legacy env DATABASE_URL); postgresql://… (cluster mode)
    database_url: str = ""
    event_retention_days: float = 30.0  # events older than this are pruned from the event log; 0 keeps all
    # PostgreSQL only: a statement still unanswered after this many seconds (a lock held too long, a dead or
    # partitioned server) is cancelled and its request answers 500, and a request waits this long at most for a
    # pooled connection (connecting included).
    query_timeout_seconds: float = 30.0
    pool_timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    jwt_secret: str = ""  # empty: generated once into <data_dir>/jwt.secret
    token_ttl_hours: float = 24.0
    web_issue_api_key: str = ""  # empty: /v2/license/issue-web is disabled
    web_allowed_plans: tuple[str, ...] = ()  # empty: every configured plan
    bcrypt_rounds: int = 12  # cost factor; tests lower it, production keeps ~250 ms per hash
    hash_workers: int = 0  # bcrypt hashes at a time; 0 = one per CPU core
    hash_queue: int = 16  # logins waiting for a hash beyond the running ones; more answer 503 at once
    hash_max_wait_seconds: float = 3.0  # and no more than would wait this long (estimated): 503 instead
    revocation_check_seconds: float = 2.0  # how soon a revoked licence or password reaches open sockets


@dataclass(frozen=True, slots=True)
class TTSConfig:
    engine: str = "edge"  # edge | espeak
    default_voice: str = "ru-RU-SvetlanaNeural"
    cache_max_mb: float = 200.0
    max_concurrency: int = 4  # syntheses running at once
    max_pending: int = 20  # chat phrases waiting per user; beyond this that user's oldest is shed
    max_pending_triggers: int = 50  # trigger phrases waiting per user; beyond this that user's oldest is shed
    edge_wss_url: str = ""  # empty: edge-tts's own service; set to point at a proxy or a fake
    refresh_voices: bool = True  # fetch the live edge voice list at start (and daily) when reachable


@dataclass(frozen=True, slots=True)
class TikTokConfig:
    sign_api_key: str = ""
    sign_api_url: str = "https://api.eulerstream.com"
    app_url: str = "https://www.tiktok.com"
    webcast_url: str = "https://webcast.tiktok.com/webcast"
    proxy: str = ""
    live_check_seconds: float = 60.0
    reconnect_max_seconds: float = 300.0
    idle_stop_minutes: float = 15.0
    combo_timeout_seconds: float = 5.0  # a combo whose end never arrives closes after this silence
    healthy_seconds: float = 60.0  # connected this long resets the back-off


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    auth_per_minute: int = 10
    upload_per_minute: int = 5
    triggers_per_minute: int = 20
    tts_per_minute: int = 30
    max_body_bytes: int = 64 * 1024
    max_sound_bytes: int = 1024 * 1024
    min_sound_seconds: float = 0.1
    max_sound_seconds: float = 30.0
    replay_events: int = 500
    replay_seconds: float = 600.0
    ws_send_queue: int = 256  # frames buffered per socket before the client counts as too slow
    ws_heartbeat_seconds: float = 30.0
    ws_read_timeout_seconds: float = 5.0  # a client that takes no frame for this long is too slow (1008)
    demo_min_seconds: float = 3.0
    demo_max_seconds: float = 8.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    nats_url: str = ""  # empty: one process; nats://host:4222: cluster mode on NATS JetStream (SPEC §11)
    worker_id: str = ""  # empty: <host name>-<pid>
    lease_seconds: float = 10.0  # a dead worker's LIVE sessions are taken over after this (plus back-off)


@dataclass(frozen=True, slots=True)
class PlanConfig:
    id: str
    name: str
    max_triggers: int
    max_sounds: int


DEFAULT_PLANS: tuple[PlanConfig, ...] = (
    PlanConfig("nova_streamer_one_mobile", "Nova Streamer One (mobile)", 50, 50),
    PlanConfig("nova_streamer_one_desktop", "Nova Streamer One (desktop)", 50, 50),
    PlanConfig("nova_streamer_duo", "Nova Streamer Duo", 100, 100),
)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    tiktok: TikTokConfig = field(default_factory=TikTokConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    plans: tuple[PlanConfig, ...] = DEFAULT_PLANS

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def database_path(self) -> Path:
        """The SQLite file: <data_dir>/ttboost.db, or the path of a sqlite:/// database_url."""
        url = self.storage.database_url
        if not url or self.postgres_url:
            return self.data_dir / "ttboost.db"
        return Path(_sqlite_path(url))

    @property
    def postgres_url(self) -> str:
        """The database_url in asyncpg's form when it names PostgreSQL, else empty (SQLite)."""
        url = self.storage.database_url
        if not url.startswith(_POSTGRES_SCHEMES):
            return ""
        return "postgresql://" + url.partition("://")[2]

    @property
    def public_url(self) -> str:
        return (self.server.public_url or f"http://127.0.0.1:{self.server.port}").rstrip("/")

    @property
    def media_url(self) -> str:
        return (self.server.media_url or self.public_url).rstrip("/")

    @property
    def ws_base(self) -> str:
        base = self.public_url
        if base.startswith("https://"):
            return "wss://" + base[len("https://"):]
        return "ws://" + base.removeprefix("http://")

    @property
    def worker_id(self) -> str:
        """This worker's name in a cluster: configured, or <host name>-<pid>."""
        return self.cluster.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def plan(self, plan_id: str) -> PlanConfig | None:
        return next((p for p in self.plans if p.id == plan_id), None)

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys of some sections changed (tests and the CLI use it)."""
        changes = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type] = {
    "server": ServerConfig, "storage": StorageConfig, "auth": AuthConfig,
    "tts": TTSConfig, "tiktok": TikTokConfig, "limits": LimitsConfig, "cluster": ClusterConfig,
}
# The seed's environment names (spec §1), mapped onto section keys.
_LEGACY_ENV: dict[str, tuple[str, str]] = {
    "ENV": ("server", "env"),
    "SERVER_HOST": ("server", "public_url"),
    "TTS_BASE_URL": ("server", "media_url"),
    "WEB_ISSUE_API_KEY": ("auth", "web_issue_api_key"),
    "WEB_ALLOWED_PLANS": ("auth", "web_allowed_plans"),
    "SIGN_API_KEY": ("tiktok", "sign_api_key"),
    "DATABASE_URL": ("storage", "database_url"),
}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("server", "env"): ("dev", "prod"),
    ("server", "language"): ("ru", "en"),
    ("tts", "engine"): ("edge", "espeak"),
}


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    """Turns a TOML or env value into the field's type, or raises ConfigError naming the key."""
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ValueError(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"config: {key} has an invalid value {raw!r}") from None


def _build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in known:
            raise ConfigError(f"config: unknown key {name}.{key}")
        value = _coerce(f"{name}.{key}", raw, hints[key])
        choices = _CHOICES.get((name, key))
        if choices and value not in choices:
            raise ConfigError(f"config: {name}.{key} must be one of {', '.join(choices)} (got {value!r})")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"config: {name}.{key} must not be negative (got {value!r})")
        kwargs[key] = value
    return cls(**kwargs)


def _build_plans(raw: Any) -> tuple[PlanConfig, ...]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("config: [plans] must be a table of plan tables")
    plans = []
    for plan_id, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"config: plans.{plan_id} must be a table")
        unknown = set(spec) - {"name", "max_triggers", "max_sounds"}
        if unknown:
            raise ConfigError(f"config: unknown key plans.{plan_id}.{sorted(unknown)[0]}")
        plans.append(PlanConfig(
            id=plan_id,
            name=_coerce(f"plans.{plan_id}.name", spec.get("name", plan_id), str),
            max_triggers=_coerce(f"plans.{plan_id}.max_triggers", spec.get("max_triggers", 50), int),
            max_sounds=_coerce(f"plans.{plan_id}.max_sounds", spec.get("max_sounds", 50), int),
        ))
    return tuple(plans)


# SQLAlchemy's URL forms, as the seed's DATABASE_URL used them: sqlite:///relative.db, sqlite:////abs/path.db,
# also with the async driver named (sqlite+aiosqlite:///...).
_SQLITE_URL_RE: Final = re.compile(r"sqlite(\+aiosqlite)?:///(?P<path>[^?#]+)")
_POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://", "postgresql+asyncpg://")


def _sqlite_path(url: str) -> str:
    match = _SQLITE_URL_RE.fullmatch(url)
    if match is None:
        # Only the scheme is echoed: the rest of a database URL may hold a password.
        raise ConfigError("config: storage.database_url must be empty, sqlite:///path or postgresql://… (got a "
                          f"{url.partition(':')[0]!r} URL)")
    return match["path"]


def _check_database_url(url: str) -> None:
    if url and not url.startswith(_POSTGRES_SCHEMES):
        _sqlite_path(url)


_ORIGIN_RE: Final = re.compile(r"https?://[^/\s?#]+")  # scheme://host[:port], nothing after


def _check_urls(config: Config) -> None:
    """Every URL the server returns is absolute, so the bases must be; origins and proxies must parse."""
    for key in ("public_url", "media_url"):
        value = getattr(config.server, key)
        if value and not value.startswith(("http://", "https://")):
            raise ConfigError(f"config: server.{key} must start with http:// or https:// (got {value!r})")
    for origin in config.server.cors_origins:
        if not _ORIGIN_RE.fullmatch(origin):
            raise ConfigError(f"config: server.cors_origins entry {origin!r} must be like https://app.example.com")
    for key in ("trusted_proxies", "metrics_allow"):
        for network in getattr(config.server, key):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"config: server.{key} entry {network!r} is not an IP address or network") \
                    from None


def _check_cluster(config: Config) -> None:
    url = config.cluster.nats_url
    if not url:
        return
    if not url.startswith(("nats://", "tls://")):
        raise ConfigError("config: cluster.nats_url must be empty (one process) or a nats:// URL")
    if not config.postgres_url:
        raise ConfigError("config: cluster mode (cluster.nats_url) needs PostgreSQL: every worker must see the same "
                          "accounts, licences and triggers; set storage.database_url to a postgresql:// URL")
    if config.cluster.lease_seconds < 1:
        raise ConfigError("config: cluster.lease_seconds must be at least 1")


def load_env_file(path: str | os.PathLike[str] = ".env",
                  environ: typing.MutableMapping[str, str] | None = None) -> list[str]:
    """Sets the variables of a .env file (the seed's deployments configure through one) that the environment
    does not already have, with python-dotenv's parsing (quotes, `export`, comments, ${VAR}); the real
    environment always wins. Returns the names it set (never log the values: they hold keys)."""
    environ = os.environ if environ is None else environ
    if not Path(path).is_file():
        return []
    try:
        values = dotenv_values(path, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: cannot read {path}: {exc}") from None
    added = [name for name, value in values.items() if value is not None and name not in environ]
    for name in added:
        environ[name] = values[name]  # type: ignore[assignment]  # None filtered above
    return added


def load_config(path: str | os.PathLike[str] | None = "config.toml",
                env: Mapping[str, str] | None = None) -> Config:
    """Reads the TOML file (if it exists), applies env overrides and validates everything."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None and Path(path).is_file():
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    unknown = set(data) - set(_SECTIONS) - {"plans"}
    if unknown:
        raise ConfigError(f"config: unknown section [{sorted(unknown)[0]}]")
    sections: dict[str, dict[str, Any]] = {name: dict(data.get(name, {})) for name in _SECTIONS}
    for legacy, (section, key) in _LEGACY_ENV.items():
        if env.get(legacy):
            sections[section][key] = env[legacy]
    for name, value in env.items():
        if not name.startswith("TTBOOST_"):
            continue
        section, _, key = name[len("TTBOOST_"):].lower().partition("_")
        if section in _SECTIONS and key:
            sections[section][key] = value
    built = {name: _build_section(name, cls, sections[name]) for name, cls in _SECTIONS.items()}
    plans = _build_plans(data["plans"]) if "plans" in data else DEFAULT_PLANS
    config = Config(plans=plans, **built)
    for plan_id in config.auth.web_allowed_plans:
        if config.plan(plan_id) is None:
            raise ConfigError(f"config: auth.web_allowed_plans names unknown plan {plan_id!r}")
    _check_urls(config)
    _check_database_url(config.storage.database_url)
    _check_cluster(config)
    if config.auth.jwt_secret and len(config.auth.jwt_secret) < 32:
        raise ConfigError("config: auth.jwt_secret must be at least 32 characters (or empty to generate one)")
    if config.auth.revocation_check_seconds <= 0:
        raise ConfigError("config: auth.revocation_check_seconds must be above 0")
    for key in ("query_timeout_seconds", "pool_timeout_seconds"):
        if getattr(config.storage, key) <= 0:
            raise ConfigError(f"config: storage.{key} must be above 0")
    if config.limits.ws_read_timeout_seconds <= 0:
        raise ConfigError("config: limits.ws_read_timeout_seconds must be above 0")
    if not 4 <= config.auth.bcrypt_rounds <= 16:
        raise ConfigError("config: auth.bcrypt_rounds must be between 4 and 16")
    if bool(config.server.tls_cert) != bool(config.server.tls_key):
        raise ConfigError("config: server.tls_cert and server.tls_key must be set together")
    return config

