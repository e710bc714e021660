"""Token-bucket rate limits per key (client IP or user id), and the client-IP rule for trusted proxies."""

from __future__ import annotations

import ipaddress
import math
import time
from typing import Callable, Final, Iterable, Protocol

from aiohttp import web

from .errors import ApiError

MAX_KEYS: Final = 10_000  # buckets kept; beyond this the least recently used half is dropped
IPV6_PREFIX: Final = 64  # bits: one subscriber's IPv6 block; an attacker rotates freely inside it


def ip_bucket(ip: str) -> str:
    """The rate-limit key of a client address: IPv4 as is, IPv6 by its /64 (IPv4-mapped IPv6 as the IPv4)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an address (a unix socket, a test transport): its own bucket
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, IPV6_PREFIX), strict=False))
    return str(addr)


class SharedBuckets(Protocol):
    """Token buckets every worker of a cluster takes from (cluster/ratelimits.py): N workers, one limit."""

    async def take(self, key: str, limit: int, period: float) -> float | None: ...


class RateLimiter:
    """`limit` requests per `period` seconds per key; a burst of `limit` is allowed, then one per period/limit."""

    def __init__(self, limit: int, period: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 name: str = "") -> None:
        self.limit = limit
        self.period = period
        self.name = name  # keeps limiters apart in shared buckets ("tts" and "simulate" both count per user)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated at)
        self.shared: SharedBuckets | None = None  # cluster mode: the buckets live in the shared database

    @property
    def _rate(self) -> float:
        return self.limit / self.period

    def hit(self, key: str) -> float | None:
        """Takes one token for key; returns None when allowed, else seconds until the next token."""
        if self.limit <= 0:
            return None
        now = self._clock()
        tokens, updated = self._buckets.pop(key, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - updated) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            retry = None
        else:
            self._buckets[key] = (tokens, now)
            retry = (1.0 - tokens) / self._rate
        if len(self._buckets) > MAX_KEYS:
            self._prune(now)
        return retry

    async def check(self, key: str) -> None:
        """Raises 429 `too many requests` with Retry-After (whole seconds, at least 1)."""
        if self.shared is not None and self.limit > 0:
            retry = await self.shared.take(f"{self.name}:{key}", self.limit, self.period)
        else:
            retry = self.hit(key)
        if retry is not None:
            raise ApiError(429, "too many requests", "too_many_requests",
                           headers={"Retry-After": str(max(1, math.ceil(retry)))})

    def _prune(self, now: float) -> None:
        # Oldest-updated first; dicts keep insertion order and hit() re-inserts on every use.
        for key in list(self._buckets)[: len(self._buckets) - MAX_KEYS // 2]:
            del self._buckets[key]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    """Addresses or CIDRs ("10.0.0.0/8", "::1") as networks; ValueError for anything else."""
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def in_networks(address: str, networks: Iterable[Network]) -> bool:
    """Whether address is inside one of networks; an IPv4-mapped IPv6 peer (::ffff:a.b.c.d) counts as IPv4."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return any(addr in net or (mapped is not None and mapped in net) for net in networks)


class ClientIP:
    """The caller's IP: the peer, or the right-most untrusted X-Forwarded-For hop when the peer is trusted."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted = parse_networks(trusted)

    def _is_trusted(self, ip: str) -> bool:
        return in_networks(ip, self._trusted)

    def __call__(self, request: web.Request) -> str:
        peer = request.remote or ""
        if not self._trusted or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer
