"""Shared fixtures: a config pointing at a temp data dir, and the real app built by the factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from tests.fake_tts import FakeEngine
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


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path / "data")


ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(aiohttp_client: Any, tmp_path: Path) -> ClientFactory:
    """Builds the real app; keyword sections override config (e.g. limits={"auth_per_minute": 2})."""

    async def factory(config: Config | None = None, *, live_source: Any = None, tts_engine: Any = None,
                      **sections: dict[str, Any]) -> TestClient:
        cfg = config or make_config(tmp_path / "data")
        if sections:
            cfg = cfg.replace(**sections)
        app = create_app(cfg, live_source=live_source, tts_engine=tts_engine or FakeEngine(),
                         reconnect_min_seconds=0.01)
        return await aiohttp_client(app)

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()
