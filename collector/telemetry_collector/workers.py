"""Several worker processes on one port, and the supervisor that keeps them running.

The supervisor binds before it forks: given one listening socket (systemd's), every worker
accepts on it; given an address, it opens one ``SO_REUSEPORT`` socket per worker on the
same port, so the kernel spreads connections evenly even when a client keeps a few
connections alive for long (telempostd does).  The supervisor keeps every socket open, so
a worker that dies is replaced on the same socket without refusing a connection.

Workers fork from the supervisor before any thread, event loop or database connection
exists; each opens its own connections and runs its own event loop and writer thread.
The supervisor reports ready once every worker has, forwards SIGTERM/SIGINT to them and
waits for their graceful exit, and replaces a worker that exits on its own (waiting longer
after each quick failure, and giving up when workers keep failing at start).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("telemetry-collector")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WATCHED = {*STOP_SIGNALS, signal.SIGCHLD}
STOP_GRACE = 20.0  # seconds workers have to finish before SIGKILL
QUICK_FAILURE = 10.0  # a worker that dies sooner after its start failed to start
MAX_QUICK_FAILURES = 5  # in a row, before the supervisor gives up
MAX_WORKERS = 64


def reuseport_sockets(first: socket.socket, count: int) -> list[socket.socket]:
    """`first` (already bound, with SO_REUSEPORT) and count-1 more on its address."""
    out = [first]
    address = first.getsockname()
    for _ in range(count - 1):
        s = socket.socket(first.family, first.type, first.proto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(address)
        s.listen(2048)
        out.append(s)
    return out


@dataclass
class _Worker:
    index: int
    started: float
    ready: bool = False


@dataclass
class Supervisor:
    """`run_worker(index, sock, ready)` runs in the child and returns its exit status."""

    sockets: list[socket.socket]
    count: int
    run_worker: Callable[[int, socket.socket, Callable[[], None]], int]
    on_exit: Callable[[int], None] = lambda pid: None
    workers: dict[int, _Worker] = field(default_factory=dict)
    _quick_failures: int = 0
    _stopping: bool = False
    _stop_deadline: float = 0.0
    _announced: bool = False

    def _socket(self, index: int) -> socket.socket:
        return self.sockets[index % len(self.sockets)]

    def _spawn(self, index: int, ready_w: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                for sig in _WATCHED:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _WATCHED)
                def ready() -> None:
                    os.write(ready_w, index.to_bytes(1, "big"))

                status = self.run_worker(index, self._socket(index), ready)
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - the worker's last words go to the log
                log.error("worker %d failed: %s", index, traceback.format_exc().strip())
            finally:
                os._exit(status)
        self.workers[pid] = _Worker(index, time.monotonic())

    def run(self, on_ready: Callable[[], None]) -> int:
        """Serve until a stop signal; the exit status for the program."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        status = 0
        try:
            for i in range(self.count):
                self._spawn(i, ready_w)
            while self.workers:
                info = signal.sigtimedwait(_WATCHED, 0.2)
                if info is not None and info.si_signo in STOP_SIGNALS and not self._stopping:
                    self._stop_all()
                status = max(status, self._reap(ready_w))
                if not self._announced and not self._stopping:
                    self._read_ready(ready_r)
                    if all(w.ready for w in self.workers.values()) and len(self.workers) == self.count:
                        self._announced = True
                        on_ready()
                if self._stopping and time.monotonic() > self._stop_deadline:
                    for pid in self.workers:
                        _kill(pid, signal.SIGKILL)
            return status if self._announced else max(status, 1)
        finally:
            os.close(ready_r)
            os.close(ready_w)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _read_ready(self, fd: int) -> None:
        try:
            data = os.read(fd, 256)
        except BlockingIOError:
            return
        for index in data:
            for w in self.workers.values():
                if w.index == index:
                    w.ready = True

    def _stop_all(self) -> None:
        self._stopping = True
        self._stop_deadline = time.monotonic() + STOP_GRACE
        for pid in self.workers:
            _kill(pid, signal.SIGTERM)

    def _reap(self, ready_w: int) -> int:
        status = 0
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if pid == 0:
                return status
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.on_exit(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if self._stopping:
                status = max(status, code if code > 0 else 0)
                continue
            if not self._announced:  # a worker that cannot start: the others would not either
                log.error("worker %d (pid %d) did not start; stopping", worker.index, pid)
                self._stop_all()
                status = 1
                continue
            lived = time.monotonic() - worker.started
            self._quick_failures = self._quick_failures + 1 if lived < QUICK_FAILURE else 0
            log.error("worker %d (pid %d) exited with %s after %.0f s", worker.index, pid,
                      f"status {code}" if code >= 0 else f"signal {-code}", lived)
            if self._quick_failures >= MAX_QUICK_FAILURES:
                log.error("workers keep failing at start; stopping")
                self._stop_all()
                status = 1
                continue
            time.sleep(min(0.5 * 2 ** self._quick_failures, 10.0) if self._quick_failures else 0)
            self._spawn(worker.index, ready_w)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as e:
        if e.errno != errno.ESRCH:
            raise
