"""Login under a flood: bcrypt (cost 12, the production default) one per core, a bounded queue, 503 past it.

Prints login throughput (sequential and with all cores busy), then fires N concurrent logins (default 32) and
shows that every one is answered — 200, or 503 with Retry-After at once — and how long the slowest took.

    python bench/bench_login.py [--concurrent 32] [--rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter

import aiohttp

from common import PLAN, Server, machine, summary_ms, write_result

PASSWORD = "bench-password"


async def _register(session: aiohttp.ClientSession, server: Server) -> None:
    issued = await asyncio.to_thread(_issue_key, server)
    async with session.post(server.url + "/v2/auth/redeem-license",
                            json={"username": "bencher", "password": PASSWORD, "license_key": issued}) as resp:
        assert resp.status == 200, await resp.text()


def _issue_key(server: Server) -> str:
    import subprocess
    import sys

    from common import server_tree

    out = subprocess.run([sys.executable, "run.py", "license", "issue", "--plan", PLAN, "--days", "30"],
                         cwd=server_tree(), env=server.env, capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


async def _login(session: aiohttp.ClientSession, url: str, index: int) -> tuple[int, float, str | None]:
    # Each "client" its own address in X-Forwarded-For, so the per-IP auth limit is not what is measured.
    started = time.perf_counter()
    async with session.post(url + "/v2/auth/login", json={"username": "bencher", "password": PASSWORD},
                            headers={"X-Forwarded-For": f"198.51.100.{index % 250 + 1}"}) as resp:
        await resp.read()
        return resp.status, time.perf_counter() - started, resp.headers.get("Retry-After")


async def main(concurrent: int, rounds: int) -> None:
    env = {"TTBOOST_AUTH_BCRYPT_ROUNDS": str(rounds), "TTBOOST_LIMITS_AUTH_PER_MINUTE": "0",
           "TTBOOST_SERVER_TRUSTED_PROXIES": "127.0.0.1"}
    async with Server(env) as server, aiohttp.ClientSession() as session:
        await _register(session, server)
        sequential = [await _login(session, server.url, i) for i in range(8)]
        seq_rate = len(sequential) / sum(t for _s, t, _r in sequential)

        started = time.perf_counter()
        flood = await asyncio.gather(*(_login(session, server.url, i) for i in range(concurrent)))
        flood_seconds = time.perf_counter() - started
        statuses = Counter(s for s, _t, _r in flood)
        ok = [t for s, t, _r in flood if s == 200]
        refused = [t for s, t, _r in flood if s == 503]
        retry_after = sorted({r for s, _t, r in flood if s == 503})

    result = {
        "machine": machine(), "bcrypt_rounds": rounds, "cores": os.cpu_count(),
        "sequential_logins_per_s": round(seq_rate, 2),
        "flood": {"concurrent": concurrent, "statuses": dict(statuses), "wall_s": round(flood_seconds, 3),
                  "ok_per_s": round(len(ok) / flood_seconds, 2) if ok else 0.0,
                  "ok_latency": summary_ms(ok), "refused_latency": summary_ms(refused),
                  "retry_after": retry_after},
    }
    print(f"bcrypt cost {rounds} on {os.cpu_count()} cores")
    print(f"sequential: {seq_rate:.1f} logins/s")
    print(f"{concurrent} at once: {dict(statuses)} in {flood_seconds:.2f} s; "
          f"200s: {len(ok) / flood_seconds if ok else 0:.1f}/s, slowest {max(ok, default=0):.2f} s; "
          f"503s answered within {max(refused, default=0):.3f} s (Retry-After {retry_after})")
    print("every request answered:", sum(statuses.values()) == concurrent and set(statuses) <= {200, 503})
    print("written", write_result("login", result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    asyncio.run(main(args.concurrent, args.rounds))
