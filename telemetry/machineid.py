"""The machine id telemprobd writes into every record, rotated every 3 days.

Rules of the original: the id is 32 lowercase hex characters (the event id generator),
kept in a file without a newline; it is checked at start-up and at least hourly after,
and regenerated when missing or older than 259200 s (by mtime).  An admin can pin an id
with the static override file, read once at start-up.  Unlike the original the file is
replaced atomically, so a crash never leaves an empty id.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable

from .fsutil import UnsafePathError, atomic_write, ensure_dir, read_small
from .limits import MACHINE_ID_LEN
from .paths import Mode, Paths
from .record import new_event_id

log = logging.getLogger(__name__)

ROTATE_AFTER = 259200
CHECK_INTERVAL = 3600
FALLBACK_ID = "0"
_OVERRIDE_OK = re.compile(r"[\x21-\x7e]{1,32}")


def needs_rotation(mtime: float | None, now: float) -> bool:
    return mtime is None or now - mtime > ROTATE_AFTER


def read_override(path: str) -> str | None:
    """First 32 bytes, cut at the first newline; empty or missing means no override."""
    try:
        raw = read_small(path, MACHINE_ID_LEN)
    except FileNotFoundError:
        return None
    except (OSError, UnsafePathError) as e:
        log.warning("ignoring static machine id %s: %s", path, e)
        return None
    value = raw.split(b"\n", 1)[0].decode("ascii", errors="replace")
    if not value:
        return None
    if not _OVERRIDE_OK.fullmatch(value):
        log.warning("ignoring static machine id %s: it must be printable ASCII without spaces", path)
        return None
    return value


class MachineId:
    def __init__(self, paths: Paths, clock: Callable[[], float] = time.time):
        self._paths = paths
        self._clock = clock
        self._override = read_override(paths.static_machine_id_file)
        self._value = FALLBACK_ID
        self._checked: float | None = None

    @property
    def override(self) -> str | None:
        return self._override

    def refresh(self) -> None:
        """Regenerate the file if it is missing or expired; remember its value."""
        path = self._paths.machine_id_file
        now = self._clock()
        self._checked = now
        try:
            mtime: float | None = os.lstat(path).st_mtime
        except FileNotFoundError:
            mtime = None
            log.info("Machine id file does not exist")
        if needs_rotation(mtime, now):
            if mtime is not None:
                log.info("Machine id file has expired")
            try:
                directory = os.path.dirname(path)
                if self._paths.mode is Mode.USER:
                    ensure_dir(directory)
                atomic_write(path, new_event_id().encode("ascii"), 0o644)
            except (OSError, UnsafePathError) as e:
                log.error("cannot write machine id %s: %s", path, e)
        try:
            token = read_small(path, 256).split()
            self._value = token[0][:MACHINE_ID_LEN].decode("ascii") if token else FALLBACK_ID
        except (OSError, UnsafePathError, UnicodeDecodeError) as e:
            log.error("cannot read machine id %s: %s", path, e)
            self._value = FALLBACK_ID

    def current(self) -> str:
        if self._override is not None:
            return self._override
        if self._checked is None or self._clock() - self._checked >= CHECK_INTERVAL:
            self.refresh()
        return self._value
