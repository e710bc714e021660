"""Passwords (bcrypt off the event loop), access tokens (JWT HS256 with a token version), license keys."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import math
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Final, TypeVar

import bcrypt
import jwt

from .errors import ApiError
from .fileio import make_private_dir

_T = TypeVar("_T")


# 32 symbols without I, L, O, U: 5 bits each, 12 symbols = 60 bits (spec §3).
KEY_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
KEY_PREFIX: Final = "TTB"
KEY_GROUPS: Final = 3
KEY_GROUP_LEN: Final = 4
JWT_ALGORITHM: Final = "HS256"
SECRET_BYTES: Final = 32  # generated JWT secret length
SHARED_SECRETS: Final = ("jwt", "tts")  # the generated data/<name>.secret files (in PostgreSQL: cluster_secrets)
VERIFIED_TOKENS_KEPT: Final = 10_000  # checked tokens remembered (~300 bytes each); past this it starts over
ID_MAX: Final = 2**63 - 1  # SQLite's INTEGER: a larger user id cannot even be a query parameter
_CANONICAL_ID: Final = re.compile(r"[1-9][0-9]{0,18}")  # "1", never " 1", "01", "+1" or "1.0"


def generate_license_key() -> str:
    groups = ("".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_GROUP_LEN)) for _ in range(KEY_GROUPS))
    return "-".join((KEY_PREFIX, *groups))


def normalize_license_key(raw: str) -> str:
    """Upper case, spaces removed; the format itself is checked by lookup (an unknown key is not found)."""
    return "".join(raw.split()).upper()


def constant_time_equals(given: str, expected: str) -> bool:
    # surrogateescape: a header's undecodable bytes (aiohttp keeps them as surrogates) compare as the bytes sent.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


class PasswordHasher:
    """bcrypt off the event loop, at most `workers` hashes at a time (one per core: more only makes each slower),
    with at most `queue` more waiting, and no more than would wait over `max_wait` seconds by the running
    estimate of one hash (a slow or busy machine queues fewer); past that a login is told at once to come back
    (503 + Retry-After) rather than waiting many seconds and timing out. Unknown users are checked against a
    dummy hash so timing matches."""

    def __init__(self, rounds: int = 12, *, workers: int = 0, queue: int = 16, max_wait: float = 3.0) -> None:
        self.rounds = rounds
        self.workers = workers or os.cpu_count() or 1
        self.queue = queue
        self.max_wait = max_wait
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending = 0  # hashes submitted and not finished: running + waiting
        self._seconds = 0.25  # running estimate of one hash, for Retry-After
        self._dummy: bytes | None = None
        self._warming = asyncio.Lock()

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        waits = (self._pending // self.workers + 1) * self._seconds  # until this one is done, roughly
        if self._pending >= self.workers + self.queue or (self._pending >= self.workers and waits > self.max_wait):
            retry = max(1, math.ceil(self._pending / self.workers * self._seconds))
            raise ApiError(503, "busy, try again", "busy", headers={"Retry-After": str(retry)})
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="bcrypt")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, func, *args)
        finally:
            self._pending -= 1

    def _timed(self, func: Callable[..., _T], *args: Any) -> _T:
        started = time.perf_counter()
        result = func(*args)
        self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - started)
        return result

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _hash_sync(self, password: str) -> str:
        return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(self.rounds)).decode("ascii")

    async def hash(self, password: str) -> str:
        return await self._run(self._hash_sync, password)

    async def warm_up(self) -> None:
        """Makes the dummy hash at start, so even the first unknown-user login costs one check, not two."""
        # One at a time: a warm-up overlapping another (start-up's and the first unknown-user login's) waits for
        # that one's dummy instead of queueing a second hash, which a full queue would refuse with 503.
        if self._dummy is not None:
            return
        async with self._warming:
            if self._dummy is None:
                self._dummy = (await self.hash(secrets.token_urlsafe(16))).encode("ascii")

    async def verify(self, password: str, hashed: str | None) -> bool:
        """True when the password matches; with no hash, burns the same time and returns False."""
        if hashed is None:
            await self.warm_up()
            assert self._dummy is not None
            await self._run(bcrypt.checkpw, password.encode("utf-8"), self._dummy)
            return False
        return await self._run(bcrypt.checkpw, password.encode("utf-8"), hashed.encode("ascii"))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    version: int
    expires_at: float


class TokenService:
    """Issues and checks access tokens; `ver` must equal the user's token_version (a password change bumps it)."""

    def __init__(self, secret: str, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        # Tokens whose signature and claims were checked: the app sends the same token with every request, and
        # PyJWT's decode is ~40-100 µs. Only the expiry is checked again. Keyed by the whole token.
        self._verified: dict[str, TokenClaims] = {}

    def issue(self, user_id: int, version: int, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        payload = {"sub": str(user_id), "iat": int(now), "exp": int(now + self.ttl_seconds), "ver": version}
        return jwt.encode(payload, self._secret, algorithm=JWT_ALGORITHM)

    def decode(self, token: str) -> TokenClaims | None:
        """Claims of a valid, unexpired HS256 token, else None (bad signature, alg none, expired, malformed)."""
        claims = self._verified.get(token)
        if claims is not None:
            return claims if claims.expires_at > self._clock() else None  # PyJWT's rule: expired when exp <= now
        try:
            data = jwt.decode(token, self._secret, algorithms=[JWT_ALGORITHM],
                              options={"require": ["sub", "iat", "exp", "ver"]})
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            return None
        # Strict: only the exact shapes issue() writes. A token is signed, so anything else means a leaked or
        # misused secret; refusing it costs nothing and keeps odd values (" 1", 0.5, 10**40) away from SQL.
        sub, ver, exp = data["sub"], data["ver"], data["exp"]
        if not (isinstance(sub, str) and _CANONICAL_ID.fullmatch(sub) and int(sub) <= ID_MAX):
            return None
        if type(ver) is not int or not 0 <= ver <= ID_MAX or type(exp) not in (int, float):
            return None
        claims = TokenClaims(int(sub), ver, float(exp))
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()
        self._verified[token] = claims
        return claims


def load_or_create_secret(path: Path) -> str:
    """The JWT secret from data/jwt.secret, created once with mode 0600 (spec §1)."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    make_private_dir(path.parent)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # fails if another process created it first: then theirs wins
    except FileExistsError:
        secret = path.read_text(encoding="ascii").strip()
    finally:
        os.unlink(tmp)
    return secret
