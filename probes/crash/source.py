"""Feeding the core reader from a file descriptor: the kernel's pipe, a core file, or a
decompressor's output.  A regular file is read where it is needed (pread); on a stream,
gaps the reader does not want are skipped without being stored: splice into /dev/null on
a pipe, reads into one reused buffer otherwise.
"""

from __future__ import annotations

import errno
import os
import stat

from .corefile import CoreDump, CoreReader, ReadLimits, read_seekable

SKIP_CHUNK = 1 << 20


class FdSource:
    """Forward-only reading of an fd, counting the bytes it moved past."""

    def __init__(self, fd: int):
        self.fd = fd
        self.position = 0
        st = os.fstat(fd)
        self._seekable = stat.S_ISREG(st.st_mode)
        self._pipe = stat.S_ISFIFO(st.st_mode)
        if self._seekable:
            self.position = os.lseek(fd, 0, os.SEEK_CUR)
        if self._pipe:
            _widen_pipe(fd)
        self._null: int | None = None
        self._scratch: bytearray | None = None

    def close(self) -> None:
        if self._null is not None:
            os.close(self._null)
            self._null = None

    def read(self, n: int) -> bytes:
        parts = []
        want = n
        while want > 0:
            try:
                chunk = os.read(self.fd, min(want, SKIP_CHUNK))
            except InterruptedError:
                continue
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        data = b"".join(parts)
        self.position += len(data)
        return data

    def skip(self, n: int) -> int:
        """Move `n` bytes forward; fewer at end of input."""
        if n <= 0:
            return 0
        if self._seekable:
            end = os.fstat(self.fd).st_size
            target = min(self.position + n, max(end, self.position))
            os.lseek(self.fd, target, os.SEEK_SET)
            moved = target - self.position
            self.position = target
            return moved
        moved = self._splice(n) if self._pipe else 0
        while moved < n:
            got = self._discard(n - moved)
            if got == 0:
                break
            moved += got
        return moved

    def _splice(self, n: int) -> int:
        if not hasattr(os, "splice"):
            return 0
        if self._null is None:
            self._null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        moved = 0
        while moved < n:
            try:
                got = os.splice(self.fd, self._null, min(n - moved, 1 << 30))
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    self._pipe = False
                    break
                raise
            if got == 0:
                break
            moved += got
            self.position += got
        return moved

    def _discard(self, n: int) -> int:
        if self._scratch is None:
            self._scratch = bytearray(SKIP_CHUNK)
        view = memoryview(self._scratch)[: min(n, SKIP_CHUNK)]
        while True:
            try:
                got = os.readv(self.fd, [view])
                break
            except InterruptedError:
                continue
        self.position += got
        return got


PIPE_SIZE = 1 << 20


def _widen_pipe(fd: int) -> None:
    """A larger pipe buffer: fewer wake-ups of the writer and of us per gigabyte skipped."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass  # over /proc/sys/fs/pipe-max-size, or not Linux: the default size works too


def pread_all(fd: int, offset: int, n: int) -> bytes:
    """`n` bytes at `offset`, fewer only at the end of the file."""
    parts = []
    while n > 0:
        try:
            chunk = os.pread(fd, min(n, SKIP_CHUNK), offset)
        except InterruptedError:
            continue
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        n -= len(chunk)
    return b"".join(parts)


def read_core(fd: int, limits: ReadLimits | None = None) -> CoreDump:
    """The core on `fd`: a regular file read where needed (its memory stays readable through
    `fd` until the caller closes it), anything else streamed; I/O errors end the reading
    like a truncation."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        try:
            return read_seekable(lambda offset, n: pread_all(fd, offset, n), st.st_size, limits)
        except OSError as e:
            reader = CoreReader(limits)
            reader.abort(f"reading the core failed: {e.strerror or e}")
            return reader.result()
    reader = CoreReader(limits)
    source = FdSource(fd)
    try:
        while (req := reader.next_request()) is not None:
            try:
                if req.offset > source.position:
                    source.skip(req.offset - source.position)
                data = source.read(req.length) if source.position == req.offset else b""
            except OSError as e:
                reader.abort(f"reading the core failed: {e.strerror or e}")
                break
            reader.feed(data, reached=min(source.position, req.offset) if not data else None)
    finally:
        source.close()
    return reader.result()
