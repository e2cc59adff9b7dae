"""The ASGI application (Starlette): routes, credentials, limits, and the hand-off to the writer.

Routes (contract §1): ``POST /`` and ``POST /v2/collector`` ingest; ``GET`` on them answers
302 to ``/telemetryui``, the index of the web views (`views`), as the reference does.
Reads, each behind a read credential (`auth.requires`): ``GET /api/records`` (streamed,
paged with ``before_id``), ``GET /api/records/<id>``, ``GET /api/stats``; with the admin
scope, ``GET /api/tokens`` and ``DELETE /api/tokens/<name>``.  Other methods on these
paths get 405, other paths 404, always with a JSON ``message``.

Ingestion stays open to anonymous senders, within limits: a record costs a token of its
client address's bucket before its body is read and one of its machine id's bucket once
it is valid (429 with Retry-After beyond either); with a verified client certificate, the
record's Machine-Id must be the certificate's Common Name (403 otherwise).

Every refusal is counted (rejected records by rule in ``rejected.<rule>``, refused
connections and requests in ``refused.<reason>``) and logged with the peer, at most a burst
of lines at a time; the application never lets an exception reach the server for a bad
request.  A valid record goes to the dispatch router (dispatch/router.py), whose reliable
dispatcher decides the answer: 201, 200 for a repeat, or 503 with Retry-After when it could
not confirm the record (a database failure included), so the client keeps it and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from telemetry.daemons.runtime.throttle import LogThrottle

from . import identity, reading, views
from .auth import Authenticator, Denied, requires
from .credentials import Scope
from .dburl import DatabaseURL
from .derive.hook import DERIVE_ERRORS, PARSER_ERRORS_PREFIX, IngestHook
from .dispatch import build_dispatchers
from .dispatch.config import DispatchConfig, Kind
from .dispatch.router import Outcome, Router
from .limits import Limits, RateLimiter, retry_after
from .model import to_json
from .purge import PurgePolicy
from .query import QueryRejected, parse_query, parse_query_string
from .request import submission_from_request
from .rules import Rejected, Rule, validate
from .store import Durability, Store, StoreError, open_store
from .writer import REJECTED_PREFIX, Stats, Writer

log = logging.getLogger("telemetry-collector")
T = TypeVar("T")

DEFAULT_MAX_BODY = Limits().max_body
PURGE_INTERVAL = 24 * 60 * 60.0
INGEST_PATHS = ("/", "/v2/collector")
UI_PATH = "/telemetryui"
RECORDS_PATH = "/api/records"
STATS_PATH = "/api/stats"
TOKENS_PATH = "/api/tokens"
# Label values of the request metrics; other paths count as "other".
ROUTE_PATHS = (*INGEST_PATHS, UI_PATH, UI_PATH + "/{view}", RECORDS_PATH, RECORDS_PATH + "/{record_id}", STATS_PATH,
               TOKENS_PATH)
REFUSED_PREFIX = "refused."
JSON = "application/json"


class Refused(enum.Enum):
    """Records refused for what they cost rather than what they say (counted as rejected)."""

    RATE_LIMITED = "rate_limited"
    MACHINE_IDENTITY = "machine_identity"


@dataclass(frozen=True)
class Settings:
    tids: frozenset[str]
    limits: Limits = field(default_factory=Limits)
    purge: PurgePolicy | None = None
    purge_interval: float = PURGE_INTERVAL
    durability: Durability = Durability.FULL
    reads: bool = True  # False: an ingest-only node, every read route answers 404
    payload_parsers: bool = True  # False: no crash groups or parser facts (the counters are kept)
    machine_identity: bool = True  # with a client certificate, Machine-Id must be its CN

    @property
    def max_body(self) -> int:
        return self.limits.max_body


def _message(text: str) -> bytes:
    return to_json({"message": text})


def _json(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(_message(text), status_code=status, media_type=JSON, headers=headers)


class _Unobserved:
    """What the app reports to when nobody measures it (metrics.Metrics otherwise)."""

    def reject(self, reason: str) -> None:
        pass

    def refuse(self, reason: str) -> None:
        pass

    def record(self, domain: str, outcome: Outcome) -> None:
        pass

    def dispatched(self, kind: Kind, ok: bool, seconds: float) -> None:
        pass

    def batch(self, kind: Kind, size: int) -> None:
        pass

    def connected(self, kind: Kind, up: bool) -> None:
        pass


class ReadConnection:
    """A database connection for reads, used from worker threads one at a time."""

    def __init__(self, url: DatabaseURL, store: Store | None):
        self.url = url
        self._store = store
        self._lock = threading.Lock()

    def run(self, fn: Callable[[Store], T]) -> T:
        with self._lock:
            if self._store is not None:
                try:
                    return fn(self._store)
                except StoreError:
                    # Most likely a connection the database dropped (a restart, an idle
                    # timeout): a read is safe to try once more on a new one.
                    self._drop()
            self._store = open_store(self.url, migrate=False)
            try:
                return fn(self._store)
            except StoreError:
                self._drop()
                raise

    async def __call__(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.to_thread(self.run, fn)

    def _drop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def close(self) -> None:
        with self._lock:
            self._drop()


class CollectorApp:
    """The collector as one ASGI application; `starlette` is the Starlette app it serves,
    to which other modules add routes with `add_routes` before it serves."""

    def __init__(self, url: DatabaseURL, settings: Settings, *, writer_store: Store | None = None,
                 reader_store: Store | None = None, dispatch: DispatchConfig | None = None,
                 observer: Any = None, worker: int = 0):
        self.settings = settings
        # metrics.Metrics, or nothing; typed loosely so this module never imports prometheus-client.
        self.observer: Any = observer or _Unobserved()
        self.writer = Writer(url, writer_store, settings.durability,
                             on_batch=lambda n: self.observer.batch(Kind.STORE, n), shard=worker,
                             hook=IngestHook.installed(parse=settings.payload_parsers, shard=worker))
        config = dispatch or DispatchConfig()
        self.router = Router(config, build_dispatchers(config, self.writer, self.observer), self.observer)
        self.reader = ReadConnection(url, reader_store)
        self.credentials = ReadConnection(url, None)  # so a long read never delays a credential check
        limits = settings.limits
        self.machine_buckets = RateLimiter(limits.machine_rate, limits.machine_burst)
        self.address_buckets = RateLimiter(limits.address_rate, limits.address_burst)
        self._record_log = LogThrottle(logger=log)
        self._refusal_log = LogThrottle(logger=log)
        self._purge_task: asyncio.Task | None = None
        self.starlette = Starlette(routes=self._routes(), lifespan=self._lifespan,
                                   exception_handlers={HTTPException: _http_error})
        self.starlette.router.redirect_slashes = False
        self.starlette.state.collector = self
        self.starlette.state.authenticator = Authenticator(self.credentials, reads=settings.reads,
                                                           refused=self._auth_refused)
        views.install(self)

    def _routes(self) -> list[BaseRoute]:
        return [
            *(Route(p, ingest_or_redirect, methods=["POST", "GET"]) for p in INGEST_PATHS),
            Route(RECORDS_PATH, records, methods=["GET"]),
            Route(RECORDS_PATH + "/{record_id}", one_record, methods=["GET"]),
            Route(STATS_PATH, stats, methods=["GET"]),
            Route(TOKENS_PATH, list_tokens, methods=["GET"]),
            Route(TOKENS_PATH + "/{name}", revoke_token, methods=["DELETE"]),
        ]

    def add_routes(self, routes: Sequence[BaseRoute]) -> None:
        self.starlette.router.routes.extend(routes)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.starlette(scope, receive, send)

    # --- lifespan ---------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.startup()
        try:
            await self.router.start()
        except BaseException:
            await self.shutdown(dispatchers=False)
            raise
        await self.first_run_hint()
        try:
            yield
        finally:
            await self.shutdown()

    def startup(self) -> None:
        self.writer.start()
        policy = self.settings.purge
        if policy is not None and policy.active:
            self._purge_task = asyncio.get_running_loop().create_task(self._purge_loop(policy))

    async def shutdown(self, *, dispatchers: bool = True) -> None:
        if dispatchers:
            await self.router.stop()
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        await asyncio.to_thread(self.writer.stop)
        self.reader.close()
        self.credentials.close()

    async def _purge_loop(self, policy: PurgePolicy) -> None:
        while True:
            try:
                deleted = await self.writer.purge(policy)
                log.info("retention purge: deleted %d records", deleted)
            except Exception as e:  # noqa: BLE001 - logged; the next run tries again
                log.error("retention purge failed: %s", e)
            await asyncio.sleep(self.settings.purge_interval)

    # --- counting and logging refusals ------------------------------------------------
    def reject(self, client: str, rule: Rule | Refused, message: str) -> None:
        self.writer.count(REJECTED_PREFIX + rule.value)
        self.observer.reject(rule.value)
        self._record_log.log(time.monotonic(), logging.WARNING, "rejected a record from %s: %s", client, message)

    def refuse(self, reason: enum.Enum | Denied, client: str, detail: str) -> None:
        """A connection or request refused before it was a record (the protocol's, auth's and
        the views' forms'); the reason's value names the counter."""
        name = reason.refusal.value if isinstance(reason, Denied) else reason.value
        self.writer.count(REFUSED_PREFIX + name)
        self.observer.refuse(name)
        self._refusal_log.log(time.monotonic(), logging.WARNING, "refused %s from %s: %s", name, client, detail)

    def _auth_refused(self, request: Request, denied: Denied) -> None:
        self.refuse(denied, _client(request), f"{request.method} {request.url.path[:100]}: {denied.message}")

    async def stats_document(self) -> dict[str, Any]:
        counters = await self.writer.counters()
        # The count scans the table: on the reader's connection, not the writer's thread.
        count = await self.reader(lambda store: store.count_records())
        return stats_document(count, counters)

    async def first_run_hint(self) -> None:
        """Tell the operator how to let the first reader in."""
        if not self.settings.reads:
            log.info("reads are turned off: this collector only ingests")
            return
        try:
            known = await self.credentials(lambda store: store.credentials())
        except StoreError as e:
            log.warning("cannot list read credentials: %s", e)
            return
        if not known:
            log.warning("no read credential exists yet, so every read is refused (401); "
                        "create one with: telemetry-collector token add NAME --scope read --database %s",
                        self.reader.url.redacted())


def stats_document(records: int, counters: dict[str, int]) -> dict[str, Any]:
    """What /api/stats and `telemetry-collector stats` show: the writer's counts of records,
    the refusals of connections and requests (``refused``), and the records whose payload a
    parser could not read (``parser_errors`` by parser) or whose view counters could not be
    written (``derive_errors``)."""
    document = Stats(records=records, counters=counters).document()
    document["refused"] = {k[len(REFUSED_PREFIX):]: v for k, v in sorted(counters.items())
                           if k.startswith(REFUSED_PREFIX)}
    # What the views could not learn of stored records (derive/hook.py).
    document["parser_errors"] = {k[len(PARSER_ERRORS_PREFIX):]: v for k, v in sorted(counters.items())
                                 if k.startswith(PARSER_ERRORS_PREFIX)}
    document["derive_errors"] = counters.get(DERIVE_ERRORS, 0)
    return document


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _collector(request: Request) -> CollectorApp:
    return request.app.state.collector


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _json(404, f"Not found: {request.url.path[:100]}")
    if exc.status_code == 405:
        return _json(405, f"Method {request.method[:20]} is not allowed here", dict(exc.headers or {}))
    return _json(exc.status_code, exc.detail or "Error", dict(exc.headers or {}))


# --- ingestion -------------------------------------------------------------------------------

async def ingest_or_redirect(request: Request) -> Response:
    if request.method == "POST":
        return await ingest(request)
    return RedirectResponse(UI_PATH, status_code=302)


async def ingest(request: Request) -> Response:
    app = _collector(request)
    client = _client(request)
    wait = app.address_buckets.take(client, time.monotonic())
    if wait:
        return _rate_limited(app, client, f"address {client}", wait)
    limit = app.settings.max_body
    declared = _content_length(request)
    try:
        body = None if declared is not None and declared > limit else await _read_body(request, limit)
    except ClientDisconnect:
        # Gone, or dropped by the server for sending too slowly (it answered 408): nothing is
        # stored and nobody reads an answer.
        return Response(status_code=400)
    if body is None:
        size = f"{declared} bytes" if declared is not None and declared > limit else "larger"
        message = f"Request body is {size}; this collector accepts at most {limit} bytes"
        app.reject(client, Rule.TOO_LARGE, message)
        # The connection stays open: the server reads the rest of the body and drops it (within
        # --body-timeout), so the client, still sending, is not reset before it reads the 413.
        return _json(413, message)
    sub = submission_from_request(request.scope["headers"], body)
    try:
        record = validate(sub, app.settings.tids, int(time.time()))
    except Rejected as r:
        app.reject(client, r.rule, r.message)
        return _json(r.status, r.message)
    certificate = identity.of_scope(request.scope)
    if certificate is not None and app.settings.machine_identity and certificate.common_name != record.machine_id:
        message = (f"Machine-Id {record.machine_id[:40]!r} is not the identity of the client certificate "
                   f"({certificate.subject[:200]})")
        app.reject(client, Refused.MACHINE_IDENTITY, message)
        return _json(403, message)
    wait = app.machine_buckets.take(record.machine_id, time.monotonic())
    if wait:
        return _rate_limited(app, client, f"machine id {record.machine_id[:40]!r}", wait)
    answer = await app.router.submit(record)
    if answer.outcome is Outcome.DUPLICATE:
        log.info("repeat of record %s answered as already accepted", record.record_id)
    headers = None if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
    return Response(answer.body, status_code=answer.status, media_type=JSON, headers=headers)


def _rate_limited(app: CollectorApp, client: str, who: str, wait: float) -> Response:
    seconds = retry_after(wait)
    message = f"Too many records from {who}; retry after {seconds} s"
    app.reject(client, Refused.RATE_LIMITED, message)
    return _json(429, message, {"retry-after": str(seconds)})


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The whole body, or None once it exceeds the limit; `ClientDisconnect` if the client
    goes before it is complete."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# --- reads ------------------------------------------------------------------------------------

class _StreamAborted(Exception):
    pass


class RecordStream(StreamingResponse):
    """A streamed answer that a failure cuts short: without its last chunk, the server closes
    the connection and the client sees an incomplete answer, never a truncated 'complete' one."""

    async def stream_response(self, send: Callable) -> None:
        with contextlib.suppress(_StreamAborted):
            await super().stream_response(send)


@requires(Scope.READ)
async def records(request: Request) -> Response:
    app = _collector(request)
    try:
        q = parse_query(parse_query_string(request.scope.get("query_string", b"")))
    except QueryRejected as e:
        log.warning("bad records query from %s: %s", _client(request), e.message)
        return _json(400, e.message)
    now = int(time.time())
    try:
        index = await app.reader(lambda store: store.query_sizes(q, now))
    except StoreError as e:
        log.error("records query failed: %s", e)
        return _json(500, "The records could not be read (database error)")
    cursor = reading.next_cursor(index, q.limit)
    headers = {}
    if cursor is not None:
        params = dict(parse_query_string(request.scope.get("query_string", b"")), before_id=str(cursor))
        headers["link"] = f'<{RECORDS_PATH}?{urllib.parse.urlencode(params)}>; rel="next"'
    if request.method == "HEAD":
        return Response(b"", media_type=JSON, headers=headers)
    return RecordStream(_stream(app, reading.plan_groups(index), cursor), media_type=JSON, headers=headers)


async def _stream(app: CollectorApp, groups: list[list[int]], cursor: int | None) -> AsyncIterator[bytes]:
    yield reading.opening(cursor)
    first = True
    for group in groups:

        def render(store: Store, ids: list[int] = group, first: bool = first) -> list[bytes]:
            return list(reading.render_group(store.records_by_id(ids), first))

        try:
            chunks = await app.reader(render)
        except StoreError as e:
            log.error("records query failed while answering: %s", e)
            raise _StreamAborted from None
        for chunk in chunks:
            yield chunk
        first = first and not chunks
        del chunks
    yield reading.CLOSING


@requires(Scope.READ)
async def one_record(request: Request) -> Response:
    app = _collector(request)
    text = request.path_params["record_id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return _json(400, "Provided record id value is invalid")
    record_id = int(text)
    try:
        found = await app.reader(lambda store: store.records_by_id([record_id]))
    except StoreError as e:
        log.error("record read failed: %s", e)
        return _json(500, "The record could not be read (database error)")
    if not found:
        return _json(404, f"No record {record_id}")
    return Response(to_json(found[0].as_json_dict()), media_type=JSON)


@requires(Scope.READ)
async def stats(request: Request) -> Response:
    try:
        document = await _collector(request).stats_document()
    except Exception as e:  # noqa: BLE001
        log.error("stats failed: %s", e)
        return _json(500, "The counters could not be read (database error)")
    return Response(to_json(document), media_type=JSON)


@requires(Scope.ADMIN)
async def list_tokens(request: Request) -> Response:
    app = _collector(request)
    try:
        known = await app.credentials(lambda store: store.credentials())
    except StoreError as e:
        log.error("listing credentials failed: %s", e)
        return _json(500, "The credentials could not be read (database error)")
    return Response(to_json({"credentials": [
        {"name": c.name, "kind": c.kind.value, "scope": c.scope.value, "created": c.created} for c in known]}),
        media_type=JSON)


@requires(Scope.ADMIN)
async def revoke_token(request: Request) -> Response:
    app = _collector(request)
    name = request.path_params["name"]
    try:
        removed = await app.credentials(lambda store: store.revoke_credential(name))
    except StoreError as e:
        log.error("revoking a credential failed: %s", e)
        return _json(500, "The credential could not be revoked (database error)")
    if not removed:
        return _json(404, f"No credential named {name[:100]!r}")
    log.info("credential %r revoked by %s", name, request.state.principal.name)
    return Response(status_code=204)
