"""The management CLI on the server's own database, checked through the running app's HTTP API."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import JWT_SECRET, make_config
from ttboost import cli, keys
from ttboost.timeutil import parse_iso

PLAN = "nova_streamer_one_mobile"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


pytestmark = pytest.mark.both_backends  # the CLI works on the cluster's PostgreSQL as on SQLite


@pytest.fixture
def config_file(tmp_path: Path, data_dir: Path, database_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndata_dir = "{data_dir.as_posix()}"\ndatabase_url = "{database_url}"\n'
                    f'[auth]\njwt_secret = "{JWT_SECRET}"\nbcrypt_rounds = 4\n', encoding="utf-8")
    return path


@pytest.fixture
async def app_client(make_client: Any, data_dir: Path) -> Any:
    """The server, running on the same data directory the CLI writes to."""
    return await make_client(make_config(data_dir))


async def run_cli(config_file: Path, capsys: Any, *argv: str) -> tuple[int, str, str]:
    # In a worker thread: main() calls asyncio.run, which cannot nest inside the test's event loop.
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["--config", str(config_file), *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def redeem(client: Any, key: str, username: str = "streamer", password: str = "secret1") -> Any:
    return await client.post("/v2/auth/redeem-license",
                             json={"username": username, "password": password, "license_key": key})


async def test_issued_key_is_redeemable_over_http(app_client, config_file, capsys) -> None:
    code, out, _ = await run_cli(config_file, capsys, "license", "issue", "--plan", PLAN, "--days", "30",
                                 "--count", "3")
    assert code == 0
    issued = out.split()
    assert len(set(issued)) == 3 and all(k.startswith("TTB-") for k in issued)
    resp = await redeem(app_client, issued[0])
    assert resp.status == 200
    assert (await resp.json())["plan"] == PLAN


async def test_issue_with_order_id_is_idempotent(app_client, config_file, capsys) -> None:
    args = ("license", "issue", "--plan", PLAN, "--days", "7", "--order-id", "A-1", "--email", "a@example.org")
    first = await run_cli(config_file, capsys, *args)
    second = await run_cli(config_file, capsys, *args)
    assert first[0] == second[0] == 0 and first[1] == second[1]
    assert await app_client.app[keys.DB].fetchval("SELECT email FROM licenses WHERE order_id = 'A-1'") == \
        "a@example.org"


async def test_issue_refuses_unknown_plan(config_file, capsys) -> None:
    code, out, err = await run_cli(config_file, capsys, "license", "issue", "--plan", "gold", "--days", "30")
    assert code == 1 and out == "" and "unknown plan" in err


async def test_revoke_makes_redeem_fail(app_client, config_file, capsys) -> None:
    _, out, _ = await run_cli(config_file, capsys, "license", "issue", "--plan", PLAN, "--days", "30")
    key = out.strip()
    code, out, _ = await run_cli(config_file, capsys, "license", "revoke", key.lower())
    assert code == 0 and key in out
    resp = await redeem(app_client, key)
    assert resp.status == 403 and (await resp.json())["detail"] == "license not active"


async def test_unknown_key_is_an_error(config_file, capsys) -> None:
    for args in (("license", "revoke", "TTB-0000-0000-0000"),
                 ("license", "extend", "TTB-0000-0000-0000", "--days", "5")):
        code, out, err = await run_cli(config_file, capsys, *args)
        assert code == 1 and out == "" and "license not found" in err


async def test_extend_and_list(app_client, config_file, capsys) -> None:
    _, out, _ = await run_cli(config_file, capsys, "license", "issue", "--plan", PLAN, "--days", "10")
    key = out.strip()
    assert (await redeem(app_client, key, username="lister")).status == 200
    db = app_client.app[keys.DB]
    before = parse_iso(await db.fetchval("SELECT expires_at FROM licenses WHERE key = ?", (key,)))
    code, _, _ = await run_cli(config_file, capsys, "license", "extend", key, "--days", "20")
    assert code == 0
    after = parse_iso(await db.fetchval("SELECT expires_at FROM licenses WHERE key = ?", (key,)))
    assert (after - before).days == 20
    code, out, _ = await run_cli(config_file, capsys, "license", "list")
    header, row = out.splitlines()
    assert header.split() == ["KEY", "PLAN", "STATUS", "EXPIRES", "USER"]
    assert row.split() == [key, PLAN, "active", after.strftime("%Y-%m-%dT%H:%M:%SZ"), "lister"]
    code, out, _ = await run_cli(config_file, capsys, "user", "list")
    assert code == 0 and "lister" in out and PLAN in out
    assert "password" not in out.lower() and "$2b$" not in out


async def test_user_passwd_revokes_old_tokens(app_client, config_file, capsys, monkeypatch) -> None:
    _, out, _ = await run_cli(config_file, capsys, "license", "issue", "--plan", PLAN, "--days", "30")
    old_token = (await (await redeem(app_client, out.strip())).json())["access_token"]
    monkeypatch.setattr("sys.stdin", io.StringIO("new-secret\n"))  # piped, not a terminal
    code, out, _ = await run_cli(config_file, capsys, "user", "passwd", "@Streamer")
    assert code == 0 and "new-secret" not in out
    me = await app_client.get("/v2/auth/me", headers={"Authorization": f"Bearer {old_token}"})
    assert me.status == 401 and (await me.json())["detail"] == "invalid token"
    login = await app_client.post("/v2/auth/login", json={"username": "streamer", "password": "new-secret"})
    assert login.status == 200


async def test_user_passwd_errors(app_client, config_file, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("new-secret\n"))
    code, _, err = await run_cli(config_file, capsys, "user", "passwd", "nobody")
    assert code == 1 and "nobody" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    code, _, err = await run_cli(config_file, capsys, "user", "passwd", "nobody")
    assert code == 1 and "password" in err


async def test_backup_writes_a_readable_database(app_client, config_file, capsys, tmp_path) -> None:
    await run_cli(config_file, capsys, "license", "issue", "--plan", PLAN, "--days", "30", "--count", "2")
    target = tmp_path / "backup.db"
    code, _, _ = await run_cli(config_file, capsys, "backup", str(target))
    assert code == 0
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM licenses").fetchone() == (2,)
    conn.close()
    assert not list(tmp_path.glob(".backup.db.*"))  # no temporary file left behind


def test_a_missing_config_file_named_on_the_command_line_is_an_error(tmp_path, capsys) -> None:
    code = cli.main(["--config", str(tmp_path / "typo.toml"), "license", "list"])
    assert code == 2
    assert "typo.toml does not exist" in capsys.readouterr().err


async def test_revoke_and_passwd_by_the_cli_reach_a_polling_app_at_once(app_client, config_file, capsys,
                                                                          monkeypatch) -> None:
    """/me and token checks are served from memory; a change by the CLI (another connection) ends that."""
    _, out, _ = await run_cli(config_file, capsys, "license", "issue", "--plan", PLAN, "--days", "30")
    key = out.strip()
    token = (await (await redeem(app_client, key)).json())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(2):  # the second answer comes from the cache
        me = await app_client.get("/v2/auth/me", headers=headers)
        assert (await me.json())["license_active"] is True
    assert (await run_cli(config_file, capsys, "license", "revoke", key))[0] == 0
    me = await app_client.get("/v2/auth/me", headers=headers)
    assert me.status == 200 and (await me.json())["license_active"] is False
    monkeypatch.setattr("sys.stdin", io.StringIO("new-secret\n"))
    assert (await run_cli(config_file, capsys, "user", "passwd", "streamer"))[0] == 0
    me = await app_client.get("/v2/auth/me", headers=headers)
    assert me.status == 401 and (await me.json())["detail"] == "invalid token"
