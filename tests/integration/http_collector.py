"""A collector for tests: a real HTTP/1.1 server (keep-alive) on 127.0.0.1, in a thread.

It validates a POST the way the reference collector does (collector-contract.md §4: TID,
version, presence, then field by field, 400 `{"message": ...}` on the first failure) and
otherwise answers as told: 201, any status (with Retry-After and a body), hang (read the
request, never answer until released), or close the connection without an answer.
Optionally over TLS, with or without requiring a client certificate.
"""

from __future__ import annotations

import collections
import http.server
import json
import re
import socket
import ssl
import string
import threading
import time
from dataclasses import dataclass, field

TID = "6907c830-eed9-4ce9-81ae-76daf8d88f0f"
FIELDS = (
    "Arch", "Build", "Creation-Timestamp", "Classification", "Host-Type", "Kernel-Version", "Machine-Id",
    "Severity", "Record-Format-Version", "Payload-Format-Version", "System-Name", "X-Telemetry-Tid",
    "Board-Name", "Bios-Version", "Cpu-Model", "Event-Id",
)
ARCHES = {"armv7l", "armv6l", "aarch64", "amd64", "sparc64", "ppc64", "i686", "i386", "x86_64", "ppc"}


@dataclass(frozen=True)
class Behaviour:
    kind: str = "accept"  # accept | status | hang | close | slow (accept after `delay` s)
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


def validate(headers: dict[str, str], tid: str) -> str | None:
    """The reference collector's checks, in its order; the 400 message or None."""
    h = {k.lower(): v.strip() for k, v in headers.items()}

    def get(name: str) -> str | None:
        return h.get(name.lower())

    if get("X-Telemetry-TID") != tid:
        return "Telemetry ID mismatch"
    rfv = get("Record-Format-Version")
    if rfv is None or not rfv.isdigit() or int(rfv) not in (1, 2, 3, 4):
        return "Record-Format-Version is invalid"
    if rfv == "4":
        for name in FIELDS:
            if get(name) is None:
                return f"Record-Format-Version headers are invalid, {name} missing"
    sev = get("Severity") or ""
    if not sev.isdigit() or int(sev) not in (1, 2, 3, 4):
        return "severity value is out of range"
    if len((get("Classification") or "").split("/")) != 3:
        return "Classification value is invalid"
    if len(get("Machine-Id") or "") > 32:
        return "Machine id value is invalid"
    if not (get("Creation-Timestamp") or "").isdigit():
        return "timestamp is invalid"
    if get("Arch") not in ARCHES:
        return "architecture is invalid"
    if len(get("Host-Type") or "") >= 250:
        return "host type is invalid"
    parts = (get("Kernel-Version") or "").split(".", 2)
    if len(parts) != 3 or not all(p.isdigit() for p in parts[:2]):
        return "kernel version is invalid"
    for name, what in (("Board-Name", "board name"), ("Cpu-Model", "cpu model"), ("Bios-Version", "BIOS version")):
        value = get(name) or ""
        if len(value) >= 200 or not all(c in string.printable for c in value):
            return f"{what} is invalid"
    event = get("Event-Id") or ""
    if len(event) != 32 or any(c not in "0123456789abcdef" for c in event):
        return "Event id is invalid"
    system = (get("System-Name") or "").replace('"', "").replace("'", "")
    build = (get("Build") or "").replace('"', "").replace("'", "")
    pattern = r"[0-9]+" if system == "clear-linux-os" else r"[-_a-zA-Z0-9.]+"
    if not re.fullmatch(pattern, build):
        return "Build version has invalid characters"
    try:
        if int(get("Payload-Format-Version") or "") >= 2147483647:
            return "Payload format version outside of range supported"
    except ValueError:
        return "Error parsing payload_format_version"
    return None


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
        answered = 0
        if behaviour.kind == "slow":
            col._hanging.set()
            time.sleep(behaviour.delay)
        if behaviour.kind in ("accept", "slow"):
            message = validate(dict(self.headers.items()), col.tid) if col.validate else None
            if message is None:
                answered = 201
            else:
                answered = 400
                body_out = json.dumps({"message": message}).encode()
        elif behaviour.kind == "status":
            answered = behaviour.status
            body_out = behaviour.body
        rec = Received(self.path, tuple(self.headers.items()), body, self.client_address, answered,
                       self.request_version)
        col._record(rec)
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
        if answered == 201:
            body_out = json.dumps({"id": len(col.received), "classification": self.headers.get("Classification")}).encode()
        extra = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
        self._answer(answered, body_out, extra=extra)

    def _answer(self, code: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
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
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@dataclass
class Collector:
    tid: str = TID
    tls: ssl.SSLContext | None = None
    validate: bool = True
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
