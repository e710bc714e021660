"""Cluster benchmark: 1, 2 and 3 `python run.py` workers on one PostgreSQL and one NATS server, next to the
single-process SQLite server, under the same load: many streamers through the real TikTokLive path.

Per configuration: S streamers (default 300), each its own account (active licence, chat speech off, no
triggers), its own room of the fake TikTok and its app socket. Streamer i's socket opens on worker i mod N: its
auto_connect starts the LIVE session there, under that worker's lease, so the frames never leave the worker
(`--spread`: the session still starts there, through a first socket, and the measured socket then opens on a
random worker and replaces it: the frames of the others' sessions cross NATS from their home). After the sessions settle, push frames
of one event each (bench/workload.py mix) go round-robin to the rooms up a ladder of aggregate rates, a few
seconds per step; a step is sustained when every event arrived, the sender kept the pace (≥ 97 %) and the
median latency of the step's last fifth stayed ≤ 20 ms (a backlog shows there first). The ladder stops at
the first step that is not. Latency: event → app frame, as bench_capacity measures it.

Then, with 3 workers, the handover (bench/cluster_handover.py): kill -9 of w1, then SIGTERM of w2.

The benchmark process itself (fake TikTok, S push sockets, S app sockets) runs on the same machine: its CPU
is printed per step, as is each worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
from contextlib import AsyncExitStack
from typing import Any, Final

import aiohttp

from bench import cluster_handover
from bench.bench_capacity import BENCH_SETTINGS, CONNECT_CONCURRENCY, SETTLE_SECONDS, Sessions, send_and_wait
from bench.bench_pipeline import _server_env, _wait_connected
from bench.cluster_setup import Deployment, Follow, Streamer, seq_in
from bench.common import cpu_seconds, machine, summary_ms, write_result
from bench.fake_push import BenchTikTok, FrameFactory
from bench.workload import event_spec, index_in

RATES: Final = (500, 1000, 1500, 2000, 2500, 3000, 4000, 5000)  # aggregate events/s, one step each
REFERENCE_RATE: Final = 1000  # every configuration's latency is also shown at this rate
LAG_LIMIT_MS: Final = 20.0  # median of a step's last fifth above this: a backlog, the step is not sustained
PACE: Final = 0.97
STEP_PAUSE: Final = 0.5
ROOM_WAIT: Final = 20.0  # ceiling for the fake to see a session's push socket


async def connect_all(http: aiohttp.ClientSession, fake: BenchTikTok, dep: Deployment, streamers: list[Streamer],
                      sessions: Sessions, spread: bool, extra: list[Follow]) -> None:
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    rng = random.Random(11)
    targets = [rng.randrange(len(dep.servers)) for _ in streamers]

    async def one(i: int, streamer: Streamer) -> None:
        async with limit:
            streamer.worker = i % len(dep.servers)
            home = await http.ws_connect(dep.ws_url(streamer.worker, streamer.token), max_msg_size=0)
            try:
                await _wait_connected(home)
            except TimeoutError:
                cluster_handover.keep_logs(dep, "connect")
                raise RuntimeError(f"{streamer.name}: no `connected` on w{streamer.worker + 1} within 20 s (socket "
                                   f"closed: {home.closed}, code {home.close_code}; the workers' logs are in "
                                   f"bench/results/cluster-connect-w*.log)") from None
            async with asyncio.timeout(ROOM_WAIT):
                while streamer.room not in fake.room_sockets:
                    await asyncio.sleep(0.01)
            ws, streamer.app_worker = home, streamer.worker
            if spread and targets[i] != streamer.worker:
                streamer.app_worker = targets[i]
                extra.append(Follow(home))  # read until the measured socket replaces it (4001)
                ws = await http.ws_connect(dep.ws_url(targets[i], streamer.token), max_msg_size=0)
            sessions.add(ws, lambda msg, s=streamer: _index_noting_seq(s, msg))
            streamer.ws, streamer.reader = ws, sessions.readers[-1]

    await asyncio.gather(*(one(i, s) for i, s in enumerate(streamers)))


def _index_noting_seq(streamer: Streamer, msg: aiohttp.WSMessage) -> int:
    """The event index of a frame (bench/workload.py), remembering the streamer's last seq on the way: an app
    that reconnects asks for what it missed with `since`."""
    streamer.last_seq = max(streamer.last_seq, seq_in(msg.data))
    return index_in(msg.data)


async def ladder(fake: BenchTikTok, dep: Deployment, streamers: list[Streamer], sessions: Sessions,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    factory = FrameFactory(0)
    start, steps = 1000, []
    for rate in args.rates:
        n = int(rate * args.step_seconds)
        sends = [(fake.room_sockets[streamers[k % len(streamers)].room], factory.frame(event_spec(start + k)))
                 for k in range(n)]
        pids, backends = dep.pids(), dep.backend_pids()
        cpu0, me0 = [cpu_seconds(pid) for pid in pids], cpu_seconds(os.getpid())
        backend0 = {name: _cpu_of(group) for name, group in backends.items()}
        sent, recv, elapsed = await send_and_wait(sessions, sends, rate, start)
        cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0)]
        latencies = [r - s for s, r in zip(sent, recv) if r]
        tail = [(r - s) * 1000 for s, r in zip(sent[-n // 5:], recv[-n // 5:]) if r]
        pace = n / elapsed / rate if elapsed else 1.0
        lag = statistics.median(tail) if tail else float("inf")
        step = {"rate": rate, "events": n, "received": len(latencies), "pace": round(pace, 3),
                "last_fifth_p50_ms": round(lag, 2), **summary_ms(latencies),
                "worker_cpu_percent": [round(100 * c / elapsed) for c in cpu],
                # All workers' CPU (heartbeats and acks included) over the step's events: the per-core cost.
                "worker_cpu_ms_per_event": round(sum(cpu) * 1000 / n, 3),
                "generator_cpu_percent": round(100 * (cpu_seconds(os.getpid()) - me0) / elapsed),
                **{f"{name}_cpu_percent": round(100 * (_cpu_of(group) - backend0[name]) / elapsed)
                   for name, group in backends.items()},
                "sustained": len(latencies) == n and pace >= PACE and lag <= LAG_LIMIT_MS}
        if len(latencies) < n:  # whose frames went missing: (home, app socket) workers of those streamers
            short = {streamers[k % len(streamers)].name: (streamers[k % len(streamers)].worker + 1,
                                                          streamers[k % len(streamers)].app_worker + 1)
                     for k in range(n) if not recv[k]}
            step["streamers_missing_frames"] = {"count": len(short), "home_app_workers": sorted(
                {f"w{h}->w{a}": sum(1 for v in short.values() if v == (h, a)) for h, a in short.values()}.items())}
        steps.append(step)
        print(f"    {rate:>5}/s: received {step['received']}/{n}, p50 {step['p50_ms']} p99 {step['p99_ms']} ms, "
              f"last fifth p50 {step['last_fifth_p50_ms']} ms, worker CPU {step['worker_cpu_percent']} %, "
              f"generator {step['generator_cpu_percent']} %"
              + "".join(f", {name} {step[f'{name}_cpu_percent']} %" for name in backends)
              + ("" if step["sustained"] else "  (not sustained)"),
              flush=True)
        start += n
        if not step["sustained"]:
            break
        await asyncio.sleep(STEP_PAUSE)
    return steps


def _cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:  # a PostgreSQL backend that ended since: its CPU is lost from the step, a small under-count
            pass
    return total


async def measure(fake: BenchTikTok, pg: Any, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    label = f"{workers} worker{'s' if workers > 1 else ''} (PostgreSQL + NATS)" if workers else "1 process (SQLite)"
    print(f"{label}: {args.streamers} streamers", flush=True)
    out: dict[str, Any] = {"label": label, "workers": workers, "loadavg_at_start": machine()["loadavg_at_start"]}
    env = {**_server_env(fake, "ws://127.0.0.1:9/edge/v1")}
    sessions, extra = Sessions(), []
    async with Deployment(env, workers=workers, pg=pg, lease_seconds=args.lease) as dep, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0)) as http:
        try:
            names = [f"c{workers}s{i:04d}" for i in range(args.streamers)]
            streamers = await dep.add_streamers(fake, names, BENCH_SETTINGS)
            began = asyncio.get_running_loop().time()
            await connect_all(http, fake, dep, streamers, sessions, args.spread, extra)
            out["connect_all_s"] = round(asyncio.get_running_loop().time() - began, 1)
            await asyncio.sleep(SETTLE_SECONDS)  # the servers' one collection and freeze after sessions start
            out["steps"] = await ladder(fake, dep, streamers, sessions, args)
            if workers == max(args.workers) and workers >= 2 and not args.spread and not args.no_handover:
                out["handover"] = await cluster_handover.run(http, fake, dep, streamers, extra)
        finally:
            await sessions.close()
            await asyncio.gather(*(f.close() for f in extra))
    sustained = [s for s in out["steps"] if s["sustained"]]
    out["max_sustained"] = sustained[-1]["rate"] if sustained else 0
    out["cpu_model"] = cpu_model(sustained, max(workers, 1))
    return out


def cpu_model(steps: list[dict[str, Any]], cores: int) -> dict[str, float] | None:
    """All workers' CPU (in cores) against the rate over the sustained steps, a least-squares line: its slope is
    the CPU per event, its intercept what the sessions cost with no events (heartbeats, acks, leases, figures).
    What the workers would carry with a core each and nothing else on it: (workers − idle) ÷ CPU per event."""
    points = [(s["rate"], sum(s["worker_cpu_percent"]) / 100) for s in steps]
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
             / sum((x - mean_x) ** 2 for x, _ in points))
    idle = mean_y - slope * mean_x
    return {"ms_per_event": round(slope * 1000, 3), "idle_cores": round(idle, 3),
            "projected_events_per_s": round((cores - idle) / slope, -2) if slope > 0 else float("inf")}


def _at(run: dict[str, Any], rate: int) -> dict[str, Any] | None:
    return next((s for s in run["steps"] if s["rate"] == rate and s["sustained"]), None)


def table(result: dict[str, Any]) -> str:
    lines = [f"{'configuration':<30} {'load avg':>8} {'max sustained':>13} {'p50 / p99 at 1,000/s':>20} "
             f"{'p50 / p99 at max':>17}  {'CPU/event · idle':>18}  {'one free core each':>18}  "
             "CPU % at max: workers · NATS · PostgreSQL · generator"]
    for run in result["runs"]:
        ref, top, model = _at(run, REFERENCE_RATE), _at(run, run["max_sustained"]), run.get("cpu_model")

        def lat(step: dict[str, Any] | None) -> str:
            return f"{step['p50_ms']:.2f} / {step['p99_ms']:.1f} ms" if step else "—"

        cpu = f"{model['ms_per_event']:.3f} ms · {model['idle_cores']:.2f}" if model else "—"
        projected = f"≈ {model['projected_events_per_s']:,.0f} ev/s" if model else "—"
        shares = (" · ".join(str(top.get(key, "—")) for key in ("worker_cpu_percent", "nats_cpu_percent",
                                                                "postgresql_cpu_percent", "generator_cpu_percent"))
                  if top else "—")
        lines.append(f"{run['label']:<30} {run['loadavg_at_start'][0]:>8} {run['max_sustained']:>8,} ev/s "
                     f"{lat(ref):>20} {lat(top):>17}  {cpu:>18}  {projected:>18}  {shares}")
    return "\n".join(lines)


NOTES: Final = """\
Read with care: this machine has {cpus} cores. Every worker, PostgreSQL, NATS and this benchmark (the fake
TikTok with {streamers} push sockets and the {streamers} app sockets) share them: with 2 and 3 workers the
workers compete for the same cores the generator needs, so the cluster rows show what the extra processes
cost here, not what they add. Each worker is one Python event loop, at most one core; on the event path it
does what the single process does (TikTokLive socket → pipeline → app socket on the same worker, seq numbers
reserved from PostgreSQL in blocks, figures written once a second) and publishes each frame to NATS (the
JetStream stream keeps every user's replay window for the other workers). On C free cores (or N machines) with
the generator and TikTok elsewhere, expect close to N × the 1-worker figure until NATS or PostgreSQL (their CPU
is shown per step) become the shared bottleneck. CPU/event and idle (in cores) come from a line through the workers' CPU at the
sustained steps: they depend on how busy the machine was far less than the ceiling does (more steps, a better
line; a run cut short at 1,000/s has only two points), and "one free core each" is what they give
for N workers with a core each and nothing else on it ((N − idle) ÷ CPU/event; an upper bound: latency grows
before a core is full). The load average is the machine's at the start of each configuration: with other work
running, a worker waits for a core before it saturates one, and the ceiling and the p99 show that wait. On a
busy machine more processes also win a larger share of the cores from the other work (the scheduler is fair
per thread), which can make 2 or 3 workers look faster than one here for no reason of their own.
"""


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "cluster", "machine": machine(), "streamers": args.streamers,
                              "step_seconds": args.step_seconds, "lease_seconds": args.lease,
                              "spread": args.spread, "runs": []}
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(BenchTikTok())
        pg = None
        if any(args.workers):
            from tests.pg_server import PgServer

            pg = await asyncio.to_thread(PgServer)
            stack.callback(pg.stop)
        for workers in ([0] if args.sqlite else []) + sorted(w for w in args.workers if w):
            result["runs"].append(await measure(fake, pg, args, workers))
    write_result("cluster", result)
    print()
    print(table(result))
    for run in result["runs"]:
        if "handover" in run:
            print(cluster_handover.describe(run["handover"]))
    print(NOTES.format(cpus=os.cpu_count(), streamers=args.streamers))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--streamers", type=int, default=300)
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3],
                        help="worker counts to measure, comma-separated (default 1,2,3)")
    parser.add_argument("--no-sqlite", dest="sqlite", action="store_false", help="skip the single-process figure")
    parser.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=list(RATES),
                        help="the ladder of aggregate events/s")
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--lease", type=float, default=10.0, help="[cluster] lease_seconds (the default: 10)")
    parser.add_argument("--spread", action="store_true",
                        help="measured app sockets on a random worker, not the session's (frames cross workers)")
    parser.add_argument("--no-handover", action="store_true", help="skip the kill -9 / SIGTERM handover")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
