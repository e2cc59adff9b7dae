"""Being told, without polling, that telemprobd committed records: inotify on the spool
directory, filtered to the queue's wake-up file.

The standard library has no inotify binding, so this calls libc through ctypes
(inotify_init1, inotify_add_watch); reading is a plain os.read on the descriptor.
`parse_events` is the pure half: bytes in, events out.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from dataclasses import dataclass

from telemetry.errors import TelemetryError

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("=iIII")
READ_SIZE = 64 * 1024


class InotifyError(TelemetryError):
    pass


@dataclass(frozen=True)
class Event:
    """One inotify event as the kernel wrote it (struct inotify_event)."""
    wd: int
    mask: int
    cookie: int
    name: str


def parse_events(data: bytes) -> list[Event]:
    """Events in a read buffer; a truncated tail is ignored (the kernel never splits one)."""
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        if start + length > len(data):
            break
        raw = data[start : start + length].split(b"\0", 1)[0]
        events.append(Event(wd, mask, cookie, os.fsdecode(raw)))
        offset = start + length
    return events


def _libc() -> ctypes.CDLL:
    # The process's own symbol table already holds libc: no library search (ctypes.util
    # would run ldconfig for it).
    return ctypes.CDLL(None, use_errno=True)


class FileWatch:
    """Watches one directory for a file named `name` being written and closed, or renamed
    into place. `fileno()` goes into a selector; `read()` tells whether it happened."""

    MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR

    def __init__(self, directory: str, name: str):
        self.directory = directory
        self.name = name
        libc = _libc()
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise InotifyError(f"cannot start watching {directory}: inotify_init1: {os.strerror(e)}")
        self.fd = fd
        try:
            self._watch()
        except BaseException:
            os.close(fd)
            raise

    def _watch(self) -> None:
        if self._add_watch(self.fd, os.fsencode(self.directory), self.MASK) < 0:
            e = ctypes.get_errno()
            raise InotifyError(f"cannot watch {self.directory}: {os.strerror(e)}")

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bool:
        """Drain pending events; True if the file changed (or events were lost)."""
        hit = False
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return hit
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return hit
            for ev in parse_events(data):
                if ev.mask & IN_Q_OVERFLOW:
                    hit = True
                elif ev.mask & IN_IGNORED:
                    # The directory went away (or was replaced): watch the one there now,
                    # if any; without one, only timed passes look at the queue.
                    hit = True
                    with contextlib.suppress(InotifyError):
                        self._watch()
                elif ev.name == self.name and ev.mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                    hit = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
