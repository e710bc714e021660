"""Runs every benchmark in turn and writes bench/results/latest.json (plus one file per benchmark).

    python -m bench.run_all            # about eight minutes on 2 cores (the capacity run: ~4)
    python -m bench.run_all --quick    # shorter runs, for a smoke test

Each benchmark starts its own server process(es) on 127.0.0.1 and stops them; nothing leaves the machine.
The figures depend on the machine and on what else runs on it: the load average is recorded with each one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, Final

from bench import bench_capacity, bench_dispatch, bench_http, bench_memory, bench_pipeline, bench_startup
from bench.common import RESULTS_DIR, machine

# Targets of the issue: (figure, limit, "max" = must stay at or under it, "min" = must reach it).
TARGETS: Final = (
    ("p99 event→frame at 500 events/s, ms", 2.0, "max"),
    ("sustained events/s", 10_000, "min"),
    ("start-up, s", 1.0, "max"),
    ("idle RSS, MB", 60.0, "max"),
    ("RSS with a LIVE session and 1,000 clients, MB", 150.0, "max"),
)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the README's Performance section shows, each with its target and pass/fail."""
    pipe, startup, memory = results["pipeline"], results["startup"], results["memory"]
    rows: list[dict[str, Any]] = []

    def row(figure: str, path: str, value: float | None, limit: float | None = None, kind: str = "") -> None:
        entry: dict[str, Any] = {"figure": figure, "path": path, "value": value}
        if limit is not None and value is not None:
            entry.update(target=f"{'≤' if kind == 'max' else '≥'} {limit:g}",
                         passed=value <= limit if kind == "max" else value >= limit)
        rows.append(entry)

    p99, rate = TARGETS[0][0], TARGETS[1][0]
    for path, label in (("raw", "server pipeline (no TikTokLive)"), ("push", "fake TikTok push → TikTokLive → app"),
                        ("simulate", "POST /v2/events/simulate → app"), ("bare", "bare aiohttp relay (baseline)")):
        latency = pipe.get(f"{path}_latency")
        if latency:
            row("p50 event→frame at 500 events/s, ms", label, latency["latency"]["p50_ms"])
            row(p99, label, latency["latency"]["p99_ms"], 2.0, "max")
        if f"{path}_max_sustained" in pipe:
            row(rate, label, pipe[f"{path}_max_sustained"], 10_000, "min")
        if path == "push" and "push_batched_max_sustained" in pipe:
            row(rate, f"{label}, {pipe['push_batch']} messages per frame", pipe["push_batched_max_sustained"],
                10_000, "min")
    cached = startup["with_bytecode_cache"]
    row(TARGETS[2][0], "python run.py → first /health 200 (median of restarts)", cached["restart_median_s"], 1.0,
        "max")
    row("start-up without bytecode cache, s", "PYTHONDONTWRITEBYTECODE=1",
        startup["without_bytecode_cache"]["restart_median_s"], 1.0, "max")
    row(TARGETS[3][0], "after start-up", memory["idle_mb"], 60.0, "max")
    row("RSS with one LIVE session, MB", "TikTokLive loaded, 5,000 events through", memory["live_session_mb"])
    row(TARGETS[4][0], "1,001 sockets open", memory["live_session_and_clients_mb"], 150.0, "max")
    pinned = results["http"].get("endpoints_server_on_one_cpu", {})
    for path, figures in results["http"]["endpoints"].items():
        row("HTTP requests/s", path, figures["requests_per_s"])
        row("HTTP p50, ms", path, figures["p50_ms"])
        row("HTTP p99, ms", path, figures["p99_ms"])
        if path in pinned:
            row("HTTP requests/s, server pinned to one CPU", path, pinned[path]["requests_per_s"])
    row("pipeline CPU per event (in-process), µs", "dispatch: triggers + bus, no I/O",
        results["dispatch"]["us_per_event_best"])
    capacity = results.get("capacity")
    for run in capacity["runs"] if capacity else ():
        label = f"{capacity['sessions']} sessions × {capacity['rate_per_session']:g} event/s ({run['label']})"
        steady = run["steady"]
        row("server CPU per event, push → app frame, ms", label, steady["server_cpu_ms_per_event"], 0.35, "max")
        row("p99 event → app frame, ms", label, steady["latency"].get("p99_ms"), 20.0, "max")
        if "rss_per_session_mb" in run:
            row("RSS per LIVE session (with its app socket), MB", label, run["rss_per_session_mb"], 0.6, "max")
            row("first chat / first gift of the first session, ms", label,
                max(run["first_chat_ms"], run["first_gift_ms"]))
    return {"rows": rows, "all_targets_passed": all(r.get("passed", True) for r in rows)}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| figure | path | measured | target | |", "|---|---|---:|---:|---|"]
    for r in rows:
        target = r.get("target", "")
        verdict = ("pass" if r["passed"] else "**miss**") if "passed" in r else ""
        lines.append(f"| {r['figure']} | {r['path']} | {r['value']:g} | {target} | {verdict} |")
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test, noisier figures)")
    args = parser.parse_args(argv)
    quick = ["--seconds", "2", "--step-seconds", "1"] if args.quick else []
    began = time.perf_counter()
    results: dict[str, Any] = {"machine": machine()}
    print("== start-up", flush=True)
    results["startup"] = await bench_startup.main(["--runs", "3" if args.quick else "6"])
    print("== memory", flush=True)
    results["memory"] = await bench_memory.main(["--events", "2000"] if args.quick else [])
    print("== HTTP", flush=True)
    results["http"] = await bench_http.main(["--pin"] + (["--seconds", "2"] if args.quick else []))
    print("== pipeline (in-process)", flush=True)
    results["dispatch"] = await asyncio.to_thread(bench_dispatch.main, ["--rounds", "3"] if args.quick else [])
    print("== pipeline (processes)", flush=True)
    results["pipeline"] = await bench_pipeline.main(bench_pipeline.parse_args(quick))
    print("== capacity (processes)", flush=True)
    results["capacity"] = await bench_capacity.main(bench_capacity.parse_args(
        ["--sessions", "100", "--seconds", "5"] if args.quick else ["--bare"]))
    results["summary"] = summary(results)
    results["seconds"] = round(time.perf_counter() - began, 1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "latest.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    print("\n" + markdown(results["summary"]["rows"]))
    print(f"\nwritten to {RESULTS_DIR / 'latest.json'} in {results['seconds']} s")
    return results


if __name__ == "__main__":
    asyncio.run(main())
