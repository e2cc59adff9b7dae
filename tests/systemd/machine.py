"""A Debian 12 machine booted with systemd as PID 1 in a container on this host.

The tree is made once with mmdebstrap and kept in a cache keyed by everything that shapes
it (suite, mirrors, package list); a run boots it with `systemd-nspawn --boot
--volatile=overlay`, so every run starts from the same pristine tree and writes only to a
tmpfs.  The container has its own network namespace (only its loopback: its collector
takes no port of the host) and cannot write /proc/sys, so the host's kernel.core_pattern
and other settings stay as they are.  Commands run in it with nsenter into all of its
namespaces, as root.

Anything that stops the machine from being made or booted raises `Unavailable` with the
reason, which the suite turns into a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# systemd as PID 1 and what the tests drive it with, systemd-coredump and zstd (its core
# compression) for crashprobe's journal mode, and the packages' Debian dependencies, so that
# the .debs install without a mirror.
BASE_PACKAGES = ("systemd", "dbus", "systemd-coredump", "zstd", "python3")
# A tree older than this is made again, so that it follows the suite's updates.
TREE_MAX_AGE = 30 * 86400
# Trees of other keys not used for this long are removed from the cache.
STALE_TREE_AGE = 14 * 86400
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """The container cannot be made or booted here; the message says why."""


def cache_root() -> Path:
    explicit = os.environ.get("TELEMETRY_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "telemetrics-tests"


def check_host() -> None:
    """The prerequisites that need neither the network nor time; Unavailable if one is missing."""
    if os.geteuid() != 0:
        raise Unavailable("booting a container with systemd-nspawn needs root")
    for tool, package in (("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap"),
                          ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (Debian package {package})")
    if not Path("/sys/fs/cgroup").is_dir():
        raise Unavailable("no cgroup file system at /sys/fs/cgroup for the container's systemd")


# --- the tree -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TreeSpec:
    packages: tuple[str, ...]
    suite: str = SUITE
    mirrors: tuple[str, ...] = MIRRORS
    variant: str = "minbase"

    @property
    def key(self) -> str:
        data = json.dumps([self.suite, self.variant, list(self.mirrors), sorted(set(self.packages))])
        return hashlib.sha256(data.encode()).hexdigest()[:16]


def cached_tree(spec: TreeSpec, root: Path | None = None, log: Path | None = None) -> Path:
    """The tree of `spec` from the cache, made first if it is missing or too old."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    tree = root / spec.key
    stamp = root / f"{spec.key}.stamp"
    with open(root / f"{spec.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run making the same tree: wait for it
        fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < TREE_MAX_AGE
        if not (fresh and tree.is_dir()):
            _make_tree(spec, tree, log or root / f"{spec.key}.log")
            stamp.write_text(json.dumps({"packages": sorted(spec.packages), "made": time.time()}))
        os.utime(root / f"{spec.key}.lock")  # marks the tree as used
    _prune(root, keep=spec.key)
    return tree


def _make_tree(spec: TreeSpec, tree: Path, log: Path) -> None:
    building = tree.with_name(f"{tree.name}.new")
    shutil.rmtree(building, ignore_errors=True)
    argv = ["mmdebstrap", f"--variant={spec.variant}", "--include=" + ",".join(sorted(set(spec.packages))),
            spec.suite, str(building), *spec.mirrors]
    with open(log, "wb") as out:
        try:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=900)
        except subprocess.TimeoutExpired:
            done = None
    if done is None or done.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise Unavailable(f"mmdebstrap could not make the {spec.suite} tree (is the Debian mirror "
                          f"reachable?): {' / '.join(tail)} (full log: {log})")
    shutil.rmtree(tree, ignore_errors=True)
    building.rename(tree)


def _prune(root: Path, keep: str) -> None:
    now = time.time()
    for lock in root.glob("*.lock"):
        key = lock.stem
        if key == keep or now - lock.stat().st_mtime < STALE_TREE_AGE:
            continue
        shutil.rmtree(root / key, ignore_errors=True)
        for suffix in (".stamp", ".log", ".lock"):
            (root / f"{key}{suffix}").unlink(missing_ok=True)


# --- the booted machine ---------------------------------------------------------------------

class Machine:
    """One booted container.  `run` executes a command in it as root."""

    def __init__(self, tree: Path, name: str, binds: Sequence[tuple[Path, str]] = (), log: Path | None = None):
        self.tree, self.name, self.binds = tree, name, tuple(binds)
        self.log = log or Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".console")[1])
        self.nspawn: subprocess.Popen | None = None
        self.leader = 0  # the container's PID 1, as the host sees it

    def boot(self, timeout: float = 120) -> None:
        argv = ["systemd-nspawn", "--quiet", "-D", str(self.tree), "--boot", "--register=no", "--keep-unit",
                "--private-network", "--volatile=overlay", f"--machine={self.name}", "--console=read-only"]
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.binds]
        with open(self.log, "wb") as out:
            self.nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.nspawn.poll() is not None:
                raise Unavailable(f"systemd-nspawn exited with {self.nspawn.returncode} while booting: "
                                  f"{self._console_tail()}")
            if time.monotonic() > deadline:
                self.shutdown()
                raise Unavailable(f"the container's systemd did not start within {timeout:.0f} s")
            self.leader = self._find_leader()
            time.sleep(0.1)
        # Until its manager answers (right after it starts, systemctl cannot connect yet).
        state = ""
        while state not in ("running", "degraded", "maintenance", "stopping"):
            if time.monotonic() > deadline or self.nspawn.poll() is not None:
                self.shutdown()
                raise Unavailable(f"the container's systemd did not come up (state {state!r}): "
                                  f"{self._console_tail()}")
            left = max(1.0, deadline - time.monotonic())
            state = self.run("systemctl", "is-system-running", "--wait", timeout=left).stdout.strip()
            if state not in ("running", "degraded"):
                time.sleep(0.2)
        if state not in ("running", "degraded"):
            self.shutdown()
            raise Unavailable(f"the container's systemd did not come up (state {state!r}): {self._console_tail()}")
        self.boot_state = state

    def _find_leader(self) -> int:
        """The container's init: the child of systemd-nspawn that runs systemd."""
        assert self.nspawn is not None
        for pid in _children(self.nspawn.pid):
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if exe.endswith("/systemd") and self._in_new_pid_ns(pid):
                return pid
        return 0

    @staticmethod
    def _in_new_pid_ns(pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        except OSError:
            return False

    def _console_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def run(self, *argv: str, input: str | bytes | None = None, timeout: float = 120, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run argv in the container as root with a clean environment; text output."""
        base = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i",
               *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()), *argv]
        if isinstance(input, bytes):  # output as bytes too
            done = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
        else:
            done = subprocess.run(cmd, input=input, capture_output=True, text=True, errors="replace",
                                  timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited with {done.returncode}: "
                                 f"{_text(done.stderr).strip() or _text(done.stdout).strip()}")
        return done

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run("sh", "-ec", script, **kw)

    def host_pid(self, pid_inside: int) -> int:
        """The host's pid of a process known by its pid inside the container."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    if len(ids) >= 2 and ids[-1] == str(pid_inside) and self._same_pid_ns(int(entry.name)):
                        return int(entry.name)
        raise LookupError(f"no process {pid_inside} in the container")

    def _same_pid_ns(self, pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{self.leader}/ns/pid")
        except OSError:
            return False

    def shutdown(self, timeout: float = 60) -> None:
        """Power the container off (nspawn turns SIGTERM into a clean shutdown), killing it if
        it does not stop in time."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.nspawn.pid, signal.SIGKILL)
            self.nspawn.wait(10)


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


@contextlib.contextmanager
def booted(tree: Path, name: str, binds: Sequence[tuple[Path, str]] = (), log: Path | None = None
           ) -> Iterator[Machine]:
    machine = Machine(tree, name, binds, log)
    try:
        machine.boot()
        yield machine
    finally:
        machine.shutdown()
