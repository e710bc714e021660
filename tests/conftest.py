"""Shared fixtures: a config pointing at a temp data dir, and the real app built by the factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp.test_utils import TestClient

from tests.fake_tts import FakeEngine
from tests.nats_server import NatsServer
from tests.pg_server import PgServer
from ttboost.app import create_app
from ttboost.config import Config, load_config

JWT_SECRET = "test-secret-" + "x" * 40


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    base = load_config(None, env={}).replace(
        storage={"data_dir": str(data_dir)},
        auth={"jwt_secret": JWT_SECRET, "bcrypt_rounds": 4},
        server={"public_url": "http://testserver"},
        tts={"refresh_voices": False},  # the live voice list is on the internet
    )
    return base.replace(**sections) if sections else base


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked both_backends run once on SQLite and once on a real PostgreSQL."""
    if metafunc.definition.get_closest_marker("both_backends") and "storage_backend" in metafunc.fixturenames:
        metafunc.parametrize("storage_backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session, started on first use only."""
    server = PgServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One NATS server (JetStream on) for the whole session, started on first use only."""
    server = NatsServer()
    yield server
    server.stop()


@pytest.fixture
async def nats_url(nats_server: NatsServer) -> AsyncIterator[str]:
    """The NATS server with JetStream emptied for this test, as the fresh database of pg_url is: each test's
    user ids start at 1 again, and a lease, a watch or frames of an earlier test's user 1 must not be found."""
    await nats_server.wipe()
    yield nats_server.url


@pytest.fixture
async def pg_url(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh empty PostgreSQL database for this test."""
    async for url in pg_server.fresh_database():
        yield url


@pytest.fixture
def storage_backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(storage_backend: str, request: pytest.FixtureRequest) -> str:
    """Empty (SQLite in the data folder) unless the test runs on PostgreSQL."""
    return request.getfixturevalue("pg_url") if storage_backend == "postgres" else ""


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    return make_config(tmp_path / "data", storage={"database_url": database_url})


ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(database_url: str, aiohttp_client: Any, tmp_path: Path) -> ClientFactory:
    """Builds the real app; keyword sections override config (e.g. limits={"auth_per_minute": 2}).

    database_url comes first: its PostgreSQL database must outlive the app's connections.
    """

    async def factory(config: Config | None = None, *, live_source: Any = None, tts_engine: Any = None,
                      clock: Callable[[], float] | None = None, stream_rows: Any = None,
                      **sections: dict[str, Any]) -> TestClient:
        cfg = config or make_config(tmp_path / "data")
        if database_url:
            cfg = cfg.replace(storage={"database_url": database_url})
        if sections:
            cfg = cfg.replace(**sections)
        app = create_app(cfg, live_source=live_source, tts_engine=tts_engine or FakeEngine(),
                         reconnect_min_seconds=0.01, **({"clock": clock} if clock else {}),
                         **({"stream_rows": stream_rows} if stream_rows else {}))
        return await aiohttp_client(app)

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()
