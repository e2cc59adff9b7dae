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

/metrics needs no credential unless `MetricsAuth` says so (``--metrics-token-file``).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Collection

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

    def started(self) -> None:
        self.workers.set(1)

    # --- the dispatchers' and the router's observer ------------------------------------
    def batch(self, kind: Kind, size: int) -> None:
        self.batch_records.labels(kind.value).observe(size)

    def connected(self, kind: Kind, up: bool) -> None:
        self.up.labels(kind.value).set(1 if up else 0)

    def dispatched(self, kind: Kind, ok: bool, seconds: float) -> None:
        self.dispatch_total.labels(kind.value, "ok" if ok else "failed").inc()
        self.dispatch_seconds.labels(kind.value).observe(seconds)

    def record(self, domain: str, outcome: Outcome) -> None:
        if domain not in self._domains:
            if len(self._domains) >= MAX_DOMAINS:
                domain = OTHER
            else:
                self._domains.add(domain)
        self.records.labels(domain, outcome.value).inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def render(self) -> bytes:
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        return generate_latest(registry)


class MetricsAuth:
    """Who may read /metrics: anyone, or the holder of the token in a file.

    This is where a scraper's credential is checked; the collector's own read
    credentials can take its place without touching the middleware.
    """

    def __init__(self, token: str | None = None):
        self._token = token.encode() if token else None

    @classmethod
    def from_file(cls, path: str | None) -> MetricsAuth:
        if path is None:
            return cls()
        from telemetry.errors import TelemetryError

        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise TelemetryError(f"cannot read --metrics-token-file {path}: {getattr(e, 'strerror', e)}") from None
        if len(token) < 16 or not token.isprintable() or " " in token:
            raise TelemetryError(f"--metrics-token-file {path}: the token must be at least 16 printable "
                                 "characters without spaces")
        return cls(token)

    @property
    def required(self) -> bool:
        return self._token is not None

    def allows(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self._token is None:
            return True
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, credential = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self._token)
        return False


class MetricsMiddleware:
    """Counts every request by route and status, times ingests, and serves /metrics."""

    def __init__(self, app: Callable, metrics: Metrics, *, routes: Collection[str], ingest: Collection[str],
                 auth: MetricsAuth | None = None):
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes) | {METRICS_PATH}
        self.ingest = frozenset(ingest)
        self.auth = auth or MetricsAuth()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in self.routes else OTHER
        status = [0]

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if path == METRICS_PATH:
                await self._serve(scope, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(route, str(status[0] or "none")).inc()
            if path in self.ingest and scope["method"] == "POST":
                self.metrics.request_seconds.observe(loop.time() - started)

    async def _serve(self, scope: dict, send: Callable) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, b'{"message":"Method not allowed here"}', b"application/json",
                          [(b"allow", b"GET, HEAD")])
            return
        if not self.auth.allows(scope["headers"]):
            await _answer(send, 401, b'{"message":"/metrics needs a bearer token"}', b"application/json",
                          [(b"www-authenticate", b'Bearer realm="metrics"')])
            return
        body = await asyncio.to_thread(self.metrics.render)
        await _answer(send, 200, b"" if scope["method"] == "HEAD" else body, CONTENT_TYPE_LATEST.encode())


async def _answer(send: Callable, status: int, body: bytes, content_type: bytes,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
