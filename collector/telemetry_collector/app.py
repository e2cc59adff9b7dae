"""The ASGI application: routes, body limits, and the hand-off to the writer.

Routes (contract §1): ``POST /`` and ``POST /v2/collector`` ingest; ``GET`` on them answers
302 to ``/telemetryui`` as the reference does (here a one-line page, there is no UI);
``GET /api/records`` queries; ``GET /api/stats`` shows the counters (ours).  Other
methods on these paths get 405, other paths 404, always with a JSON ``message``.

Every refusal is counted by rule and logged with the peer; the application never lets an
exception reach the server for a bad request.  Database failures answer 500 with nothing
stored, so the client's retry is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .dburl import DatabaseURL
from .model import to_json
from .purge import PurgePolicy
from .query import QueryRejected, parse_query, parse_query_string
from .request import submission_from_request
from .rules import Rejected, Rule, validate
from .store import Durability, Store, StoreError, open_store
from .writer import REJECTED_PREFIX, Stats, Writer

log = logging.getLogger("telemetry-collector")
T = TypeVar("T")

DEFAULT_MAX_BODY = 1 << 20
PURGE_INTERVAL = 24 * 60 * 60.0
INGEST_PATHS = ("/", "/v2/collector")
UI_PATH = "/telemetryui"
RECORDS_PATH = "/api/records"
STATS_PATH = "/api/stats"
JSON = b"application/json"
UI_TEXT = (
    b"telemetry-collector has no web UI.\n"
    b"Records: GET /api/records (filters: severity, classification, build, machine_id,\n"
    b"created_in_days, created_in_sec, from_id, ts_capture, limit). Counters: GET /api/stats.\n"
)


@dataclass(frozen=True)
class Settings:
    tids: frozenset[str]
    max_body: int = DEFAULT_MAX_BODY
    purge: PurgePolicy | None = None
    purge_interval: float = PURGE_INTERVAL
    durability: Durability = Durability.FULL


class _ClientGone(Exception):
    pass


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _message(text: str) -> bytes:
    return to_json({"message": text})


class _Reader:
    """A connection for GETs, used from worker threads one at a time."""

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

    def _drop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def close(self) -> None:
        with self._lock:
            self._drop()


class CollectorApp:
    def __init__(self, url: DatabaseURL, settings: Settings, *, writer_store: Store | None = None,
                 reader_store: Store | None = None):
        self.settings = settings
        self.writer = Writer(url, writer_store, settings.durability)
        self.reader = _Reader(url, reader_store)
        self._purge_task: asyncio.Task | None = None
        self.routes: dict[str, dict[str, Callable[..., Awaitable[None]]]] = {
            **{p: {"POST": self._ingest, "GET": self._to_ui, "HEAD": self._to_ui} for p in INGEST_PATHS},
            UI_PATH: {"GET": self._ui, "HEAD": self._ui},
            RECORDS_PATH: {"GET": self._records, "HEAD": self._records},
            STATS_PATH: {"GET": self._stats, "HEAD": self._stats},
        }

    # --- ASGI ---------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        self.writer.start()
        policy = self.settings.purge
        if policy is not None and policy.active:
            self._purge_task = asyncio.get_running_loop().create_task(self._purge_loop(policy))

    async def shutdown(self) -> None:
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        await asyncio.to_thread(self.writer.stop)
        self.reader.close()

    async def _purge_loop(self, policy: PurgePolicy) -> None:
        while True:
            try:
                deleted = await self.writer.purge(policy)
                log.info("retention purge: deleted %d records", deleted)
            except Exception as e:  # noqa: BLE001 - logged; the next run tries again
                log.error("retention purge failed: %s", e)
            await asyncio.sleep(self.settings.purge_interval)

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        methods = self.routes.get(scope["path"])
        if methods is None:
            await _respond(send, 404, _message(f"Not found: {scope['path'][:100]}"))
            return
        handler = methods.get(scope["method"])
        if handler is None:
            allow = ", ".join(sorted(methods)).encode()
            await _respond(send, 405, _message(f"Method {scope['method'][:20]} is not allowed here"),
                           extra=[(b"allow", allow)])
            return
        try:
            await handler(scope, receive, send)
        except _ClientGone:
            pass

    # --- handlers -----------------------------------------------------------------
    def _refuse(self, scope: dict, rule: Rule, message: str) -> None:
        self.writer.count(REJECTED_PREFIX + rule.value)
        client = scope.get("client") or ("?", 0)
        log.warning("rejected a record from %s: %s", client[0], message)

    async def _read_body(self, receive: Callable) -> bytes | None:
        """The whole body, or None once it exceeds the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _ingest(self, scope: dict, receive: Callable, send: Callable) -> None:
        limit = self.settings.max_body
        declared = _content_length(scope["headers"])
        body = None if declared is not None and declared > limit else await self._read_body(receive)
        if body is None:
            size = f"{declared} bytes" if declared is not None and declared > limit else "larger"
            message = f"Request body is {size}; this collector accepts at most {limit} bytes"
            self._refuse(scope, Rule.TOO_LARGE, message)
            await _respond(send, 413, _message(message), extra=[(b"connection", b"close")])
            return
        sub = submission_from_request(scope["headers"], body)
        try:
            record = validate(sub, self.settings.tids, int(time.time()))
        except Rejected as r:
            self._refuse(scope, r.rule, r.message)
            await _respond(send, r.status, _message(r.message))
            return
        try:
            reply = await self.writer.submit(record)
        except StoreError:
            await _respond(send, 500, _message("The record was not stored (database error); try again later"))
            return
        if reply.duplicate:
            log.info("repeat of record %s answered from the stored row", record.record_id)
        await _respond(send, reply.status, reply.body)

    async def _to_ui(self, scope: dict, receive: Callable, send: Callable) -> None:
        await _respond(send, 302, b"", content_type=b"text/plain", extra=[(b"location", UI_PATH.encode())])

    async def _ui(self, scope: dict, receive: Callable, send: Callable) -> None:
        await _respond(send, 200, UI_TEXT, content_type=b"text/plain; charset=utf-8")

    async def _records(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            q = parse_query(parse_query_string(scope.get("query_string", b"")))
        except QueryRejected as e:
            log.warning("bad records query: %s", e.message)
            await _respond(send, 400, _message(e.message))
            return
        now = int(time.time())

        def read(store: Store) -> bytes:
            # Up to 1000 records with their payloads: rendered here, not on the event loop.
            return to_json({"records": [r.as_json_dict() for r in store.query(q, now)]})

        try:
            body = await asyncio.to_thread(self.reader.run, read)
        except StoreError as e:
            log.error("records query failed: %s", e)
            await _respond(send, 500, _message("The records could not be read (database error)"))
            return
        await _respond(send, 200, body)

    async def _stats(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            counters = await self.writer.counters()
            # The count scans the table: on the reader's connection, not the writer's thread.
            records = await asyncio.to_thread(self.reader.run, lambda store: store.count_records())
        except Exception as e:  # noqa: BLE001
            log.error("stats failed: %s", e)
            await _respond(send, 500, _message("The counters could not be read (database error)"))
            return
        await _respond(send, 200, to_json(Stats(records=records, counters=counters).document()))


async def _respond(send: Callable, status: int, body: bytes, *, content_type: bytes = JSON,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})

