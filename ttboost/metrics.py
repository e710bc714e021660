"""Prometheus series (spec §10) in one registry per application, so several apps in one process never collide."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as Tally
from itertools import accumulate
from typing import Callable, Final, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import INF, floatToGoString

from .logsetup import CLIENT_CLOSED
from .pipeline.bus import FrameTiming

# Seconds. Our own part of an event's way (read → written) is ~0.1–2 ms; TikTok's part adds network time and
# can reach seconds when TikTok or the connection lags.
LATENCY_BUCKETS: Final = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                          10.0, 30.0)
SPEECH_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # one phrase, engine to cache
HTTP_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SOCKET_KINDS: Final = ("app", "overlay")


class Metrics:
    """The application's series; the values that already live elsewhere (sessions, sockets, queues) are read at
    scrape time by a collector instead of being copied into gauges on every change."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._event_latency = _TypeHistogram(
            "ttboost_event_latency_seconds", "TikTok's create time of an event to its frame written to the app")
        self._pipeline_latency = _TypeHistogram(
            "ttboost_pipeline_latency_seconds", "Event read by the server to its frame written to the app")
        reg.register(self._event_latency)
        reg.register(self._pipeline_latency)
        self._speech = Histogram("ttboost_speech_synthesis_seconds", "One phrase synthesized and cached",
                                 ["engine"], buckets=SPEECH_BUCKETS, registry=reg)
        self._http = Histogram("ttboost_http_request_duration_seconds", "HTTP requests (WebSocket upgrades left out)",
                               ["method", "route", "status"], buckets=HTTP_BUCKETS, registry=reg)
        self._slow = Counter("ttboost_slow_client_closes", "Sockets closed as too slow (1008)", ["kind"],
                             registry=reg)
        for kind in SOCKET_KINDS:  # present from the start: a rate() over a series that appears later misses it
            self._slow.labels(kind)

    def watch(self, read_state: Callable[[], Iterable[Metric]]) -> None:
        """Adds the series read from the running application at each scrape."""
        self.registry.register(_StateCollector(read_state))

    def frame_written(self, timing: FrameTiming, sent: float) -> None:
        """An event frame is being written to the app socket at `sent` (Unix seconds)."""
        sent_ms = sent * 1000
        self._pipeline_latency.observe(timing.type, max(0.0, sent_ms - timing.received_ms) / 1000)
        if timing.tiktok_ms:  # clocks of TikTok and this server differ a little: never below zero
            self._event_latency.observe(timing.type, max(0.0, sent_ms - timing.tiktok_ms) / 1000)

    def speech_done(self, engine: str, seconds: float) -> None:
        self._speech.labels(engine).observe(seconds)

    def slow_close(self, kind: str) -> None:
        self._slow.labels(kind).inc()

    def request_done(self, request: web.Request, status: int, seconds: float) -> None:
        # A WebSocket's "duration" is its whole life, not a request time; only refusals before the upgrade count.
        if status == 101 or (status == CLIENT_CLOSED and request.headers.get("Upgrade", "").lower() == "websocket"):
            return
        resource = request.match_info.route.resource
        # The route's pattern, never the raw path: unknown paths must not grow one series each.
        route = resource.canonical if resource is not None else "unmatched"
        self._http.labels(request.method, route, f"{status // 100}xx").observe(seconds)


class _TypeHistogram:
    """A latency histogram by event type, observed for every frame written to an app: plain counts per bucket,
    summed up only at scrape time. prometheus_client's Histogram costs a `.labels()` lookup, a lock per bucket
    and sum, and a linear bucket search per observation; at 500 sessions that was ~7 % of the server's time.
    The exposition is the same (buckets, count, sum, created). Observed and scraped on the event loop only."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._doc = name, documentation
        self._bounds = (*LATENCY_BUCKETS, INF)
        self._les = [floatToGoString(b) for b in self._bounds]
        self._by_type: dict[str, tuple[list[int], list[float], float]] = {}  # type → (counts, [sum], created)

    def observe(self, type_: str, seconds: float) -> None:
        entry = self._by_type.get(type_)
        if entry is None:
            entry = self._by_type[type_] = ([0] * len(self._bounds), [0.0], time.time())
        entry[0][bisect_left(self._bounds, seconds)] += 1  # the first bucket with seconds <= le
        entry[1][0] += seconds

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._doc, labels=["type"])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=["type"])
        for type_, (counts, total, created) in self._by_type.items():
            family.add_metric([type_], list(zip(self._les, accumulate(counts))), total[0])
            family.add_sample(self._name + "_created", {"type": type_}, created)
        yield family


class _StateCollector:
    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only (the application may not be started when this is registered)

    def collect(self) -> Iterator[Metric]:
        yield from self._read()


def app_state(app: web.Application) -> Iterator[Metric]:
    """The gauges and counters kept by the running application's parts (their own figures, read as they are)."""
    from . import keys  # keys names metrics.Metrics: imported late to keep the import graph one way

    live = app.get(keys.LIVE)
    sessions = GaugeMetricFamily("ttboost_live_sessions", "LIVE watches by state", labels=["state"])
    for state, count in sorted(Tally(live.states()).items() if live is not None else ()):
        sessions.add_metric([state], count)
    yield sessions
    sockets = GaugeMetricFamily("ttboost_open_sockets", "Open WebSockets by kind", labels=["kind"])
    sockets.add_metric(["app"], len(app[keys.SOCKETS]))
    sockets.add_metric(["overlay"], app[keys.SOCKETS].overlay_count())
    yield sockets
    speech = app.get(keys.SPEECH)
    if speech is not None:
        yield GaugeMetricFamily("ttboost_speech_queue_depth", "Phrases waiting for a synthesis worker",
                                value=speech.pending)
    bus = app.get(keys.BUS)
    if bus is not None:
        yield GaugeMetricFamily("ttboost_event_log_pending_rows", "Event-log rows waiting for the next batch write",
                                value=bus.log.waiting)
        yield CounterMetricFamily("ttboost_event_log_write_errors", "Failed event-log batch writes and dropped rows",
                                  value=bus.log.write_errors)
