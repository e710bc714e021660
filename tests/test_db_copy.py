"""Moving to PostgreSQL (`db import`) and PostgreSQL's backup (`backup` → a SQLite file), on a real server."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import JWT_SECRET
from ttboost import cli, licenses, sounds
from ttboost.config import load_config
from ttboost.db import Database, PostgresDatabase
from ttboost.db.dialect import table_definitions
from ttboost.db.migrations import MIGRATIONS

PLAN = "nova_streamer_one_mobile"
NOW = "2026-01-01T00:00:00Z"


async def _fill(db: Database) -> None:
    """A small but awkward database: a deleted newest trigger, sounds that only rowid orders, an event log."""
    config = load_config(None, env={})
    await licenses.issue(db, config, PLAN, 30, count=2, order_id=None)
    for name in ("alice", "bob"):
        await db.execute("INSERT INTO users (username, password_hash, created_at) VALUES (?, 'x', ?)", (name, NOW))
    for n in range(3):
        await db.execute("INSERT INTO triggers (user_id, event_type, condition_key, condition_value, action, "
                         "action_params, created_at) VALUES (1, 'gift', 'gift_name', ?, 'play_sound', ?, ?)",
                         (f"g{n}", '{"sound_filename": "b.mp3"}', NOW))
    await db.execute("DELETE FROM triggers WHERE id = 3")  # its id must never be handed out again
    for name in ("b.mp3", "a.mp3", "c.mp3"):  # same second: listed newest insert first
        await db.execute("INSERT INTO sounds (user_id, filename, size, duration_ms, format, created_at) "
                         "VALUES (1, ?, 10, 500, 'mp3', ?)", (name, NOW))
    stream = await db.execute("INSERT INTO stream_sessions (user_id, tiktok_username, started_at) VALUES (1, 'a', ?)",
                              (NOW,))
    await db.executemany("INSERT INTO events (user_id, session_id, seq, type, ts, payload) VALUES (?, ?, ?, ?, ?, ?)",
                         [(1, stream, seq, "chat", NOW, f'{{"message": "ü {seq}"}}') for seq in range(1, 2501)])


async def _dump(db: Any) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table, _ in table_definitions():
        rows = await db.fetchall(f"SELECT * FROM {table}")
        out[table] = sorted(tuple(row[k] for k in row.keys() if k != "rowid") for row in rows)
    return out


def _config_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\ndatabase_url = "{url}"\n'
                    f'[auth]\njwt_secret = "{JWT_SECRET}"\n', encoding="utf-8")
    return path


async def _cli(config_file: Path, capsys: Any, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["--config", str(config_file), *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_import_then_backup_round_trips_every_row(tmp_path: Path, pg_url: str, capsys) -> None:
    source = Database(tmp_path / "old.db")
    await source.open()
    await _fill(source)
    original = await _dump(source)
    await source.close()
    old_secret = "the-old-servers-generated-jwt-secret-0123456789"
    (tmp_path / "jwt.secret").write_text(old_secret + "\n", encoding="ascii")  # beside it, as data/ holds them

    config_file = _config_file(tmp_path, pg_url)
    code, out, err = await _cli(config_file, capsys, "db", "import", str(tmp_path / "old.db"))
    assert code == 0, err
    assert "events: 2500 rows" in out and "triggers: 2 rows" in out
    assert "jwt.secret: carried over" in out and "tts.secret" not in out  # no tts.secret there: made anew

    pg = PostgresDatabase(pg_url)
    await pg.open()
    try:
        assert await pg.shared_secret("jwt") == old_secret  # the apps' tokens stay valid on the cluster
        assert await _dump(pg) == original
        assert [s.filename for s in await sounds.list_sounds(pg, 1)] == ["c.mp3", "a.mp3", "b.mp3"]
        new_id = await pg.execute("INSERT INTO triggers (user_id, event_type, condition_key, action, created_at) "
                                  "VALUES (1, 'chat', 'always', 'tts', ?)", (NOW,))
        assert new_id == 4  # after the deleted 3, as SQLite's AUTOINCREMENT would have said
        assert await pg.execute("INSERT INTO users (username, created_at) VALUES ('carol', ?)", (NOW,)) == 3
        await pg.execute("DELETE FROM triggers WHERE id = 4")
        expected = await _dump(pg)
    finally:
        await pg.close()

    # A second import into the now full database is refused and changes nothing.
    code, _, err = await _cli(config_file, capsys, "db", "import", str(tmp_path / "old.db"))
    assert code == 1 and "not empty" in err

    code, _, err = await _cli(config_file, capsys, "backup", str(tmp_path / "pg-backup.db"))
    assert code == 0, err
    with sqlite3.connect(tmp_path / "pg-backup.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'triggers'").fetchone() == (4,)
    conn.close()
    backup = Database(tmp_path / "pg-backup.db")
    await backup.open()
    try:
        assert await _dump(backup) == expected
        assert [s.filename for s in await sounds.list_sounds(backup, 1)] == ["c.mp3", "a.mp3", "b.mp3"]
    finally:
        await backup.close()


async def test_import_needs_postgresql_and_an_existing_file(tmp_path: Path, pg_url: str, capsys) -> None:
    code, _, err = await _cli(_config_file(tmp_path, ""), capsys, "db", "import", str(tmp_path / "x.db"))
    assert code == 1 and "database_url" in err
    code, _, err = await _cli(_config_file(tmp_path, pg_url), capsys, "db", "import", str(tmp_path / "x.db"))
    assert code == 1 and "does not exist" in err


@pytest.mark.both_backends
async def test_db_migrate_prints_the_schema_version(tmp_path: Path, database_url: str, capsys) -> None:
    code, out, _ = await _cli(_config_file(tmp_path, database_url), capsys, "db", "migrate")
    assert code == 0 and out.strip() == f"database schema at version {len(MIGRATIONS)}"
