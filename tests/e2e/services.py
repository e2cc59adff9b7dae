"""telemprobd and telempostd run the way their systemd units run them, without systemd.

What the units say (systemd/*.in) and how it is reproduced here:

* telemprobd.socket + telemprobd.service: the manager owns the listening socket (mode
  0666) and hands it to telemprobd as fd 3 with LISTEN_FDS/LISTEN_PID, as socket
  activation does.  While telemprobd is down, connections wait in the socket's backlog;
  it is started again when one arrives ("on the next connection attempt").
* telempostd.path (PathModified= on the queue's wake-up file) + telempostd.service:
  telempostd is started again when the wake-up file changes.
* Restart=on-failure (RestartSec 100 ms, systemd's default): a daemon that died of a
  signal or with a non-zero status is started again after RESTART_SEC.  A clean exit
  (status 0: idle recycling, SIGTERM) waits for its trigger instead.

systemd's start rate limit (StartLimitBurst=) is not reproduced: the chaos runs kill far
more often than it would allow.  A monitor thread does the restarting and samples each
daemon's peak RSS (VmHWM) and CPU time.  Every exit is kept: the tests tell the kills
they asked for from crashes.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import proc_memory

from telemetry.daemons import MODULES

RESTART_SEC = 0.1
MONITOR_INTERVAL = 0.02
SAMPLE_INTERVAL = 0.2
STOP_TIMEOUT = 30.0
PROBD = "telemprobd"
POSTD = "telempostd"
# What each daemon logs once it serves (where systemd would get READY=1).
READY_MARK = {PROBD: "ready:", POSTD: "delivering "}

# Runs the daemon with the passed socket as fd 3, as systemd's socket activation does
# (LISTEN_PID must be the daemon's own pid, known only in the child).
_ACTIVATED = (
    "import os, runpy, sys; fd = int(sys.argv[1]); fd != 3 and (os.dup2(fd, 3), os.close(fd)); "
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
    "sys.argv = [sys.argv[2]] + sys.argv[3:]; "
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


@dataclass(frozen=True)
class Exit:
    name: str
    pid: int
    returncode: int
    killed_by_us: bool

    @property
    def crashed(self) -> bool:
        """Died on its own with an error (not our SIGKILL, not a clean exit)."""
        return not self.killed_by_us and self.returncode != 0


@dataclass
class Usage:
    """What the monitor saw of one daemon over all its runs."""
    peak_rss: int = 0  # bytes, the highest VmHWM of any run
    cpu_seconds: float = 0.0  # user+system of runs that ended, plus the current run
    starts: int = 0
    _current_cpu: float = field(default=0.0, repr=False)

    def total_cpu(self) -> float:
        return self.cpu_seconds + self._current_cpu


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Service:
    def __init__(self, manager: ServiceManager, name: str):
        self.manager = manager
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.usage = Usage()
        self.enabled = True
        self.log_path = manager.log_dir / f"{name}.log"
        self.log_offset = 0
        self._kill_requested: set[int] = set()
        self._restart_at: float | None = None
        self._trigger_mark: object = None

    # --- driven by the manager ---------------------------------------------------------

    def start(self) -> None:
        try:
            self.log_offset = self.log_path.stat().st_size
        except FileNotFoundError:
            self.log_offset = 0
        if self.name == PROBD and self.manager.listener is not None:
            pass_fds = (self.manager.listener.fileno(),)
            argv = [sys.executable, "-c", _ACTIVATED, str(pass_fds[0]), MODULES[self.name]]
        else:
            pass_fds = ()
            argv = [sys.executable, "-m", MODULES[self.name]]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=self.manager.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         pass_fds=pass_fds)
        self.usage.starts += 1
        self.usage._current_cpu = 0.0
        self._restart_at = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL the current run; False if it was not running."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        self._kill_requested.add(proc.pid)
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def sample(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self.usage.peak_rss = max(self.usage.peak_rss, proc_memory(proc.pid, "VmHWM"))
        self.usage._current_cpu = max(self.usage._current_cpu, _cpu(proc.pid))

    def reap(self) -> Exit | None:
        """If the current run ended, record it and plan the restart."""
        proc = self.proc
        if proc is None or proc.poll() is None:
            return None
        self.proc = None
        self.usage.cpu_seconds += self.usage._current_cpu
        self.usage._current_cpu = 0.0
        ended = Exit(self.name, proc.pid, proc.returncode, proc.pid in self._kill_requested)
        self._kill_requested.discard(proc.pid)
        if proc.returncode != 0:
            self._restart_at = time.monotonic() + RESTART_SEC  # Restart=on-failure
        self._trigger_mark = self.manager.trigger_mark(self.name)
        return ended

    def due(self, now: float) -> bool:
        """Restart=on-failure's delay is over, or the socket/path trigger fired."""
        if not self.enabled or self.running():
            return False
        if self._restart_at is not None and now >= self._restart_at:
            return True
        return self.manager.triggered(self.name, self._trigger_mark)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ready(self) -> bool:
        """The current run logged that it serves."""
        if not self.running():
            return False
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return READY_MARK[self.name].encode() in f.read()
        except FileNotFoundError:
            return False


class ServiceManager:
    """Starts, watches and restarts the two daemons of one user-mode installation (`env`:
    its environment, which has none of systemd's variables)."""

    def __init__(self, env: dict[str, str], socket_path: str, spool_dir: str, log_dir: Path,
                 *, socket_activation: bool = True, postd: bool = True):
        self.env = dict(env)
        self.socket_path = socket_path
        self.wakeup_file = os.path.join(spool_dir, "queue", "queue.changed")
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.listener: socket.socket | None = None
        if socket_activation:
            self.listener = self._bind(socket_path)
        self.services = {PROBD: Service(self, PROBD)}
        if postd:
            self.services[POSTD] = Service(self, POSTD)
        self.exits: list[Exit] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _bind(path: str) -> socket.socket:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o111)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.listen(socket.SOMAXCONN)
        return s

    # --- triggers ----------------------------------------------------------------------

    def trigger_mark(self, name: str) -> object:
        if name == POSTD:
            try:
                st = os.stat(self.wakeup_file)
                return (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                return None
        return None

    def triggered(self, name: str, mark: object) -> bool:
        if name == POSTD:
            return self.trigger_mark(name) != mark
        if self.listener is None:
            return False
        ready, _, _ = select.select([self.listener], [], [], 0)
        return bool(ready)

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> ServiceManager:
        """Delivery first, then intake, each once it is ready, as `telemctl --user start`
        does (two daemons creating a new queue at the same instant can find it locked)."""
        for name in (POSTD, PROBD):
            if name in self.services:
                self.services[name].start()
                self._wait_started(name)
        self._thread = threading.Thread(target=self._monitor, name="service-manager", daemon=True)
        self._thread.start()
        return self

    def _wait_started(self, name: str, timeout: float = 30.0) -> None:
        svc = self.services[name]
        deadline = time.monotonic() + timeout
        while not svc.ready() and svc.running() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _monitor(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                sample = now >= next_sample
                for svc in self.services.values():
                    if sample:
                        svc.sample()
                    ended = svc.reap()
                    if ended is not None:
                        self.exits.append(ended)
                    if not self._stop.is_set() and svc.due(now):
                        svc.start()
                if sample:
                    next_sample = now + SAMPLE_INTERVAL
            self._stop.wait(MONITOR_INTERVAL)

    def kill(self, name: str) -> bool:
        with self._lock:
            svc = self.services[name]
            svc.sample()
            return svc.kill()

    def signal(self, name: str, sig: int) -> None:
        with self._lock:
            proc = self.services[name].proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)

    def pid(self, name: str) -> int | None:
        with self._lock:
            proc = self.services[name].proc
            return proc.pid if proc is not None and proc.poll() is None else None

    def wait_running(self, name: str, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid is not None:
                return pid
            time.sleep(0.02)
        raise AssertionError(f"{name} is not running after {timeout:.0f} s:\n{self.log(name)[-3000:]}")

    def wait_ready(self, name: str, timeout: float = 30.0) -> int:
        """Until the daemon serves (systemd's READY=1: reloads wait for it); its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                svc = self.services[name]
                if svc.ready():
                    return svc.proc.pid
            time.sleep(0.02)
        raise AssertionError(f"{name} is not ready after {timeout:.0f} s:\n{self.log(name)[-3000:]}")

    def stop_service(self, name: str, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait, not restarted afterwards; the exit status (None: was not running)."""
        with self._lock:
            svc = self.services[name]
            svc.enabled = False
            svc.sample()
            proc = svc.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{name} did not stop on SIGTERM within {timeout:.0f} s") from None
        with self._lock:
            ended = svc.reap()
            if ended is not None:
                self.exits.append(ended)
        return proc.returncode

    def stop(self) -> dict[str, int | None]:
        """Stop intake first, then delivery; the monitor last.  A daemon that does not stop
        on SIGTERM is killed and named in an AssertionError, once everything is stopped."""
        codes = {}
        failures = []
        for name in (PROBD, POSTD):
            if name in self.services:
                try:
                    codes[name] = self.stop_service(name)
                except AssertionError as e:
                    failures.append(str(e))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        if failures:
            raise AssertionError("; ".join(failures))
        return codes

    # --- what happened -----------------------------------------------------------------

    def usage(self, name: str) -> Usage:
        with self._lock:
            svc = self.services[name]
            svc.sample()
            return dataclasses.replace(svc.usage)

    def crashes(self) -> list[Exit]:
        with self._lock:
            return [e for e in self.exits if e.crashed]

    def log(self, name: str) -> str:
        return self.services[name].log()

    def tracebacks(self) -> dict[str, str]:
        """Logs that show a Python traceback: a daemon crashed on something."""
        return {name: svc.log() for name, svc in self.services.items() if "Traceback" in svc.log()}
