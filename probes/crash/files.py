"""Opening the files a crashed process had mapped, and their debug files, without being led
astray: no symlinks, no FIFOs or devices, no files owned by a stranger, and for a process
in another mount namespace, paths resolved inside that process's root (openat2
RESOLVE_IN_ROOT) instead of on the host, where the same name may be a different file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from telemetry.errors import TelemetryError

DEFAULT_DEBUG_DIRS = ("/usr/lib/debug",)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
SYS_openat2 = 437  # the same number on every architecture
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class FileRefused(TelemetryError):
    """A mapped file was not opened; the message says why (shown in logs, not payloads)."""


@dataclass(frozen=True)
class FileAccess:
    """Where and how files are opened for one crash.

    root_fd: a directory fd of the crashed process's root when it lives in another mount
    namespace (None: the host's paths are the process's paths).  trusted_uids: owners a
    mapped file may have.  use_host_paths=False refuses everything but debug files (a
    foreign namespace whose root could not be opened).  require_build_id: open a mapped
    file only if the core recorded its build id to check it against (the process's
    namespace is not known, so the same path on the host proves nothing).
    """

    trusted_uids: frozenset[int] = frozenset({0})
    debug_dirs: tuple[str, ...] = DEFAULT_DEBUG_DIRS
    root_fd: int | None = None
    use_host_paths: bool = True
    require_build_id: bool = False

    def open_mapped(self, path: str) -> BinaryIO:
        if not path.startswith("/"):
            raise FileRefused(f"{path!r} is not an absolute path")
        if path.endswith(" (deleted)"):
            raise FileRefused(f"{path} was deleted after it was mapped")
        try:
            if self.root_fd is not None:
                fd = _openat2(self.root_fd, path, _OPEN_FLAGS, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            elif self.use_host_paths:
                fd = os.open(path, _OPEN_FLAGS)
            else:
                raise FileRefused(f"{path}: the process's root is not reachable")
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise FileRefused(f"{path} is a symbolic link") from None
            raise FileRefused(f"{path}: {e.strerror}") from None
        return self._checked(fd, path, self.trusted_uids)

    def open_debug(self, path: str) -> BinaryIO:
        """A file under a debug directory: links there are the distribution's own."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise FileRefused(f"{path}: {e.strerror}") from None
        return self._checked(fd, path, frozenset({0, os.geteuid()}))

    def debug_candidates(self, build_id: bytes | None, module_path: str, debuglink: str | None) -> list[str]:
        """Where separate debug info may be, in the order gdb and elfutils look."""
        out = []
        if build_id and len(build_id) >= 2:
            hexid = build_id.hex()
            out += [os.path.join(d, ".build-id", hexid[:2], hexid[2:] + ".debug") for d in self.debug_dirs]
        if debuglink and "/" not in debuglink and self.root_fd is None:
            directory = os.path.dirname(module_path)
            out += [os.path.join(directory, debuglink), os.path.join(directory, ".debug", debuglink)]
            out += [os.path.join(d + directory, debuglink) for d in self.debug_dirs]
        return out

    @staticmethod
    def _checked(fd: int, path: str, owners: frozenset[int]) -> BinaryIO:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileRefused(f"{path} is not a regular file")
            if st.st_uid not in owners:
                raise FileRefused(f"{path} is owned by uid {st.st_uid}, which is not trusted here")
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")


def open_core(path: str, *, pipe_ok: bool = False, owners: frozenset[int] | None = None) -> int:
    """A blocking fd of the core at `path`: a regular file (or a pipe if `pipe_ok`), owned by
    one of `owners` when given.  Never opened through a symlink, and the open itself does
    not block (a FIFO without a writer); FileRefused says why a file was refused."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise FileRefused("it is a symbolic link" if e.errno == errno.ELOOP else e.strerror) from None
    st = os.fstat(fd)
    why = None
    if not (stat.S_ISREG(st.st_mode) or (pipe_ok and stat.S_ISFIFO(st.st_mode))):
        why = "not a regular file or a pipe" if pipe_ok else "not a regular file"
    elif owners is not None and st.st_uid not in owners:
        why = f"owned by uid {st.st_uid}, which is not trusted here"
    if why is not None:
        os.close(fd)
        raise FileRefused(why)
    os.set_blocking(fd, True)
    return fd


class _OpenHow(ctypes.Structure):
    """struct open_how of openat2(2)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = None


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(SYS_openat2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd
