"""A throwaway NATS server with JetStream, for tests, benchmarks and demos.

It runs the distribution's ``nats-server`` (Debian's package installs it in /usr/sbin) on a
port of 127.0.0.1 with its JetStream store in a directory of its own, as a child of the
caller, so stopping it is signalling one known pid.  `kill` is SIGKILL (a crash);
`start` again reuses the port and the store, as a restarted server would.  `read_stream`
reads back what a stream holds, for checking.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from telemetry.errors import TelemetryError

START_TIMEOUT = 30.0
READY_LINE = b"Server is ready"
SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class TempNatsError(TelemetryError):
    pass


def find_nats_server() -> str | None:
    return shutil.which("nats-server", path=os.pathsep.join([os.environ.get("PATH", ""), *SEARCH_PATH]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryNats:
    """``with TemporaryNats() as ns: ns.url``; `kill()` and `start()` for crash tests."""

    def __init__(self, port: int | None = None):
        self.binary = find_nats_server()
        self.port = port or _free_port()
        self.dir: str | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, "jetstream")

    def start(self) -> TemporaryNats:
        if self.binary is None:
            raise TempNatsError("nats-server not found; install Debian's nats-server package")
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="tnats-", dir="/tmp")
        log_path = os.path.join(self.dir, "server.log")
        with open(log_path, "ab") as log:
            offset = log.tell()
            self.process = subprocess.Popen(
                [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store_dir],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with open(log_path, "rb") as f:
                f.seek(offset)
                text = f.read()
            if READY_LINE in text:
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = text.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                self.stop()
                raise TempNatsError(f"nats-server did not start: {tail[0]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash; its store stays for the next start."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> TemporaryNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass(frozen=True)
class StreamMessage:
    subject: str
    headers: dict[str, str]
    data: bytes


def read_stream(url: str, stream: str, timeout: float = 30.0) -> list[StreamMessage]:
    """Every message `stream` holds, in order (nats-py must be installed)."""

    async def read() -> list[StreamMessage]:
        import nats

        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
        try:
            js = nc.jetstream(timeout=timeout)
            info = await js.stream_info(stream)
            out: list[StreamMessage] = []
            if info.state.messages == 0:
                return out
            sub = await js.pull_subscribe((info.config.subjects or [">"])[0], stream=stream)
            while len(out) < info.state.messages:
                for m in await sub.fetch(min(1000, info.state.messages - len(out)), timeout=timeout):
                    out.append(StreamMessage(m.subject, dict(m.headers or {}), m.data))
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return asyncio.run(read())
