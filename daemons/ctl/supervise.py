"""User mode: telemprobd and telempostd as the user's own background processes.

Without systemd something else has to start the daemons, remember them and tell whether
they still run.  Each daemon runs as its installed console script (so `ps` shows it by
name) in a session of its own, logging with timestamps to `<state_dir>/<name>.log`,
which it rotates at 1 MiB (stdout and stderr go there too); its pid is kept in
`<run_dir>/<name>.pid` (written atomically).  A pid only counts as the daemon while that process is alive, not a zombie,
owned by us, and running our daemon's command line, so a recycled pid is never mistaken
for it.

Readiness uses systemd's own protocol: the child gets a private NOTIFY_SOCKET (an
abstract unix datagram socket whose messages carry the sender's credentials), and
`start` returns once that pid sent READY=1, once telemprobd listens on its socket, or
once the child exited (an error carrying the last line of its log).  The child gets no
INVOCATION_ID or LISTEN_FDS, so the daemons know systemd did not start them and do not
exit when idle.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import importlib.util
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import psutil

from telemetry.daemons import MODULES
from telemetry.daemons.ctl.units import SLOW_NOTICE
from telemetry.errors import TelemetryError
from telemetry.fsutil import atomic_write, ensure_dir
from telemetry.log import LOG_FILE_ENV, LOG_MODE
from telemetry.paths import MODE_ENV, Mode, Paths

PROBD = "telemprobd"
POSTD = "telempostd"
# Started in this order, stopped in the reverse: delivery is up before intake.
DAEMONS: tuple[str, ...] = (POSTD, PROBD)

READY_TIMEOUT = 30.0
# telempostd finishes the POST in flight on SIGTERM (request_timeout is at most 3600 s,
# 10 s by default); after this it is killed.
STOP_TIMEOUT = 20.0
KILL_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
# What each daemon does between SIGTERM and its exit.
STOPPING_WORK = {
    "telemprobd": "commits and acknowledges the records being received",
    "telempostd": "finishes the requests in flight to the collector",
}
LOG_TAIL_BYTES = 4096
LOCK_FILE = "telemctl.lock"

# Set by systemd for the processes it starts; a daemon seeing them believes it is a unit.
SYSTEMD_ENV = (
    "INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
    "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC",
)


class SuperviseError(TelemetryError):
    pass


class NotInstalled(SuperviseError):
    def __init__(self, name: str):
        super().__init__(
            f"{name} is not installed (no module {module_of(name)}); reinstall telemetrics-client"
        )


class StartFailed(SuperviseError):
    pass


class DaemonState(enum.Enum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    FAILED = "failed"  # its pid file remains but the process is gone: it died unasked


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    state: DaemonState
    pid: int | None
    pid_file: str
    log_file: str


class StartOutcome(enum.Enum):
    STARTED = "started"
    ALREADY = "already running"
    UNCONFIRMED = "started, readiness not confirmed"


@dataclass(frozen=True)
class StartResult:
    name: str
    outcome: StartOutcome
    pid: int


class StopOutcome(enum.Enum):
    STOPPED = "stopped"
    KILLED = "killed"
    NOT_RUNNING = "not running"


@dataclass(frozen=True)
class StopResult:
    name: str
    outcome: StopOutcome
    pid: int | None


class ReloadOutcome(enum.Enum):
    SIGNALLED = "asked to reload (SIGHUP)"
    NOT_RUNNING = "not running"


@dataclass(frozen=True)
class ReloadResult:
    name: str
    outcome: ReloadOutcome
    pid: int | None


# --- pure rules ---------------------------------------------------------------------------

def module_of(name: str) -> str:
    return MODULES[name]


def parse_pid(data: bytes) -> int | None:
    """The pid of a pid file: one decimal number, optional surrounding whitespace."""
    text = data.strip()
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if 0 < pid < 2**31 else None


def is_daemon_cmdline(cmdline: Sequence[str], name: str) -> bool:
    """`python -m telemetry.daemons.<name> …` or the console script `<name> …`."""
    module = module_of(name)
    for i, arg in enumerate(cmdline[:4]):
        if arg == module and i > 0 and cmdline[i - 1] == "-m":
            return True
        if arg == "-m" + module:
            return True
    return any(os.path.basename(arg) == name for arg in cmdline[:2])


def state_of(pid_file_present: bool, alive: bool, written_before_boot: bool = False) -> DaemonState:
    """A pid file left by a daemon that died means failed, unless the machine rebooted since."""
    if alive:
        return DaemonState.ACTIVE
    return DaemonState.FAILED if pid_file_present and not written_before_boot else DaemonState.INACTIVE


def child_environment(environ: Mapping[str, str], notify_socket: str, log_file: str = "") -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in SYSTEMD_ENV}
    env[MODE_ENV] = Mode.USER.value
    env["NOTIFY_SOCKET"] = notify_socket
    if log_file:
        env[LOG_FILE_ENV] = log_file  # the daemon timestamps and rotates it
    return env


def is_console_script(path: str) -> bool:
    """A Python entry-point script (#! … python …), not another program of that name (the
    original's telemprobd is an ELF binary)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def console_script(name: str, search: Sequence[str]) -> str | None:
    """The installed `name` script in one of the directories `search`, or None."""
    for directory in search:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK) and is_console_script(path):
            return path
    return None


def is_ready_message(message: bytes) -> bool:
    return b"READY=1" in message.split(b"\n")


# --- process facts ------------------------------------------------------------------------

def live_daemon(pid: int | None, name: str) -> psutil.Process | None:
    """The process behind `pid` if it is our running daemon `name`, else None."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if proc.uids().real != os.getuid():
            return None
        if not is_daemon_cmdline(proc.cmdline(), name):
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(proc: psutil.Process, timeout: float, on_slow: Callable[[], None] | None = None) -> bool:
    """Wait for the process to exit; a zombie counts as gone (its parent is not us).
    `on_slow` is called once if it takes longer than SLOW_NOTICE."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if on_slow is not None and time.monotonic() - start >= SLOW_NOTICE:
            on_slow()
            on_slow = None
        try:
            proc.wait(timeout=POLL_INTERVAL)
            return True
        except psutil.TimeoutExpired:
            pass
        except psutil.NoSuchProcess:
            return True
        if _gone(proc):
            return True
        if time.monotonic() >= deadline:
            return False


def _listening_on(proc: psutil.Process, path: str) -> bool:
    # net_connections() is psutil 6's name; Debian 12's psutil (5.9) calls it connections().
    connections = getattr(proc, "net_connections", None) or proc.connections
    try:
        return any(c.laddr == path for c in connections(kind="unix"))
    except (psutil.Error, OSError):
        return False


def _why(e: OSError) -> str:
    """An OSError as one line: the file it is about and the reason."""
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)


def log_tail(path: str, limit: int = LOG_TAIL_BYTES) -> str:
    """The last non-empty line of a log file, for an error message."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            data = f.read()
    except OSError:
        return ""
    lines = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- the supervisor -----------------------------------------------------------------------

class Supervisor:
    def __init__(self, paths: Paths, *, config_file: str | None = None, socket_path: str | None = None,
                 ready_timeout: float = READY_TIMEOUT, stop_timeout: float = STOP_TIMEOUT):
        self.paths = paths
        self.config_file = config_file
        self.socket_path = socket_path or paths.socket_path
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout

    def pid_file(self, name: str) -> str:
        return os.path.join(self.paths.run_dir, f"{name}.pid")

    def log_file(self, name: str) -> str:
        return os.path.join(self.paths.state_dir, f"{name}.log")

    def _read_pid(self, name: str) -> tuple[bool, int | None]:
        try:
            fd = os.open(self.pid_file(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False, None
        except OSError:
            return True, None
        try:
            return True, parse_pid(os.read(fd, 64))
        finally:
            os.close(fd)

    def _remove_pid_file(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_file(name))

    def _written_before_boot(self, name: str) -> bool:
        try:
            return os.lstat(self.pid_file(name)).st_mtime < psutil.boot_time()
        except OSError:
            return False

    def status(self, name: str) -> DaemonStatus:
        present, pid = self._read_pid(name)
        proc = live_daemon(pid, name)
        stale = present and proc is None and self._written_before_boot(name)
        return DaemonStatus(name, state_of(present, proc is not None, stale), pid if proc else None,
                            self.pid_file(name), self.log_file(name))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise concurrent telemctl runs of the same user."""
        try:
            ensure_dir(self.paths.run_dir)
            fd = os.open(os.path.join(self.paths.run_dir, LOCK_FILE),
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SuperviseError(f"cannot take the lock of the user-mode daemons: {_why(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def check_installed(self, names: Sequence[str] = DAEMONS) -> None:
        for name in names:
            try:
                found = importlib.util.find_spec(module_of(name)) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise NotInstalled(name)

    def argv(self, name: str) -> list[str]:
        """The installed console script, found beside this interpreter or beside telemctl,
        so that `ps`, `top` and `pgrep` show the daemon by its name (the kernel names a
        process after the script it executes); else `python -m module`."""
        search = [os.path.dirname(sys.executable), os.path.dirname(os.path.abspath(sys.argv[0]))]
        script = console_script(name, search)
        argv = [script] if script else [sys.executable, "-m", module_of(name)]
        if self.config_file:
            argv += ["-f", self.config_file]
        return argv

    def _open_log(self, name: str) -> int:
        """For what the daemon prints before its logging is set up; it then takes the file
        over (timestamps, rotation: telemetry.logfile.RotatingLog)."""
        ensure_dir(self.paths.state_dir)
        return os.open(self.log_file(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                       LOG_MODE)

    def start(self, name: str, say: Callable[[str], None] | None = None) -> StartResult:
        current = self.status(name)
        if current.state is DaemonState.ACTIVE and current.pid is not None:
            return StartResult(name, StartOutcome.ALREADY, current.pid)
        self.check_installed((name,))
        try:
            ensure_dir(self.paths.run_dir)
            log_fd = self._open_log(name)
        except OSError as e:
            raise StartFailed(f"cannot start {name}: {_why(e)}") from None
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            address = f"telemctl/{os.getpid()}/{name}/{secrets.token_hex(8)}"
            notify.bind("\0" + address)
            notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            try:
                child = subprocess.Popen(
                    self.argv(name), cwd="/", env=child_environment(os.environ, "@" + address, self.log_file(name)),
                    stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:
                raise StartFailed(f"cannot run {name}: {e.strerror or e}") from None
            try:
                atomic_write(self.pid_file(name), f"{child.pid}\n".encode(), 0o644)
            except (OSError, TelemetryError) as e:
                # A daemon without its pid file could be neither seen nor stopped.
                child.kill()
                child.wait()
                raise StartFailed(f"{name} stopped: cannot write its pid file: "
                                  f"{_why(e) if isinstance(e, OSError) else e}") from None
            outcome = self._wait_ready(name, child, notify, say)
        finally:
            notify.close()
            os.close(log_fd)
        return StartResult(name, outcome, child.pid)

    def _wait_ready(self, name: str, child: subprocess.Popen, notify: socket.socket,
                    say: Callable[[str], None] | None = None) -> StartOutcome:
        started = time.monotonic()
        deadline = started + self.ready_timeout
        proc = psutil.Process(child.pid)
        while True:
            if say is not None and time.monotonic() - started >= SLOW_NOTICE:
                say(f"{name} (pid {child.pid}): waiting for it to report ready "
                    f"(up to {self.ready_timeout:.0f} s)")
                say = None
            status = child.poll()
            if status is not None:
                self._remove_pid_file(name)
                why = log_tail(self.log_file(name))
                raise StartFailed(
                    f"{name} exited at start with status {status}"
                    + (f": {why}" if why else "")
                    + f" (log: {self.log_file(name)})"
                )
            if self._notified_ready(notify, child.pid):
                return StartOutcome.STARTED
            if name == PROBD and _listening_on(proc, self.socket_path):
                return StartOutcome.STARTED
            if time.monotonic() >= deadline:
                return StartOutcome.UNCONFIRMED

    @staticmethod
    def _notified_ready(notify: socket.socket, pid: int) -> bool:
        creds_size = struct.calcsize("3i")
        notify.settimeout(POLL_INTERVAL)
        while True:
            try:
                data, ancillary, _flags, _addr = notify.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except (TimeoutError, BlockingIOError):
                return False
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    return False
                raise
            sender = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= creds_size:
                    sender = struct.unpack("3i", payload[:creds_size])[0]
            if sender == pid and is_ready_message(data):
                return True
            notify.settimeout(0)

    def stop(self, name: str, say: Callable[[str], None] | None = None) -> StopResult:
        """SIGTERM, then SIGKILL after stop_timeout; `say` hears what is waited for when
        that takes more than a second."""
        present, pid = self._read_pid(name)
        proc = live_daemon(pid, name)
        if proc is None:
            if present:
                self._remove_pid_file(name)
            return StopResult(name, StopOutcome.NOT_RUNNING, None)
        outcome = StopOutcome.STOPPED
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass

        def slow() -> None:
            if say is not None:
                say(f"{name} (pid {proc.pid}): waiting for it to exit; it "
                    f"{STOPPING_WORK.get(name, 'finishes its work')} (killed after {self.stop_timeout:.0f} s)")

        if not _wait_gone(proc, self.stop_timeout, slow):
            outcome = StopOutcome.KILLED
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
            if not _wait_gone(proc, KILL_TIMEOUT):
                raise SuperviseError(f"{name} (pid {proc.pid}) did not exit even after SIGKILL")
        self._remove_pid_file(name)
        return StopResult(name, outcome, proc.pid)

    def reload(self, name: str) -> ReloadResult:
        """SIGHUP to the running daemon: it reads the config again (a bad file is logged and
        its current settings kept)."""
        proc = live_daemon(self._read_pid(name)[1], name)
        if proc is None:
            return ReloadResult(name, ReloadOutcome.NOT_RUNNING, None)
        try:
            proc.send_signal(signal.SIGHUP)
        except psutil.NoSuchProcess:
            return ReloadResult(name, ReloadOutcome.NOT_RUNNING, None)
        return ReloadResult(name, ReloadOutcome.SIGNALLED, proc.pid)
