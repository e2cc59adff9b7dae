"""The real telemetry-collector for tests that need HTTP, behind a front that can misbehave.

The collector (`telemetry-collector serve`, one process for the whole test run, SQLite in
a temporary directory) judges and stores what it is sent, by the contract telempostd
checks too (telemetry/contract.py); its answers are relayed.  The front, a threaded
HTTP/1.1 server on 127.0.0.1 (keep-alive, optionally TLS), keeps every request it
receives and, when told to, answers in the collector's place: any status (with
Retry-After and a message), a hang (read the request, never answer until released), a
slow answer, or a connection closed without an answer.

Tests that only need something to answer telempostd's requests use the in-memory
transport instead (`telemetry.daemons.postd.transport.MemoryTransport`).
"""

from __future__ import annotations

import atexit
import collections
import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from telemetry.config import DEFAULT_TID
from telemetry_collector.launch import RunningCollector, start_collector

TID = DEFAULT_TID
# Not forwarded: they describe the hop to the front, not the request.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "host",
                  "expect", "te", "upgrade"})


@dataclass(frozen=True)
class Behaviour:
    kind: str = "accept"  # accept (the collector answers) | status | hang | close | slow (accept after `delay` s)
    status: int = 201
    retry_after: str | None = None
    body: bytes = b""
    delay: float = 0.0


ACCEPT = Behaviour()
HANG = Behaviour("hang")
CLOSE = Behaviour("close")


def slow(delay: float) -> Behaviour:
    return Behaviour("slow", delay=delay)


def status(code: int, *, retry_after: str | None = None, message: str | None = None) -> Behaviour:
    body = json.dumps({"message": message}).encode() if message is not None else b""
    return Behaviour("status", code, retry_after, body)


@dataclass(frozen=True)
class Received:
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    connection: tuple[str, int]
    answered: int  # status sent, 0 when none
    protocol: str

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None

    def count(self, name: str) -> int:
        return sum(1 for k, _ in self.headers if k.lower() == name.lower())

    @property
    def record_id(self) -> str | None:
        return self.header("X-Telemetry-Record-Id")


# --- the collector behind the front: one for the test run ---------------------------------

_backend: RunningCollector | None = None
_backend_lock = threading.Lock()


def backend_url() -> str:
    """scheme://host:port of the collector, started on first use, stopped at exit."""
    global _backend
    with _backend_lock:
        if _backend is None or _backend.process.poll() is not None:
            workdir = tempfile.mkdtemp(prefix="tc-")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
            _backend = start_collector(f"sqlite:///{workdir}/records.db", env={**env, "HOME": workdir},
                                       # The daemons are what is tested, not the collector's own
                                       # limits: every record comes from one machine and address.
                                       args=("--durability", "relaxed", "--purge-days", "0",
                                             "--machine-rate", "0", "--address-rate", "0"),
                                       log_path=f"{workdir}/collector.log", python=sys.executable)
            atexit.register(_stop_backend, _backend, workdir)
        return _backend.url


def _stop_backend(running: RunningCollector, workdir: str) -> None:
    running.stop()
    shutil.rmtree(workdir, ignore_errors=True)


_local = threading.local()


def _forward(method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, list, bytes]:
    """The request as the collector answers it, on this thread's kept-alive connection."""
    target = urllib.parse.urlsplit(path).path or "/"  # a proxied request names the whole URL
    for attempt in range(2):
        conn = getattr(_local, "conn", None)
        if conn is None:
            netloc = urllib.parse.urlsplit(backend_url()).netloc
            conn = _local.conn = http.client.HTTPConnection(netloc, timeout=30)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP:
                    conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            answer = conn.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            _local.conn = None
            if attempt:
                raise
    raise AssertionError("unreachable")


# --- the front ------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in two writes: without TCP_NODELAY each answer on a kept-alive
    # connection waits for the client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(302, b"", extra={"Location": "/telemetryui"})

    def do_POST(self) -> None:
        col = self.server.collector
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        behaviour = col._next_behaviour()
        headers = list(self.headers.items())
        if behaviour.kind == "slow":
            col._hanging.set()
            time.sleep(behaviour.delay)
        answered, body_out, extra = 0, b"", {}
        if behaviour.kind in ("accept", "slow"):
            answered, reply_headers, body_out = _forward("POST", self.path, headers, body)
            extra = {k: v for k, v in reply_headers if k.lower() in ("content-type", "retry-after")}
        elif behaviour.kind == "status":
            answered, body_out = behaviour.status, behaviour.body
            extra = {"Content-Type": "application/json"}
            if behaviour.retry_after:
                extra["Retry-After"] = behaviour.retry_after
        col._record(Received(self.path, tuple(headers), body, self.client_address, answered, self.request_version))
        if behaviour.kind == "hang":
            col._hanging.set()
            col._release.wait(60)
            self.close_connection = True
            return
        if behaviour.kind == "close":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._answer(answered, body_out, extra=extra)

    def _answer(self, code: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    collector: Collector

    def handle_error(self, request, client_address) -> None:
        """A client that gave up (its timeout, a slow answer) is expected here, not a fault."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@dataclass
class Collector:
    tls: ssl.SSLContext | None = None
    port: int = 0
    default: Behaviour = ACCEPT
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._plan: collections.deque[Behaviour] = collections.deque()
        self._hanging = threading.Event()
        self._release = threading.Event()
        self._server: _Server | None = None

    # --- control ------------------------------------------------------------------------

    def start(self) -> Collector:
        backend_url()  # up before the first request, so none waits for it
        srv = _Server(("127.0.0.1", self.port), _Handler)
        srv.collector = self
        if self.tls is not None:
            srv.socket = self.tls.wrap_socket(srv.socket, server_side=True)
        self.port = srv.server_address[1]
        self._server = srv
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v2/collector"

    def answer(self, behaviour: Behaviour) -> None:
        """From now on, answer every request this way."""
        self._arm(behaviour)
        with self._lock:
            self.default = behaviour

    def plan(self, *behaviours: Behaviour) -> None:
        """Answer the next requests this way, one each, then as by default."""
        for b in behaviours:
            self._arm(b)
        with self._lock:
            self._plan.extend(behaviours)

    def _arm(self, behaviour: Behaviour) -> None:
        if behaviour.kind in ("hang", "slow"):
            self._release.clear()
            self._hanging.clear()

    def release(self) -> None:
        """Let hanging requests go (their connections are closed without an answer)."""
        self._release.set()

    def wait_hanging(self, timeout: float = 30) -> bool:
        """Wait until a request is being held (hang) or slowed (slow)."""
        return self._hanging.wait(timeout)

    def wait_for(self, n: int, timeout: float = 30, *, status: int | None = 201) -> list[Received]:
        """Wait until `n` requests were answered with `status` (None: any request)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self.received if status is None or r.answered == status]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"collector got {len(got)} of {n} expected requests; all: "
                                       f"{[(r.answered, r.record_id) for r in self.received]}")
                self._lock.wait(min(left, 0.2))

    def accepted(self) -> list[Received]:
        """Requests the collector stored (201)."""
        with self._lock:
            return [r for r in self.received if r.answered == 201]

    # --- used by the handler --------------------------------------------------------------

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._plan.popleft() if self._plan else self.default

    def _record(self, rec: Received) -> None:
        with self._lock:
            self.received.append(rec)
            self._lock.notify_all()
