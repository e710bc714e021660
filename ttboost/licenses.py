"""License keys: issue, look up, check, bind, revoke, extend; a user's plan. Shared by the HTTP API and the CLI."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Final, Iterable, NamedTuple

from .config import Config
from .db import Database, IntegrityError, Row
from .errors import ApiError, validation_error
from .security import generate_license_key, normalize_license_key
from .timeutil import iso, parse_iso, utcnow

_LOGGER = logging.getLogger(__name__)

KEY_ATTEMPTS: Final = 5  # fresh keys tried when one collides (60 bits: a collision is all but impossible)
_COLUMNS: Final = "key, plan, status, issued_at, expires_at, user_id, order_id, email, amount, currency"


@dataclass(frozen=True, slots=True)
class License:
    key: str
    plan: str
    status: str  # active | revoked
    issued_at: str  # ISO 8601 UTC with Z; second precision, so strings compare like times
    expires_at: str
    user_id: int | None
    order_id: str | None
    email: str | None
    amount: int | None
    currency: str | None

    @classmethod
    def from_row(cls, row: Row) -> License:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= iso(now or utcnow())

    def state(self, now: datetime | None = None) -> str:
        """active | revoked | expired, for people (the CLI table)."""
        if self.status != "active":
            return self.status
        return "expired" if self.expired(now) else "active"


class UserPlan(NamedTuple):
    plan_id: str | None
    expires_at: str | None  # ISO 8601 UTC with Z
    active: bool


# The texts the app matches on (spec §2).
def license_not_found() -> ApiError:
    return ApiError(404, "license not found", "license_not_found")


def license_not_active() -> ApiError:
    return ApiError(403, "license not active", "license_not_active")


def license_expired() -> ApiError:
    return ApiError(403, "license expired", "license_expired")


def license_taken() -> ApiError:
    return ApiError(409, "license already bound to another user", "license_bound")


def _require_plan(config: Config, plan: str) -> None:
    if config.plan(plan) is None:
        raise validation_error({"plan": [f"unknown plan; configured: {', '.join(p.id for p in config.plans)}"]})


async def get(db: Database, key: str) -> License | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM licenses WHERE key = ?", (normalize_license_key(key),))
    return None if row is None else License.from_row(row)


async def lookup(db: Database, key: str) -> License:
    """The license, or 404 `license not found`."""
    lic = await get(db, key)
    if lic is None:
        raise license_not_found()
    return lic


def check_usable(lic: License, now: datetime | None = None) -> None:
    """403 unless the license is active and unexpired."""
    if lic.status != "active":
        raise license_not_active()
    if lic.expired(now):
        raise license_expired()


async def bind(db: Database, key: str, user_id: int) -> None:
    """Binds the key to the user; callers check redeemability first, in the same transaction."""
    await db.execute("UPDATE licenses SET user_id = ? WHERE key = ?", (user_id, key))


async def _insert(db: Database, plan: str, issued: datetime, days: int, order_id: str | None,
                  email: str | None, amount: int | None, currency: str | None) -> License:
    expires = issued + timedelta(days=days)
    for _ in range(KEY_ATTEMPTS):
        key = generate_license_key()
        try:
            # The savepoint undoes the failed statement alone, so the transaction stays usable for the next
            # try (PostgreSQL would otherwise abort the whole transaction).
            async with db.savepoint():
                await db.execute(
                    f"INSERT INTO licenses ({_COLUMNS}) VALUES (?, ?, 'active', ?, ?, NULL, ?, ?, ?, ?)",
                    (key, plan, iso(issued), iso(expires), order_id, email, amount, currency))
        except IntegrityError:
            # Only the key can collide here (order_id was checked in this transaction).
            continue
        return await lookup(db, key)
    raise RuntimeError("could not generate a unique license key")


async def issue(db: Database, config: Config, plan: str, days: int, *, count: int = 1,
                order_id: str | None = None, email: str | None = None, amount: int | None = None,
                currency: str | None = None, now: datetime | None = None) -> list[License]:
    """New keys, expiring `days` after issue; with an order_id, the order's existing key if it has one."""
    _require_plan(config, plan)
    if days < 1 or count < 1:
        raise ValueError("days and count must be at least 1")
    if order_id is not None and count != 1:
        raise ValueError("an order gets exactly one key")
    issued = now or utcnow()
    async with db.transaction():  # BEGIN IMMEDIATE: concurrent retries of one order queue up here
        if order_id is not None:
            row = await db.fetchone(f"SELECT {_COLUMNS} FROM licenses WHERE order_id = ?", (order_id,))
            if row is not None:
                return [License.from_row(row)]
        created = [await _insert(db, plan, issued, days, order_id, email, amount, currency) for _ in range(count)]
    _LOGGER.info("issued %d license(s) for plan %s (order %s)", count, plan, order_id or "-")
    return created


async def issue_web(db: Database, config: Config, *, order_id: str, plan: str, ttl_days: int,
                    email: str | None = None, amount: int | None = None, currency: str | None = None,
                    now: datetime | None = None) -> License:
    """The web shop's call: plan checks, then one key per order, idempotent even under concurrent retries."""
    _require_plan(config, plan)
    allowed = config.auth.web_allowed_plans
    if allowed and plan not in allowed:
        raise ApiError(403, "plan not allowed", "plan_not_allowed")
    [lic] = await issue(db, config, plan, ttl_days, order_id=order_id, email=email, amount=amount,
                        currency=currency, now=now)
    return lic


async def list_licenses(db: Database) -> list[tuple[License, str | None]]:
    """Every license with its user's name (None when unbound or key-only), newest first."""
    rows = await db.fetchall(
        "SELECT l.*, u.username AS username FROM licenses l LEFT JOIN users u ON u.id = l.user_id "
        "ORDER BY l.issued_at DESC, l.key")
    return [(License.from_row(row), row["username"]) for row in rows]


async def revoke(db: Database, key: str) -> License:
    """Marks the key revoked (idempotent); 404 for an unknown key."""
    lic = await lookup(db, key)
    await db.execute("UPDATE licenses SET status = 'revoked' WHERE key = ?", (lic.key,))
    _LOGGER.info("license revoked (plan %s, user %s)", lic.plan, lic.user_id)  # never the key itself
    return await lookup(db, lic.key)


async def extend(db: Database, key: str, days: int, now: datetime | None = None) -> License:
    """Adds days to the current expiry; a key that already expired restarts from now, so the days are usable."""
    if days < 1:
        raise ValueError("days must be at least 1")
    now = now or utcnow()
    async with db.transaction():
        lic = await lookup(db, key)
        start = max(parse_iso(lic.expires_at), now)
        await db.execute("UPDATE licenses SET expires_at = ? WHERE key = ?",
                         (iso(start + timedelta(days=days)), lic.key))
    _LOGGER.info("license extended by %d days (plan %s, user %s)", days, lic.plan, lic.user_id)
    return await lookup(db, lic.key)


async def plan_for_user(db: Database, user_id: int, now: datetime | None = None) -> UserPlan:
    """Plan and expiry of the user's active, latest-expiring license; else the latest expired one, inactive."""
    async def load() -> tuple[str, str] | None:
        row = await db.fetchone("SELECT plan, expires_at FROM licenses WHERE user_id = ? AND status = 'active' "
                                "ORDER BY expires_at DESC LIMIT 1", (user_id,))
        return None if row is None else (row["plan"], row["expires_at"])

    # Every token check of the sockets and /me asks: from memory until the database changes (a redeem, a
    # revoke by the CLI); only the clock is read anew.
    found = await db.cached(("plan", user_id), load)
    if found is None:  # nothing bound, or only revoked keys: a revoked key's plan is not the user's plan
        return UserPlan(None, None, False)
    plan, expires_at = found
    # The same text comparison SQLite made in the query before (ISO timestamps order as text).
    return UserPlan(plan, expires_at, expires_at is not None and expires_at > iso(now or utcnow()))


async def has_active_license(db: Database, user_id: int) -> bool:
    """Whether the user may receive LIVE events now (spec §3)."""
    return (await plan_for_user(db, user_id)).active


async def require_active_license(db: Database, user_id: int) -> None:
    """403 `license expired` (the latest key ran out) or `license not active` (none bound, or revoked): for
    what costs the server (speech, simulated events), which only a paying user gets."""
    plan = await plan_for_user(db, user_id)
    if not plan.active:
        raise license_expired() if plan.plan_id else license_not_active()


async def users_in_good_standing(db: Database, user_ids: Iterable[int],
                                 now: datetime | None = None) -> dict[int, tuple[int, bool]]:
    """{user id: (token_version, has an active licence)} of those users that still exist, in one query per 500."""
    ids = sorted(set(user_ids))
    out: dict[int, tuple[int, bool]] = {}
    stamp = iso(now or utcnow())
    for start in range(0, len(ids), 500):  # well under SQLite's limit of bound parameters
        chunk = ids[start:start + 500]
        rows = await db.fetchall(
            f"SELECT u.id, u.token_version, EXISTS (SELECT 1 FROM licenses l WHERE l.user_id = u.id AND "
            f"l.status = 'active' AND l.expires_at > ?) AS active FROM users u "
            f"WHERE u.id IN ({', '.join('?' * len(chunk))})", (stamp, *chunk))
        out.update((row["id"], (row["token_version"], bool(row["active"]))) for row in rows)
    return out


async def count_licenses(db: Database, user_id: int) -> int:
    return int(await db.fetchval("SELECT COUNT(*) FROM licenses WHERE user_id = ?", (user_id,)))
