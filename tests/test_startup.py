"""Start-up as operators meet it: the seed's .env and DATABASE_URL, database_url, binding before "listening"."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.server_process import CLI_TIMEOUT, ServerProcess
from ttboost.config import ConfigError, load_config, load_env_file
from ttboost.server import DATABASE_FAILED_EXIT, LISTEN_FAILED_EXIT


def test_env_file_sets_only_what_the_environment_lacks(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('# the seed\'s deployment\nexport ENV=prod\nSERVER_HOST="https://tt.example"\n'
                        "SIGN_API_KEY='k=1 # not a comment'\nTTS_BASE_URL=${SERVER_HOST}/media\nEMPTY=\nBARE\n",
                        encoding="utf-8")
    environ = {"ENV": "dev"}
    added = load_env_file(env_file, environ)
    assert sorted(added) == ["EMPTY", "SERVER_HOST", "SIGN_API_KEY", "TTS_BASE_URL"]
    assert environ == {"ENV": "dev", "SERVER_HOST": "https://tt.example", "SIGN_API_KEY": "k=1 # not a comment",
                       "TTS_BASE_URL": "https://tt.example/media", "EMPTY": ""}  # the real ENV won
    assert load_env_file(tmp_path / "missing.env", environ) == []


@pytest.mark.parametrize(("url", "path"), [("", "data/ttboost.db"), ("sqlite:///db/old.db", "db/old.db"),
                                           ("sqlite:////srv/tt/app.db", "/srv/tt/app.db"),
                                           ("sqlite+aiosqlite:///./tt.db", "tt.db")])
def test_database_url_names_the_sqlite_file(url: str, path: str) -> None:
    assert load_config(None, env={"DATABASE_URL": url}).database_path == Path(path)
    both = {"DATABASE_URL": "sqlite:///legacy.db", "TTBOOST_STORAGE_DATABASE_URL": url}
    assert load_config(None, env=both).database_path == Path(path)  # the TTBOOST_ name wins, even empty


@pytest.mark.parametrize(("url", "postgres"), [("postgresql://tt:pw@db/tt", "postgresql://tt:pw@db/tt"),
                                               ("postgres://db/tt", "postgresql://db/tt"),
                                               ("postgresql+asyncpg://db:5433/tt", "postgresql://db:5433/tt")])
def test_database_url_names_postgresql(url: str, postgres: str) -> None:
    assert load_config(None, env={"DATABASE_URL": url}).postgres_url == postgres
    assert load_config(None, env={"DATABASE_URL": "sqlite:///x.db"}).postgres_url == ""


@pytest.mark.parametrize(("url", "needle"), [("mysql://root:pw@db/tt", "sqlite:///path"),
                                             ("sqlite://", "sqlite:///path")])
def test_unusable_database_url_stops_the_start(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(None, env={"DATABASE_URL": url})
    assert "pw" not in str(info.value)  # a password in the URL is not echoed


@pytest.mark.parametrize("key", ["query_timeout_seconds", "pool_timeout_seconds"])
def test_postgresql_timeouts_must_be_above_zero(key: str) -> None:
    # 0 would not mean "no limit": a statement to a dead server must never wait for ever.
    with pytest.raises(ConfigError, match=f"storage.{key} must be above 0"):
        load_config(None, env={f"TTBOOST_STORAGE_{key.upper()}": "0"})
    assert getattr(load_config(None, env={f"TTBOOST_STORAGE_{key.upper()}": "0.5"}).storage, key) == 0.5


async def test_seed_env_file_configures_the_server(tmp_path: Path) -> None:
    """An old deployment's .env in the working directory: public URL and database come from it."""
    server = ServerProcess(tmp_path / "data")
    (server.cwd / ".env").write_text("SERVER_HOST=https://tt.example\nDATABASE_URL=sqlite:///db/seed.db\n",
                                     encoding="utf-8")
    try:
        await server.start()
        key = await server.issue_license("nova_streamer_one_mobile")
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/") as resp:
                assert resp.status == 200
                assert (await resp.json())["service"] == "ttboost"
            async with http.post(server.url + "/auth/login", json={"license_key": key}) as resp:
                body = await resp.json()
        assert body["ws_url"].startswith("wss://tt.example/ws/")
        assert (server.cwd / "db" / "seed.db").is_file() and not (server.data_dir / "ttboost.db").exists()
        log = server.log_tail(20_000)
        assert "read .env: SERVER_HOST, DATABASE_URL" in log
        assert f"TTBoost listening on 127.0.0.1:{server.port}, public URL https://tt.example" in log
    finally:
        server.stop()


async def test_busy_port_is_one_clear_line_and_its_own_exit_code(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.data_dir.mkdir(parents=True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        done = await asyncio.to_thread(subprocess.run, server._argv(), cwd=server.cwd, env=server.env(),
                                       capture_output=True, text=True, timeout=CLI_TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == LISTEN_FAILED_EXIT, output
    assert f"ERROR ttboost.server: cannot listen on 127.0.0.1:{server.port}: the port is already in use" in output
    assert "Traceback" not in output and "listening" not in output.replace("cannot listen", "")
    # A PostgreSQL that is not there: one clear line (no password), its own exit code.
    postgres = {**server.env(), "DATABASE_URL": f"postgresql://tt:pw-secret@/tt?host={server.cwd / 'nope'}"}
    done = await asyncio.to_thread(subprocess.run, server._argv(), cwd=server.cwd, env=postgres,
                                   capture_output=True, text=True, timeout=CLI_TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == DATABASE_FAILED_EXIT, output
    assert f"cannot open PostgreSQL at {server.cwd / 'nope'}/tt" in output
    assert "Traceback" not in output and "pw-secret" not in output
