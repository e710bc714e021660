"""Start-up benchmark: time from spawning `python run.py` to its first successful GET /health, and idle RSS.

Each run is a new process on the same data directory (the first run also creates the database and secrets and
is reported on its own); the figure is the median of the restarts. Measured twice: with Python's bytecode cache
(a normal install: the first run writes it, into a temp PYTHONPYCACHEPREFIX) and without one
(PYTHONDONTWRITEBYTECODE=1, as some containers run: every start compiles the project's modules). Also reports
whether TikTokLive is loaded by start-up (it must not be: it is imported when a LIVE session starts) and, from
`python -X importtime`, the slowest imports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from bench.common import REPO, Server, machine, maps_library, write_result

IDLE_SETTLE: Final = 1.0  # seconds after /health before idle RSS is read


async def _series(runs: int, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ttboost-startup-") as tmp:
        times: list[float] = []
        rss: list[int] = []
        loaded: list[bool] = []
        for _ in range(runs):
            server = Server(env, data_dir=Path(tmp))
            try:
                times.append(await server.start())
                await asyncio.sleep(IDLE_SETTLE)
                rss.append(server.rss_kb())
                # TikTokLive's models are pydantic: its compiled core is mapped once the library is imported.
                loaded.append(maps_library(server.pid, "pydantic_core"))
            finally:
                await asyncio.to_thread(server.stop)
    restarts = times[1:] or times
    return {"first_start_s": round(times[0], 3), "restart_median_s": round(statistics.median(restarts), 3),
            "restart_min_s": round(min(restarts), 3), "restart_max_s": round(max(restarts), 3),
            "runs": [round(t, 3) for t in times], "idle_rss_mb_median": round(statistics.median(rss) / 1024, 1),
            "tiktoklive_loaded_when_idle": any(loaded)}


def _import_report(limit: int = 12) -> dict[str, Any]:
    """Whether start-up imports TikTokLive, and the slowest imports of the server's modules (cumulative µs)."""
    code = "import sys, ttboost.cli, ttboost.server, ttboost.app; print('TikTokLive' in sys.modules)"
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True,
                         text=True, env={**_base_env(), **env}, check=True)
    tiktok = out.stdout.strip()
    rows = []
    for line in out.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((int(match[2]), len(match[3]) // 2, match[4]))
    total = max((r[0] for r in rows), default=0)
    top = sorted((r for r in rows if r[1] <= 2), reverse=True)[:limit]
    return {"tiktoklive_imported_by_the_server_modules": tiktok == "True",
            "import_total_ms": round(sum(r[0] for r in rows if r[1] == 0) / 1000, 1),
            "slowest_imports_ms": {name: round(us / 1000, 1) for us, _, name in top}, "largest_single_ms":
            round(total / 1000, 1)}


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=6, help="starts per series (the first one is set apart)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ttboost-pycache-") as cache:
        # The server inherits os.environ, then these: unset the sandbox's no-bytecode switch for the cached series.
        cached = await _series(args.runs, {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": cache})
    uncached = await _series(args.runs, {"PYTHONDONTWRITEBYTECODE": "1"})
    result = {"benchmark": "startup", "machine": machine(), "with_bytecode_cache": cached,
              "without_bytecode_cache": uncached, "imports": _import_report()}
    write_result("startup", result)
    return result


if __name__ == "__main__":
    asyncio.run(main())
