"""Who crashed, from the kernel's own words: /proc/PID read once through one directory
handle, checked against the pidfd (or the process start time) so a recycled pid is
caught, and compared with our own namespaces.

Nothing here believes the process's name (comm, %e) or anything the process could have
written; only kernel facts are used for decisions: ids, dump mode, namespaces, the
executable link.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from telemetry.errors import TelemetryError

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
START_SLACK = 2.0  # seconds between the kernel's dump time (%t) and what stat rounds to


class IdentityError(TelemetryError):
    """/proc does not describe the crashed process (gone, recycled, or unreadable)."""


@dataclass(frozen=True)
class ProcessFacts:
    pid: int
    exe: str | None  # /proc/PID/exe, in the process's own mount namespace
    uids: tuple[int, ...]  # real, effective, saved, filesystem
    gids: tuple[int, ...]
    foreign_mount_ns: bool

    @property
    def credentials_changed(self) -> bool:
        return credentials_changed(self.uids, self.gids)


def credentials_changed(uids: tuple[int, ...], gids: tuple[int, ...]) -> bool:
    """setuid/setgid (the Uid:/Gid: lines of /proc/PID/status differ within themselves):
    the kernel would mark the dump as unsafe (dump mode 2)."""
    return len(set(uids)) > 1 or len(set(gids)) > 1


def parse_status(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_ids(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split())
    except ValueError:
        return ()


def parse_start_ticks(stat_text: str) -> int | None:
    """Field 22 of /proc/PID/stat; the name in field 2 may hold spaces and parentheses."""
    close = stat_text.rfind(")")
    if close < 0:
        return None
    fields = stat_text[close + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def pidfd_pid(pidfd: int) -> int | None:
    """The pid a pidfd refers to, from /proc/self/fdinfo (-1 once the process is reaped)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            info = parse_status(f.read(4096).decode("ascii", "replace"))
        return int(info["Pid"])
    except (OSError, KeyError, ValueError):
        return None


def read_process(pid: int, pidfd: int | None = None, dump_time: int | None = None) -> tuple[ProcessFacts, int]:
    """Facts about `pid` and an open O_PATH fd of its root directory (the caller closes it)."""
    if pid <= 0:
        raise IdentityError(f"pid {pid} is not a process id")
    if pidfd is not None and pidfd_pid(pidfd) != pid:
        raise IdentityError(f"pidfd {pidfd} does not refer to pid {pid}")
    try:
        dirfd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise IdentityError(f"/proc/{pid}: {e.strerror}") from None
    root_fd = -1
    try:
        status = parse_status(_read_at(dirfd, "status"))
        start_ticks = parse_start_ticks(_read_at(dirfd, "stat"))
        try:
            exe = os.readlink("exe", dir_fd=dirfd)
        except OSError:
            exe = None
        foreign_mnt = _foreign(dirfd, "mnt")
        try:
            root_fd = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            root_fd = -1
        btime = boot_time()
        start = btime + start_ticks / CLK_TCK if btime is not None and start_ticks is not None else None
        # The facts belong to `pid` only if it still is the process that crashed.
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, 0)
            except ProcessLookupError:
                raise IdentityError(f"pid {pid} exited before it could be identified") from None
            except PermissionError:
                pass  # alive, merely not ours to signal
        elif dump_time is not None and start is not None:
            if start > dump_time + START_SLACK:
                raise IdentityError(f"pid {pid} started after the crash: the pid was reused")
        else:
            raise IdentityError(f"pid {pid} cannot be tied to the crash (no pidfd, no dump time)")
        facts = ProcessFacts(
            pid=pid,
            exe=exe,
            uids=parse_ids(status.get("Uid", "")),
            gids=parse_ids(status.get("Gid", "")),
            foreign_mount_ns=foreign_mnt,
        )
        return facts, root_fd
    except BaseException:
        if root_fd >= 0:
            os.close(root_fd)
        raise
    finally:
        os.close(dirfd)


def _read_at(dirfd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as e:
        raise IdentityError(f"cannot read {name} of the crashed process: {e.strerror}") from None
    try:
        return os.read(fd, 1 << 16).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _foreign(dirfd: int, ns: str) -> bool:
    try:
        theirs = os.readlink(f"ns/{ns}", dir_fd=dirfd)
        ours = os.readlink(f"/proc/self/ns/{ns}")
    except OSError:
        return True  # not knowing is treated as foreign: the host's paths are not trusted
    return theirs != ours
