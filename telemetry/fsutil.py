"""File writes that survive a crash and refuse planted symlinks.

Every file the programs write goes through `atomic_write` (temp file in the same
directory, fsync, rename, fsync of the directory), so a reader sees the old content or
the new, never half of it.  A kill -9 leaves at most a temp file named after the file and
the writer's pid; the next writer with that pid replaces it (pids are reused, notably
from boot to boot), and `clean_temp` removes such files from a directory.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import TelemetryError

TEMP_PREFIX = ".tmp-"


class UnsafePathError(TelemetryError):
    """A path is a symlink or belongs to someone it must not belong to."""


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{os.path.basename(path)}.{os.getpid()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        # No live process but this one has our pid: a dead one's leftover (no program
        # writes one file from two threads).
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        if os.path.islink(path):
            raise UnsafePathError(f"{path} is a symbolic link; refusing to replace it")
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(directory)


def read_small(path: str, limit: int = 4096) -> bytes:
    """Read at most `limit` bytes of a regular file, never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(f"{path} is a symbolic link; refusing to read it") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{path} is not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)


def ensure_dir(path: str, mode: int = 0o700) -> None:
    """Create a private directory (and parents); an existing symlink there is refused."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path} is a symbolic link; refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} exists and is not a directory")


def clean_temp(directory: str) -> int:
    """Remove temp files a crash left behind; returns how many."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if name.startswith(TEMP_PREFIX):
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed
