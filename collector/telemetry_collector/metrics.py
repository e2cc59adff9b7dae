"""Prometheus metrics for the collector, summed over its worker processes, and GET /metrics.

prometheus-client runs in multiprocess mode: each worker writes its values to memory-mapped
files in one directory (``PROMETHEUS_MULTIPROC_DIR``, which `metrics_dir.prepare_directory`
sets before prometheus-client is imported, hence the late imports in main) and whichever worker answers
/metrics adds them all up.  Counters of a worker that died stay in the sum, so they never
go backwards; gauges of dead workers are dropped.

Label values are bounded: routes are the collector's own paths (others count as
``other``), reasons are `Rule` values, dispatchers `Kind` values, and classification
domains, which senders choose, are the first `MAX_DOMAINS` seen by a worker, then
``other``.

/metrics needs no credential unless ``--metrics-auth`` asks for a read credential.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as mp
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .dispatch.config import Kind
from .dispatch.router import Outcome

PREFIX = "telemetry_collector"
METRICS_PATH = "/metrics"
MAX_DOMAINS = 100
OTHER = "other"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Everything the collector counts; one per worker process."""

    def __init__(self, registry: CollectorRegistry | None = None):
        # Not registered anywhere by default: /metrics reads the multiprocess files.
        r = registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.records = Counter(f"{PREFIX}_records", "Valid records by classification domain and outcome",
                               ["domain", "outcome"], registry=r)
        self.rejected = Counter(f"{PREFIX}_rejected", "Records refused by reason", ["reason"], registry=r)
        self.refused = Counter(f"{PREFIX}_refused", "Connections and requests refused before they were "
                               "records (limits, credentials), by reason", ["reason"], registry=r)
        self.dispatch_total = Counter(f"{PREFIX}_dispatched", "Records handed to a dispatcher, by outcome",
                                  ["dispatcher", "outcome"], registry=r)
        self.dispatch_seconds = Histogram(f"{PREFIX}_dispatch_seconds",
                                          "Time from hand-off to a dispatcher's confirmation or failure",
                                          ["dispatcher"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_records = Histogram(f"{PREFIX}_batch_records",
                                       "Records per batch (one transaction, one flush)",
                                       ["dispatcher"], buckets=BATCH_BUCKETS, registry=r)
        self.request_seconds = Histogram(f"{PREFIX}_request_seconds", "Time to answer an ingest request",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.up = Gauge(f"{PREFIX}_dispatcher_up", "1 when every worker's dispatcher is connected",
                        ["dispatcher"], multiprocess_mode="livemin", registry=r)
        self.workers = Gauge(f"{PREFIX}_workers", "Worker processes serving", multiprocess_mode="livesum",
                             registry=r)
        self._domains: set[str] = set()
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: the hot path skips prometheus-client's lock."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def started(self) -> None:
        self.workers.set(1)

    # --- the dispatchers' and the router's observer ------------------------------------
    def batch(self, kind: Kind, size: int) -> None:
        self._child(self.batch_records, kind.value).observe(size)

    def connected(self, kind: Kind, up: bool) -> None:
        self.up.labels(kind.value).set(1 if up else 0)

    def dispatched(self, kind: Kind, ok: bool, seconds: float) -> None:
        self._child(self.dispatch_total, kind.value, "ok" if ok else "failed").inc()
        self._child(self.dispatch_seconds, kind.value).observe(seconds)

    def record(self, domain: str, outcome: Outcome) -> None:
        if domain not in self._domains:
            if len(self._domains) >= MAX_DOMAINS:
                domain = OTHER
            else:
                self._domains.add(domain)
        self._child(self.records, domain, outcome.value).inc()

    def reject(self, reason: str) -> None:
        self._child(self.rejected, reason).inc()

    def refuse(self, reason: str) -> None:
        self._child(self.refused, reason).inc()

    def request(self, route: str, status: int) -> None:
        self._child(self.requests, route, str(status or "none")).inc()

    def render(self) -> bytes:
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        return generate_latest(registry)


def metrics_route(metrics: Metrics, *, credential: bool):
    """GET /metrics as a route of the application: open, or behind a read credential
    (the same bearer tokens and certificate readers as /api/*)."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def render(request: Request) -> Response:
        body = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    endpoint: Callable[[Request], Awaitable[Response]] = render
    if credential:
        from .auth import requires
        from .credentials import Scope

        endpoint = requires(Scope.READ)(render)
    return Route(METRICS_PATH, endpoint, methods=["GET"])


class MetricsMiddleware:
    """Counts every request by route and status and times ingests, around the application."""

    def __init__(self, app: Callable, metrics: Metrics, *, routes: Collection[str], ingest: Collection[str]):
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes) | {METRICS_PATH}
        self.ingest = frozenset(ingest)
        self._prefixes = tuple((r.split("{", 1)[0], r) for r in self.routes if "{" in r)

    def _route(self, path: str) -> str:
        if path in self.routes:
            return path
        for prefix, route in self._prefixes:
            if path.startswith(prefix) and "/" not in path[len(prefix):]:
                return route
        return OTHER

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = [0]

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.request(self._route(path), status[0])
            if path in self.ingest and scope["method"] == "POST":
                self.metrics.request_seconds.observe(loop.time() - started)
