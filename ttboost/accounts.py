"""Accounts: usernames and passwords, first login by license key, password login and change, legacy key login."""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta
from typing import Any, Final, NamedTuple

from . import licenses
from .config import Config
from .db import Database
from .errors import ApiError
from .security import PasswordHasher, TokenService
from .timeutil import iso, utcnow
from .users import User, get_user, get_user_by_name

_LOGGER = logging.getLogger(__name__)

USERNAME_RE: Final = re.compile(r"[a-z0-9._]{2,24}")
PASSWORD_MIN_BYTES: Final = 6
PASSWORD_MAX_BYTES: Final = 72  # bcrypt ignores (bcrypt 5 refuses) anything longer
REDEEM_ATTEMPTS: Final = 3  # re-runs when the account changed between the bcrypt step and the transaction


def normalize_username(raw: str) -> str:
    """TikTok handle as stored: trimmed, leading @ removed, lower case; ValueError says what is wrong."""
    name = raw.strip().removeprefix("@").lower()
    if not USERNAME_RE.fullmatch(name):
        raise ValueError("2-24 characters: letters a-z, digits, '.' and '_'")
    return name


def check_password(password: str) -> str:
    """The password unchanged if its UTF-8 length is 6-72 bytes, else ValueError."""
    size = len(password.encode("utf-8"))
    if size < PASSWORD_MIN_BYTES:
        raise ValueError(f"at least {PASSWORD_MIN_BYTES} bytes")
    if size > PASSWORD_MAX_BYTES:
        raise ValueError(f"at most {PASSWORD_MAX_BYTES} bytes (UTF-8)")
    return password


def invalid_credentials() -> ApiError:
    return ApiError(401, "invalid credentials", "invalid_credentials")


class Redeemed(NamedTuple):
    user: User
    claimed: bool  # a key-only account got its username now (cached settings of that user are stale)


class _Changed(Exception):
    """The account changed after its password was checked outside the transaction: check again."""


async def _create_user(db: Database, username: str | None, password_hash: str | None, now: datetime) -> User:
    user_id = await db.execute(
        "INSERT INTO users (username, password_hash, token_version, settings, created_at) VALUES (?, ?, 0, '{}', ?)",
        (username, password_hash, iso(now)))
    user = await get_user(db, user_id)
    assert user is not None  # just inserted, inside the caller's transaction
    return user


async def _retire_if_empty(db: Database, user_id: int) -> None:
    """A key-only account whose key moved to a named account: its tokens stop working.

    The row is kept rather than deleted (its settings or sounds may still be wanted by the operator); bumping
    the token version is what makes the legacy app's still-unexpired ws_token stop working.
    """
    if await licenses.count_licenses(db, user_id) == 0:
        await db.execute("UPDATE users SET token_version = token_version + 1 WHERE id = ? AND username IS NULL",
                         (user_id,))
        _LOGGER.info("key-only account %d merged into a named account; its tokens are revoked", user_id)


async def redeem_license(db: Database, hasher: PasswordHasher, *, username: str, password: str,
                         license_key: str, now: datetime | None = None) -> Redeemed:
    """First login (spec §4): check the key, create or verify the account, bind the key; one transaction.

    bcrypt runs before the transaction so the database lock is never held for it; if the account changed in
    between (created or re-passworded by a concurrent request), the whole step runs again.
    """
    for _ in range(REDEEM_ATTEMPTS):
        seen = await get_user_by_name(db, username)
        new_hash: str | None = None
        password_ok = False
        if seen is None:
            new_hash = await hasher.hash(password)
        else:
            password_ok = await hasher.verify(password, seen.password_hash)
        try:
            return await _redeem_once(db, username, license_key, seen, new_hash, password_ok, now or utcnow())
        except _Changed:
            continue
    raise ApiError(503, "busy, try again", "busy")


async def _redeem_once(db: Database, username: str, license_key: str, seen: User | None, new_hash: str | None,
                       password_ok: bool, now: datetime) -> Redeemed:
    async with db.transaction():
        lic = await licenses.lookup(db, license_key)
        licenses.check_usable(lic, now)
        user = await get_user_by_name(db, username)
        if (user is None) != (seen is None) or (
                user is not None and seen is not None
                and (user.id, user.password_hash) != (seen.id, seen.password_hash)):
            raise _Changed
        owner = await get_user(db, lic.user_id) if lic.user_id is not None else None
        key_only_owner = owner is not None and owner.username is None
        if owner is not None and not key_only_owner and (user is None or owner.id != user.id):
            raise licenses.license_taken()
        if user is None:
            assert new_hash is not None
            if owner is not None and key_only_owner:
                # The legacy app made this account from the key; the first named login claims it.
                await db.execute("UPDATE users SET username = ?, password_hash = ? WHERE id = ? AND username IS NULL",
                                 (username, new_hash, owner.id))
                _LOGGER.info("key-only account %d claimed", owner.id)
                claimed = await get_user(db, owner.id)
                assert claimed is not None
                return Redeemed(claimed, True)
            user = await _create_user(db, username, new_hash, now)
            _LOGGER.info("account %d created by license redeem", user.id)
        elif not password_ok:
            raise invalid_credentials()
        await licenses.bind(db, lic.key, user.id)
        if owner is not None and key_only_owner and owner.id != user.id:
            await _retire_if_empty(db, owner.id)
        return Redeemed(user, False)


async def redeem_for_user(db: Database, user: User, license_key: str, now: datetime | None = None) -> None:
    """Binds another key to a logged-in user (renewal), with the same checks as the first redeem."""
    now = now or utcnow()
    async with db.transaction():
        lic = await licenses.lookup(db, license_key)
        licenses.check_usable(lic, now)
        owner = await get_user(db, lic.user_id) if lic.user_id is not None else None
        if owner is not None and owner.id != user.id and owner.username is not None:
            raise licenses.license_taken()
        await licenses.bind(db, lic.key, user.id)
        if owner is not None and owner.id != user.id:  # a key-only account's key, now claimed by its owner
            await _retire_if_empty(db, owner.id)


async def login(db: Database, hasher: PasswordHasher, username: str, password: str) -> User:
    """The user for a username and password, or 401 `invalid credentials` in the same time either way."""
    user = await get_user_by_name(db, username)
    ok = await hasher.verify(password, user.password_hash if user is not None else None)
    if user is None or not ok:
        raise invalid_credentials()
    return user


async def change_password(db: Database, hasher: PasswordHasher, user: User, current: str, new: str) -> User:
    """Checks the current password, stores the new one and bumps token_version (older tokens stop working)."""
    if not await hasher.verify(current, user.password_hash):
        raise invalid_credentials()
    return await set_password(db, hasher, user, new, expected_version=user.token_version)


async def set_password(db: Database, hasher: PasswordHasher, user: User, new: str,
                       expected_version: int | None = None) -> User:
    """New hash and token_version + 1; with expected_version, a concurrent change in between → 401."""
    new_hash = await hasher.hash(check_password(new))
    sql = "UPDATE users SET password_hash = ?, token_version = token_version + 1 WHERE id = ?"
    params: list[Any] = [new_hash, user.id]
    if expected_version is not None:
        sql += " AND token_version = ?"
        params.append(expected_version)
    if await db.execute(sql, params) != 1:
        raise invalid_credentials()
    updated = await get_user(db, user.id)
    assert updated is not None
    _LOGGER.info("password of user %d changed; older tokens revoked", user.id)
    return updated


async def legacy_login(db: Database, license_key: str, now: datetime | None = None) -> User:
    """The first mobile build's key login (spec §4): the key's user, or a new key-only account bound to it.

    A bound key logs its user in even after it expired (the user may have renewed with another key, and an
    expired user still logs in to see that); a revoked key never does. An account that has a password never
    logs in here: a key travels in shop e-mails and receipts, it must not be a second password.
    """
    now = now or utcnow()
    async with db.transaction():
        lic = await licenses.lookup(db, license_key)
        if lic.status != "active":
            raise licenses.license_not_active()
        if lic.user_id is not None:
            user = await get_user(db, lic.user_id)
            if user is not None:
                if user.password_hash is not None:
                    raise ApiError(403, "password required", "password_required")
                return user
        licenses.check_usable(lic, now)
        user = await _create_user(db, None, None, now)
        await licenses.bind(db, lic.key, user.id)
    _LOGGER.info("key-only account %d created by legacy login", user.id)
    return user


async def token_response(db: Database, tokens: TokenService, user: User, now: datetime | None = None) -> dict[str, Any]:
    """The body of every v2 login (spec §4)."""
    plan = await licenses.plan_for_user(db, user.id, now)
    return {
        "access_token": tokens.issue(user.id, user.token_version, now.timestamp() if now else time.time()),
        "token_type": "bearer",
        "expires_in": int(tokens.ttl_seconds),
        "user_id": user.id,
        "username": user.username,
        "plan": plan.plan_id,
        "license_expires_at": plan.expires_at,
    }


def legacy_response(tokens: TokenService, config: Config, user: User,
                          now: datetime | None = None) -> dict[str, Any]:
    """The first mobile build's login body, typed as the seed sent it: ids as strings, and expires_at is when
    the token expires (the app re-logs in then), not the licence expiry. ws_token is an ordinary access token."""
    now = now or utcnow()
    token = tokens.issue(user.id, user.token_version, now.timestamp())
    return {
        "status": "ok",
        "user_id": str(user.id),
        "ws_token": token,
        "ws_url": f"{config.ws_base}/ws/{token}",
        "server_time": iso(now),
        "expires_at": iso(now + timedelta(seconds=tokens.ttl_seconds)),
    }
