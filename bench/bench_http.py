"""HTTP benchmark: requests/s and latency p50/p99 of GET /v2/auth/me, /v2/triggers/list and /v2/sounds/list.

The server is `python run.py` in its own process (INFO logging to a file, as in production: one access-log line
per request). The account has the 100 triggers and 5 sounds of bench/workload.py, so the lists are full-size.
The load comes from `wrk` (one thread, keep-alive connections) when it is installed, else from an aiohttp
client in this process (same method, more client CPU). The per-user limit of /v2/triggers/* (20 a minute) is
switched off for the run: it would otherwise answer 429 after the 20th request.

With --pin the runs are repeated with every thread of the server on CPU 0 and wrk on CPU 1: each request's two
SQLite queries hop between the event loop and aiosqlite's worker thread (3 hand-offs per query), and on a VM a
hand-off between two cores costs more than the query; on one core the hand-offs are cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import time
from typing import Any, Final

import aiohttp

from bench.common import Server, auth, cpu_seconds, insert_users, machine, percentile, tokens, write_result
from bench.workload import configure_streamer

ENDPOINTS: Final = ("/v2/auth/me", "/v2/triggers/list", "/v2/sounds/list")
_UNIT: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match[1]) * _UNIT[match[2]]


def run_wrk(url: str, token: str, connections: int, seconds: float, cpu: int | None = None) -> dict[str, Any]:
    out = subprocess.run(
        (["taskset", "-c", str(cpu)] if cpu is not None else []) + ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-H", f"Authorization: Bearer {token}",
         url], capture_output=True, text=True, check=True).stdout
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {"tool": "wrk -t1", "requests_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])),
            "p50_ms": round(_ms(dist["50"]), 3), "p90_ms": round(_ms(dist["90"]), 3),
            "p99_ms": round(_ms(dist["99"]), 3), "non_2xx": int(errors[1]) if errors else 0,
            **({"socket_errors": socket_errors[1]} if socket_errors else {})}


async def run_aiohttp(url: str, token: str, connections: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        async def worker() -> None:
            nonlocal failures
            clock = time.perf_counter
            while (start := clock()) < deadline:
                async with session.get(url, headers=auth(token)) as resp:
                    await resp.read()
                    failures += resp.status != 200
                latencies.append(clock() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    ms = [s * 1000 for s in latencies]
    return {"tool": "aiohttp client (in the benchmark process)", "requests_per_s": round(len(ms) / elapsed),
            "p50_ms": round(percentile(ms, 50), 3), "p90_ms": round(percentile(ms, 90), 3),
            "p99_ms": round(percentile(ms, 99), 3), "non_2xx": failures}


def _print(label: str, figures: dict[str, Any]) -> None:
    print(f"  {label:29s} {figures['requests_per_s']:6d} req/s  p50 {figures['p50_ms']:7.2f} ms  "
          f"p99 {figures['p99_ms']:7.2f} ms  non-2xx {figures['non_2xx']}  "
          f"server CPU {figures.get('server_cpu_ms_per_request', 0):.3f} ms/request", flush=True)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each endpoint's run")
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--pin", action="store_true", help="also run with the server on CPU 0, wrk on CPU 1")
    args = parser.parse_args(argv)
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    env = {"TTBOOST_LIMITS_TRIGGERS_PER_MINUTE": "0", "TTBOOST_LIMITS_UPLOAD_PER_MINUTE": "0"}
    result: dict[str, Any] = {"benchmark": "http", "machine": machine(), "connections": args.connections,
                              "seconds": args.seconds, "endpoints": {}}
    async with Server(env) as server:
        [user_id] = insert_users(server.db_path, ["httpbench"])
        [token] = tokens([user_id])
        async with aiohttp.ClientSession() as session:
            result["data"] = await configure_streamer(session, server.url, token)
            for path in ENDPOINTS:  # warm-up: caches, first-use costs
                for _ in range(50):
                    async with session.get(server.url + path, headers=auth(token)) as resp:
                        assert resp.status == 200, (path, resp.status, await resp.text())
                        await resp.read()
        for path in ENDPOINTS:
            url = server.url + path
            cpu_before = cpu_seconds(server.pid)
            if use_wrk:
                figures = await asyncio.to_thread(run_wrk, url, token, args.connections, args.seconds)
            else:
                figures = await run_aiohttp(url, token, args.connections, args.seconds)
            # Server CPU per request: unlike req/s, it hardly moves when other processes load the machine.
            served = figures["requests_per_s"] * args.seconds
            figures["server_cpu_ms_per_request"] = round((cpu_seconds(server.pid) - cpu_before) * 1000 / served, 3)
            result["endpoints"][path] = figures
            _print(path, figures)
        if args.pin and use_wrk and (os.cpu_count() or 1) >= 2:
            for task in os.listdir(f"/proc/{server.pid}/task"):  # every thread: loop, aiosqlite, executor
                os.sched_setaffinity(int(task), {0})
            result["endpoints_server_on_one_cpu"] = {}
            for path in ENDPOINTS:
                figures = await asyncio.to_thread(run_wrk, server.url + path, token, args.connections, args.seconds,
                                                  1)
                result["endpoints_server_on_one_cpu"][path] = figures
                _print(path + " (pinned)", figures)
        result["rss_after_mb"] = round(server.rss_kb() / 1024, 1)
    write_result("http", result)
    return result


if __name__ == "__main__":
    asyncio.run(main())
