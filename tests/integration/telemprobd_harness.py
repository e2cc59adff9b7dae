"""Running a real telemprobd in a test's user-mode tree, and talking to it like a C probe.

    from telemprobd_harness import Probd, c_frame, good_headers
    with Probd(user_install, "record_burst_limit=5") as probd:
        reply = probd.send_raw(c_frame(good_headers(), b"hello"))

`c_frame` packs a frame with struct exactly as spec/wire-and-records.md section 3 lays it
out, independently of telemetry.wire, so the daemon is checked against the spec rather
than against our own encoder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from support import short_tempdir

HEADER_NAMES = (
    "record_format_version", "classification", "severity", "machine_id", "creation_timestamp",
    "arch", "host_type", "build", "kernel_version", "payload_format_version", "system_name",
    "board_name", "cpu_model", "bios_version", "event_id",
)


def good_headers(**override: str) -> list[tuple[str, str]]:
    values = {
        "record_format_version": "4",
        "classification": "org.example/probd/test",
        "severity": "2",
        "machine_id": "FFFFFFFF",
        "creation_timestamp": "1700000000",
        "arch": "x86_64",
        "host_type": "no_sv_file|no_pn_file|no_pvr_file",
        "build": "41000",
        "kernel_version": "6.6.1-1.native",
        "payload_format_version": "1",
        "system_name": "clear-linux-os",
        "board_name": "no_bn_file|no_bv_file",
        "cpu_model": "blank",
        "bios_version": "no_bv_file",
        "event_id": "0123456789abcdef0123456789abcdef",
    }
    values.update(override)
    return [(n, values[n]) for n in HEADER_NAMES]


def header_bytes(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{n}: {v}\n".encode() for n, v in headers)


def c_frame(headers: list[tuple[str, str]] | bytes, payload: bytes, cfg: bytes | None = None,
            record_size: int | None = None, header_size: int | None = None, terminator: bytes = b"\0") -> bytes:
    """A libtelemetry frame: u32 record_size, [CFG:path NUL], u32 header_size, headers, payload, NUL."""
    hb = headers if isinstance(headers, bytes) else header_bytes(headers)
    cfg_field = b"CFG:" + cfg + b"\0" if cfg is not None else b""
    size = 4 + len(cfg_field) + 4 + len(hb) + len(payload) + len(terminator)
    return (struct.pack("<I", size if record_size is None else record_size) + cfg_field
            + struct.pack("<I", len(hb) if header_size is None else header_size) + hb + payload + terminator)


class Probd:
    """telemprobd started as a user would start it, with its stderr collected."""

    def __init__(self, inst, config: str = "", *, opt_in: bool = True, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, socket_dir: str | None = None, start: bool = True,
                 command: list[str] | None = None, **popen_kw):
        self.inst = inst
        self._own_dir = socket_dir is None
        self.socket_dir = socket_dir or short_tempdir("tp-")
        self.socket_path = os.path.join(self.socket_dir, "telem-0")
        self.config_text = config
        self.args = args
        # The program; by default `python -m` its module (a console script: test_startup_imports).
        self.command = command or [sys.executable, "-m", "telemetry.daemons.probd.main"]
        self.env = {**inst.env, **(env or {})}
        self.popen_kw = popen_kw
        self.proc: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.write_config(config)
        if opt_in:
            inst.opt_in()
        if start:
            self.start()

    # --- life cycle --------------------------------------------------------------------

    def write_config(self, extra: str = "") -> None:
        self.inst.write_config(f"[settings]\nsocket_path={self.socket_path}\n{extra}\n")

    def start(self, wait: bool = True) -> Probd:
        self._lines = []
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **self.popen_kw,
        )
        threading.Thread(target=self._collect, args=(self.proc,), daemon=True).start()
        if wait:
            self.wait_ready()
        return self

    def _collect(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            with self._lock:
                self._lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"telemprobd exited with {self.proc.returncode}:\n{self.log()}")
            if "ready:" in self.log():
                return
            time.sleep(0.02)
        raise AssertionError(f"telemprobd not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()}")

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"telemprobd did not exit on signal {sig}:\n{self.log()}") from None

    def __enter__(self) -> Probd:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)

    # --- talking to it -----------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.socket_path)
        return s

    def send_raw(self, data: bytes, timeout: float = 10.0) -> bytes:
        return send_raw(self.socket_path, data, timeout)

    def send_and_close(self, data: bytes) -> None:
        """What a C libtelemetry does: write the frame and close without reading."""
        with self.connect() as s:
            s.sendall(data)

    @property
    def spool_dir(self) -> str:
        return self.inst.paths.spool_dir


def send_raw(path: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Bytes on a connection of their own, half-closed; the reply line (b"" if none)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the reply says why
        return read_reply(s)


def read_reply(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = s.recv(512)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def queued(spool_dir: str | Path):
    from telemetry.daemons.store.queue import Queue

    q = Queue(str(spool_dir), create=False)
    try:
        return q.all(100_000)
    finally:
        q.close()


def rows(probd: Probd) -> list:
    """What telemprobd's queue holds; nothing before it made the queue."""
    return queued(probd.spool_dir) if os.path.exists(os.path.join(probd.spool_dir, "queue", "queue.db")) else []


def row_headers(row) -> dict[str, str]:
    """A queued row's header lines by name."""
    return dict(line.split(": ", 1) for line in row.headers.decode().rstrip("\n").split("\n"))


def counters(spool_dir: str | Path) -> dict[str, int]:
    from telemetry.daemons.store.queue import Queue

    q = Queue(str(spool_dir), create=False)
    try:
        return {n: v for (d, n), v in q.counters().items() if d == "telemprobd"}
    finally:
        q.close()


__all__ = ["HEADER_NAMES", "Probd", "c_frame", "counters", "good_headers", "header_bytes", "queued", "read_reply",
           "row_headers", "rows", "send_raw"]
