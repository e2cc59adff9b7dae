"""Opt-in state: a marker file, as the original (/etc/telemetrics/opt-in in system mode).

Nothing is collected, queued or sent unless it exists.  The library checks it before
sending (like libtelemetry) and telemprobd checks it again for every record, so a probe
that skips the library check still cannot get a record in.
"""

from __future__ import annotations

import enum
import os

from .fsutil import ensure_dir
from .paths import Mode, Paths


class OptChange(enum.Enum):
    CHANGED = "changed"
    ALREADY = "already"


def is_opted_in(paths: Paths) -> bool:
    return os.path.lexists(paths.opt_in_file)


def opt_in(paths: Paths) -> OptChange:
    if paths.mode is Mode.USER:
        ensure_dir(paths.config_dir)
    else:
        os.makedirs(paths.config_dir, mode=0o755, exist_ok=True)
    try:
        fd = os.open(paths.opt_in_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return OptChange.ALREADY
    os.close(fd)
    return OptChange.CHANGED


def opt_out(paths: Paths) -> OptChange:
    try:
        os.unlink(paths.opt_in_file)
    except FileNotFoundError:
        return OptChange.ALREADY
    return OptChange.CHANGED
