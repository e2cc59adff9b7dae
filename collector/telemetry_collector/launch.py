"""Start a collector from another program (demo, tests, benchmarks) and talk to it.

`start_collector` runs ``python -m telemetry_collector.main`` on a free port of 127.0.0.1,
waits for its ``listening on URL`` line, and returns a `RunningCollector` that can list the
records and counters it holds and stop it.  Reads need a credential: before serving, the
launcher makes an admin token with ``telemetry-collector token add`` on the same database
(as an operator would) and sends it with every read.  Reads use the standard library's HTTP
client, so nothing here needs the server's own dependencies.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from telemetry.errors import TelemetryError

MODULE = "telemetry_collector.main"
READY_PREFIX = "listening on "
START_TIMEOUT = 30.0


class CollectorStartError(TelemetryError):
    pass


@dataclass
class RunningCollector:
    url: str  # scheme://host:port, without a path
    process: subprocess.Popen
    log_path: str | None = None
    token: str | None = field(default=None, repr=False)  # an admin token, for reads
    _stopped: bool = field(default=False, repr=False)

    @property
    def collector_url(self) -> str:
        """What telempostd's `server` key should hold."""
        return self.url + "/v2/collector"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get_json(self, path: str, timeout: float = 30.0) -> dict:
        request = urllib.request.Request(self.url + path, headers=self.auth_headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)

    def records(self, **params: object) -> list[dict]:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        return self.get_json("/api/records" + (f"?{query}" if query else ""))["records"]

    def stats(self) -> dict:
        return self.get_json("/api/stats")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not finish.  Returns the exit status."""
        if self._stopped:
            return self.process.returncode
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> RunningCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_collector(
    database: str,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    log_path: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = START_TIMEOUT,
    python: str = sys.executable,
    read_token: bool = True,
) -> RunningCollector:
    """A collector serving `database` on a free port of `host`; its log goes to `log_path`.
    With `read_token`, an admin token is made first and kept in `RunningCollector.token`."""
    token = make_token(database, f"launch-{uuid.uuid4().hex[:12]}", env=env, python=python) if read_token else None
    command = [python, "-m", MODULE, "serve", "--listen", f"{host}:0", "--database", database, *args]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env,
                                   stdin=subprocess.DEVNULL)
    finally:
        if log_path:
            log.close()  # type: ignore[union-attr]
    collector = RunningCollector(url="", process=process, log_path=log_path, token=token)
    try:
        text = _first_line(process, timeout).decode(errors="replace").strip()
        if not text.startswith(READY_PREFIX):
            raise CollectorStartError(f"unexpected first line from the collector: {text!r}")
    except CollectorStartError as e:
        collector.stop(timeout=0)  # also closes the pipe
        raise CollectorStartError(f"{e}{_see(log_path)}") from None
    collector.url = text[len(READY_PREFIX):]
    return collector


def make_token(database: str, name: str, *, scope: str = "admin", env: dict[str, str] | None = None,
               python: str = sys.executable) -> str:
    """`telemetry-collector token add NAME --scope SCOPE --database DATABASE`; its secret."""
    done = subprocess.run([python, "-m", MODULE, "token", "add", name, "--scope", scope, "--database", database],
                          capture_output=True, env=env, stdin=subprocess.DEVNULL, timeout=START_TIMEOUT)
    if done.returncode != 0:
        raise CollectorStartError(f"cannot make a read token: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode().strip()


def _first_line(process: subprocess.Popen, timeout: float) -> bytes:
    """The first line the collector writes to stdout; an error if it exits or stays silent."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise CollectorStartError(f"the collector did not start within {timeout:.0f} s")
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                raise CollectorStartError(f"the collector exited with status {process.wait()}")
            line += chunk
    return line


def _see(log_path: str | None) -> str:
    if not log_path:
        return ""
    try:
        with open(log_path, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f" (log {log_path}: {tail[-1] if tail else 'empty'})"


__all__ = ["CollectorStartError", "RunningCollector", "make_token", "start_collector"]
