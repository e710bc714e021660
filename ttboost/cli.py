"""Command line: `serve` (default), `license …`, `user …`, `backup PATH`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from pathlib import Path
from typing import Awaitable, Callable

from . import accounts, licenses
from .config import Config, ConfigError, load_config, load_env_file
from .db import AnyDatabase, Database, DatabaseError, DatabaseUnavailable, PostgresDatabase, make_database
from .db.copy import copy_database
from .errors import ApiError
from .logsetup import setup_logging
from .security import SHARED_SECRETS, PasswordHasher
from .timeutil import utcnow
from .users import get_user_by_name

_LOGGER = logging.getLogger(__name__)

Command = Callable[[AnyDatabase, Config, argparse.Namespace], Awaitable[int]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="TTBoost server")
    parser.add_argument("--config", default=None,
                        help="path of the TOML config (default config.toml if it exists, else built-in defaults)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the server (default)")

    lic = sub.add_parser("license", help="issue and manage license keys").add_subparsers(dest="action", required=True)
    issue = lic.add_parser("issue", help="print new keys, one per line")
    issue.add_argument("--plan", required=True, help="plan id from the config")
    issue.add_argument("--days", type=int, required=True, help="days from now until the keys expire")
    issue.add_argument("--count", type=int, default=1, help="how many keys (default 1)")
    issue.add_argument("--email", help="buyer's e-mail, kept with the license")
    issue.add_argument("--order-id", help="order id; issuing the same order again prints its existing key")
    lic.add_parser("list", help="every license: key, plan, status, expiry, user")
    revoke = lic.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key")
    extend = lic.add_parser("extend", help="add days to a key's expiry")
    extend.add_argument("key")
    extend.add_argument("--days", type=int, required=True)

    user = sub.add_parser("user", help="manage accounts").add_subparsers(dest="action", required=True)
    user.add_parser("list", help="every account with its plan")
    passwd = user.add_parser("passwd", help="set a password (read from the terminal, or stdin when piped)")
    passwd.add_argument("username")

    backup = sub.add_parser("backup", help="consistent copy of the database into a new SQLite file, safe while "
                                           "the server runs (PostgreSQL too: restore with `db import`)")
    backup.add_argument("path", type=Path)

    db = sub.add_parser("db", help="the database itself").add_subparsers(dest="action", required=True)
    db.add_parser("migrate", help="bring the schema up to date (the server does it at start too); print its version")
    imp = db.add_parser("import", help="copy every row of a SQLite file (an old data/ttboost.db, or a backup) into "
                                       "the configured PostgreSQL database, which must be empty")
    imp.add_argument("source", help="path of the SQLite file")
    return parser


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in (header, *rows))


async def _license_issue(db: Database, config: Config, args: argparse.Namespace) -> int:
    if args.days < 1 or args.count < 1:
        raise ValueError("--days and --count must be at least 1")
    if args.order_id is not None and args.count != 1:
        raise ValueError("--order-id issues exactly one key (omit --count)")
    issued = await licenses.issue(db, config, args.plan, args.days, count=args.count, order_id=args.order_id,
                                  email=args.email)
    print("\n".join(lic.key for lic in issued))
    return 0


async def _license_list(db: Database, config: Config, args: argparse.Namespace) -> int:
    now = utcnow()
    rows = [(lic.key, lic.plan, lic.state(now), lic.expires_at,
             username or (f"#{lic.user_id} (key-only)" if lic.user_id is not None else "-"))
            for lic, username in await licenses.list_licenses(db)]
    print(_table(("KEY", "PLAN", "STATUS", "EXPIRES", "USER"), rows))
    return 0


async def _license_revoke(db: Database, config: Config, args: argparse.Namespace) -> int:
    lic = await licenses.revoke(db, args.key)
    print(f"revoked {lic.key}")
    return 0


async def _license_extend(db: Database, config: Config, args: argparse.Namespace) -> int:
    lic = await licenses.extend(db, args.key, args.days)
    print(f"{lic.key} now expires {lic.expires_at}")
    return 0


async def _user_list(db: Database, config: Config, args: argparse.Namespace) -> int:
    rows = []
    for row in await db.fetchall("SELECT id, username, created_at FROM users ORDER BY id"):
        plan = await licenses.plan_for_user(db, row["id"])
        state = "active" if plan.active else ("expired" if plan.plan_id else "none")
        rows.append((str(row["id"]), row["username"] or "(key-only)", plan.plan_id or "-", state,
                     plan.expires_at or "-", row["created_at"]))
    print(_table(("ID", "USERNAME", "PLAN", "LICENSE", "EXPIRES", "CREATED"), rows))
    return 0


async def _user_passwd(db: Database, config: Config, args: argparse.Namespace) -> int:
    try:
        user = await get_user_by_name(db, accounts.normalize_username(args.username))
    except ValueError:  # not a valid handle, so certainly not a user
        user = None
    if user is None:
        raise ValueError(f"no user named {args.username!r}")
    await accounts.set_password(db, PasswordHasher(config.auth.bcrypt_rounds), user, args.password)
    print(f"password of {user.username} changed; their older tokens no longer work")
    return 0


async def _backup(db: AnyDatabase, config: Config, args: argparse.Namespace) -> int:
    target: Path = args.path
    if isinstance(db, Database) and target.exists() and target.resolve() == Path(db.path).resolve():
        raise ValueError("the backup path is the live database itself")
    # Written beside the target, then renamed: a failed backup never leaves a half-written file at PATH.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        if isinstance(db, PostgresDatabase):
            # One read-only snapshot of PostgreSQL into a SQLite file of the same schema: a backup that
            # needs no PostgreSQL tools of matching version, and that `db import` restores.
            copy = Database(tmp)
            await copy.open()
            try:
                await copy_database(db, copy)
            finally:
                await copy.close()
        else:
            await db.backup(tmp)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)
    print(f"backup written to {target}")
    return 0


async def _db_migrate(db: AnyDatabase, config: Config, args: argparse.Namespace) -> int:
    version = await (db.schema_version() if isinstance(db, PostgresDatabase) else db.fetchval("PRAGMA user_version"))
    print(f"database schema at version {version}")
    return 0


async def _db_import(db: AnyDatabase, config: Config, args: argparse.Namespace) -> int:
    if not isinstance(db, PostgresDatabase):
        raise ValueError("db import copies into PostgreSQL: set storage.database_url (or DATABASE_URL) first")
    source_path = Path(args.source)
    if not source_path.is_file():
        raise ValueError(f"{source_path} does not exist")
    source = Database(source_path)
    await source.open()  # an older schema is brought up to date first, so both sides have the same columns
    try:
        copied = await copy_database(source, db)
    finally:
        await source.close()
    print("\n".join(f"{table}: {count} rows" for table, count in copied.items()))
    # The generated secrets beside it (data/jwt.secret, tts.secret): on PostgreSQL they live in the database,
    # and without the old JWT secret every app would have to log in again.
    for name in SHARED_SECRETS:
        path = source_path.parent / f"{name}.secret"
        if path.is_file():
            await db.set_shared_secret(name, (await asyncio.to_thread(path.read_text, encoding="ascii")).strip())
            print(f"{path.name}: carried over")
    return 0


_COMMANDS: dict[tuple[str, str | None], Command] = {
    ("license", "issue"): _license_issue,
    ("license", "list"): _license_list,
    ("license", "revoke"): _license_revoke,
    ("license", "extend"): _license_extend,
    ("user", "list"): _user_list,
    ("user", "passwd"): _user_passwd,
    ("backup", None): _backup,
    ("db", "migrate"): _db_migrate,
    ("db", "import"): _db_import,
}


def _read_password() -> str:
    """The new password: prompted twice on a terminal, else the first line of stdin (scripts and tests)."""
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Repeat: ") != first:
            raise ValueError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def _run(command: Command, config: Config, args: argparse.Namespace) -> int:
    # The server's own database: SQLite's WAL and busy_timeout, or PostgreSQL's own locking, let both write
    # safely at the same time.
    db = make_database(config)
    await db.open()
    try:
        return await command(db, config, args)
    finally:
        await db.close()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        from_env_file = load_env_file()  # before the config: it reads the environment
        if args.config is not None and not Path(args.config).is_file():
            raise ConfigError(f"config: {args.config} does not exist")  # a typo must not mean "all defaults"
        config = load_config(args.config or "config.toml")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command in (None, "serve"):
        setup_logging()
        if from_env_file:
            _LOGGER.info("read .env: %s", ", ".join(from_env_file))
        from .server import serve

        return serve(config)
    setup_logging("WARNING")  # management commands print their result; only problems are logged
    command = _COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        if command is _user_passwd:
            try:
                args.password = accounts.check_password(_read_password())
            except ValueError as exc:
                raise ValueError(f"password: {exc}") from None
        return asyncio.run(_run(command, config, args))
    except ApiError as exc:
        print(f"error: {exc.detail}", *(f"{k}: {'; '.join(v)}" for k, v in (exc.fields or {}).items()),
              sep="\n  ", file=sys.stderr)
    except (ValueError, OSError, DatabaseUnavailable, *DatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1
