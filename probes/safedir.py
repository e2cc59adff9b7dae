"""Files of one directory, reached only through the directory's descriptor.

pstoreclean runs as root over a directory the telemetry user owns: every name is opened
relative to a directory fd with O_NOFOLLOW, only regular files are read (with a cap),
created with O_EXCL and given their mode with fchmod, so a planted symlink or FIFO is
refused instead of followed.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from telemetry.errors import TelemetryError


class UnsafeEntry(TelemetryError):
    """An entry that is not a regular file (a symlink, a FIFO, a directory …)."""


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes
    truncated: bool


class SafeDir:
    def __init__(self, path: str, *, create: bool = False, mode: int = 0o750):
        self.path = path
        if create:
            os.makedirs(path, mode=mode, exist_ok=True)
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def read(self, name: str, limit: int) -> Entry:
        """At most `limit` bytes of a regular file; UnsafeEntry for anything else."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeEntry(f"{os.path.join(self.path, name)} is a symbolic link; not followed") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeEntry(f"{os.path.join(self.path, name)} is not a regular file")
            chunks: list[bytes] = []
            size = 0
            while size <= limit:
                chunk = os.read(fd, min(1 << 16, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        return Entry(name, data[:limit], len(data) > limit)

    def create(self, name: str, data: bytes, mode: int) -> None:
        """A new file (never an existing name), written, fsynced, then given `mode`."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=self.fd)
            raise
        os.close(fd)
        os.fsync(self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)
