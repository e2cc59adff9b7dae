"""Where crashprobe keeps what only it may write: its flood-control state, its analysis
lock and its cache of parsed symbol and unwind tables.

In system mode crashprobe runs as root, and the telemetry state directory belongs to the
service account, which could rename a file over root's state there and so silence root's
crash reports.  Root's own state therefore lives in directories that only root can write
(owner root, no group or other write bit, up to /), checked at every use.  In user mode
the user's own state directory is used: nobody else writes there.
"""

from __future__ import annotations

import os
import stat

from telemetry.errors import TelemetryError
from telemetry.paths import LOCALSTATEDIR, RUNDIR, Mode, Paths

SYSTEM_STATE = os.path.join(LOCALSTATEDIR, "lib/crashprobe")
SYSTEM_CACHE = os.path.join(LOCALSTATEDIR, "cache/crashprobe")
SYSTEM_RUN = os.path.join(RUNDIR, "crashprobe")


class PlaceUnsafe(TelemetryError):
    """A directory others could write to; the message names it and why."""


def state_dir(paths: Paths) -> str:
    return SYSTEM_STATE if paths.mode is Mode.SYSTEM else paths.state_dir


def run_dir(paths: Paths) -> str:
    """The analysis lock's directory (it need not survive a reboot)."""
    return SYSTEM_RUN if paths.mode is Mode.SYSTEM else paths.state_dir


def cache_dir(paths: Paths) -> str:
    return SYSTEM_CACHE if paths.mode is Mode.SYSTEM else os.path.join(paths.cache_dir, "crashprobe")


def private_dir(path: str, mode: int = 0o700) -> str:
    """`path`, created if need be, after checking that it and every directory above it is
    owned by us or root and writable by nobody else (a sticky /tmp-like parent counts as
    safe only for entries owned by us)."""
    me = os.geteuid()
    try:
        os.makedirs(path, mode, exist_ok=True)
    except OSError as e:
        raise PlaceUnsafe(f"cannot create {path}: {e.strerror}") from None
    check_chain(path, me)
    return path


def check_chain(path: str, owner: int) -> None:
    current = os.path.abspath(path)
    first = True
    while True:
        try:
            st = os.lstat(current)
        except OSError as e:
            raise PlaceUnsafe(f"{current}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise PlaceUnsafe(f"{current} is a symbolic link")
        if not stat.S_ISDIR(st.st_mode):
            raise PlaceUnsafe(f"{current} is not a directory")
        if st.st_uid not in (0, owner):
            raise PlaceUnsafe(f"{current} is owned by uid {st.st_uid}")
        writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable_by_others and (first or not st.st_mode & stat.S_ISVTX):
            raise PlaceUnsafe(f"{current} can be written by others (mode {stat.S_IMODE(st.st_mode):o})")
        first = False
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent
