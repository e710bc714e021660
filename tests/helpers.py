"""Test helpers other test modules share: a user with an active license made by inserting rows, a clock, /metrics."""

from __future__ import annotations

import asyncio
import inspect
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ttboost import keys
from ttboost.security import generate_license_key
from ttboost.timeutil import iso, utcnow


async def make_user(app: web.Application, username: str | None = "streamer", *,
                    plan: str | None = None, days: int = 30) -> tuple[int, str]:
    """Inserts a user (no password) bound to an active license of `plan` (default: the first configured plan);
    returns (user_id, bearer token). plan="" makes a user without any license."""
    db = app[keys.DB]
    now = utcnow()
    user_id = await db.execute("INSERT INTO users (username, created_at) VALUES (?, ?)", (username, iso(now)))
    plan_id = app[keys.CONFIG].plans[0].id if plan is None else plan
    if plan_id:
        await db.execute(
            "INSERT INTO licenses (key, plan, status, issued_at, expires_at, user_id) VALUES (?, ?, 'active', ?, ?, ?)",
            (generate_license_key(), plan_id, iso(now), iso(now + timedelta(days=days)), user_id))
    return user_id, app[keys.TOKENS].issue(user_id, 0)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Clock:
    """A clock the test moves by hand (`clock.now += 60`), for anything that takes a `clock=` callable."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def media_files(media_root: Path) -> list[Path]:
    return [p for p in media_root.rglob("*") if p.is_file()] if media_root.exists() else []


def assert_nothing_half_written(media_root: Path) -> None:
    """No temp file (uploads: .upload-*.tmp, speech: .tmp-*) and no empty file anywhere under media/."""
    for path in media_files(media_root):
        assert not path.name.startswith("."), f"temp file left behind: {path}"
        assert path.stat().st_size > 0, f"empty file: {path}"


async def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics parsed: (sample name, its labels) -> value."""
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(await resp.text()) for s in family.samples}


def sample_sum(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of a sample over every label set that has `labels`."""
    want = set(labels.items())
    return sum(value for (n, got), value in samples.items() if n == name and want <= got)


async def eventually(get: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    """Figures and the event log are written in batches (about once a second): polls until ok(value).
    `get` may be a plain function (e.g. reading a counter) or return an awaitable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def value_now() -> Any:
        value = get()
        return await value if inspect.isawaitable(value) else value

    value = await value_now()
    while not ok(value) and loop.time() < deadline:
        await asyncio.sleep(0.1)
        value = await value_now()
    return value
