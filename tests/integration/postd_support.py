"""Helpers of the telempostd tests: records, filling the queue, a settable clock, a collector
in memory."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from support import METADATA

from telemetry import config as config_mod
from telemetry.daemons.postd.outcome import Response
from telemetry.daemons.postd.request import Request
from telemetry.daemons.postd.transport import MemoryTransport, TransportFactory
from telemetry.daemons.store.queue import NewRecord, Queue, Sender
from telemetry.record import Record, create_record

MACHINE_ID = "6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b"
SENDER = Sender(os.getuid(), os.getgid(), os.getpid())
MODULE = "telemetry.daemons.postd.main"


def record(n: int = 0, payload: str | None = None, **fields: object) -> Record:
    r = create_record(f"org.example/test/r{n}", 2, payload if payload is not None else f"payload {n}\n", event_id=f"{n:032x}",
                      metadata=METADATA, now=1_700_000_000 + n).with_machine_id(MACHINE_ID)
    return replace(r, **fields) if fields else r


def new_row(r: Record, *, received_at: float | None = None, headers: bytes | None = None,
            record_id: str | None = None) -> NewRecord:
    return NewRecord(
        record_id=record_id or uuid.uuid4().hex,
        received_at=time.time() if received_at is None else received_at,
        sender=SENDER,
        headers=r.header_block() if headers is None else headers,
        payload=r.payload,
    )


def enqueue(spool_dir: str, rows: list[NewRecord], *, wake: bool = True) -> list[str]:
    q = Queue(spool_dir)
    try:
        q.insert_many(rows)
        if wake:
            q.touch_wakeup()
    finally:
        q.close()
    return [r.record_id for r in rows]


def queued_ids(spool_dir: str) -> list[str]:
    q = Queue(spool_dir)
    try:
        return [r.record_id for r in q.all(100000)]
    finally:
        q.close()


def counters(spool_dir: str) -> dict[str, int]:
    q = Queue(spool_dir)
    try:
        return {name: v for (d, name), v in q.counters().items() if d == "telempostd"}
    finally:
        q.close()


def settings_text(url: str, **extra: object) -> str:
    lines = [f"server={url}", "log_level=debug"]
    for k, v in extra.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        lines.append(f"{k}={v}")
    return "\n".join(lines) + "\n"


def load_config(inst) -> config_mod.Config:
    return config_mod.load(inst.paths)


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Daemon:
    """telempostd run as a user runs it, its log kept in a file."""

    def __init__(self, inst, *args: str, env: dict[str, str] | None = None):
        self.log_path = Path(inst.root) / f"postd-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, *args],
            env={**inst.env, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._log.close()

    def wait(self, timeout: float = 30) -> int:
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if not self._log.closed:
            self._log.close()


# --- a collector in memory (no network), for Postd's MemoryTransport --------------------------


@dataclass(frozen=True)
class Sent:
    """A request telempostd made, as the in-memory collector saw it, and its answer."""

    request: Request
    answered: int  # HTTP status, 0 for a connection-level failure

    def header(self, name: str) -> str | None:
        for line in self.request.headers:
            key, _, value = line.decode().partition(": ")
            if key.lower() == name.lower():
                return value
        return None

    @property
    def record_id(self) -> str | None:
        return self.header("X-Telemetry-Record-Id")

    @property
    def body(self) -> bytes:
        return self.request.body


def answer(code: int, *, retry_after: str | None = None, message: str | None = None) -> Response:
    body = json.dumps({"message": message}).encode() if message is not None else b""
    return Response(code, retry_after=retry_after, body=body)


CLOSED = Response(curl_error=52, curl_message="Empty reply from server")  # the connection closed unanswered


class FakeCollector:
    """Answers telempostd's requests in memory: by plan, then as by default (201)."""

    def __init__(self) -> None:
        self.default = answer(201)
        self._plan: collections.deque[Response] = collections.deque()
        self.received: list[Sent] = []

    def answer(self, response: Response) -> None:
        self.default = response

    def plan(self, *responses: Response) -> None:
        self._plan.extend(responses)

    def __call__(self, request: Request) -> Response:
        response = self._plan.popleft() if self._plan else self.default
        self.received.append(Sent(request, response.status))
        return response

    def accepted(self) -> list[Sent]:
        return [s for s in self.received if 200 <= s.answered <= 299]

    @property
    def transport(self) -> TransportFactory:
        return MemoryTransport.factory(self)
