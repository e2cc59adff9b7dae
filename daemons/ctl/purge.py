"""Opt-out's removal of what telemetry kept: machine id, queue, journal, retained records.

System mode removes the directories listed in the tmpfiles conf, as the original, and only
those owned by user and group `telemetry`.  Each is removed through a descriptor of its
parent, never following a symlink at any level (shutil.rmtree's fd-based walk), so a
compromised telemetry account cannot steer root's deletions elsewhere
(spec/defects.md E 25).  User mode removes the same kinds of data from the user's own
directories, which must belong to that user.
"""

from __future__ import annotations

import enum
import grp
import os
import pwd
import shutil
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from telemetry.errors import TelemetryError
from telemetry.paths import SERVICE_USER, Mode, Paths


class PurgeError(TelemetryError):
    pass


class Outcome(enum.Enum):
    REMOVED = "removed"
    MISSING = "missing"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class Target:
    path: str
    owner: str
    group: str | None  # None: any group (user mode)


@dataclass(frozen=True)
class Result:
    target: Target
    outcome: Outcome
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.REMOVED, Outcome.MISSING)


def tmpfiles_dirs(text: str) -> tuple[str, ...]:
    """Paths of the `d <path> …` lines of a tmpfiles.d file, in file order."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "d" and os.path.isabs(fields[1]):
            found.append(os.path.normpath(fields[1]))
    return tuple(found)


def system_targets(tmpfiles_conf: str, owner: str = SERVICE_USER) -> tuple[Target, ...]:
    try:
        with open(tmpfiles_conf, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except FileNotFoundError:
        raise PurgeError(f"Could not open file {tmpfiles_conf}") from None
    except OSError as e:
        raise PurgeError(f"Error reading file {tmpfiles_conf}: {e.strerror}") from None
    return tuple(Target(p, owner, owner) for p in tmpfiles_dirs(text))


def user_targets(paths: Paths) -> tuple[Target, ...]:
    """The user-mode data opt-out removes; logs and probe cursors stay (they are not sent)."""
    me = _user_name(os.getuid())
    return tuple(
        Target(p, me, None)
        for p in (paths.spool_dir, paths.journal_dir, paths.cache_dir, paths.machine_id_file)
    )


def targets(paths: Paths) -> tuple[Target, ...]:
    return system_targets(paths.tmpfiles_conf) if paths.mode is Mode.SYSTEM else user_targets(paths)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _rmtree(name: str, dir_fd: int, errors: list[str]) -> None:
    def note(_func: object, p: str, exc: object) -> None:
        err = exc[1] if isinstance(exc, tuple) else exc
        errors.append(f"file: {p} : {getattr(err, 'strerror', None) or err}")

    if sys.version_info >= (3, 12):
        shutil.rmtree(name, dir_fd=dir_fd, onexc=note)
    else:
        shutil.rmtree(name, dir_fd=dir_fd, onerror=note)


def remove(target: Target) -> Result:
    """Remove one target if its owner (and group) match; never follows a symlink."""
    path = target.path
    parent, name = os.path.split(os.path.normpath(path))
    if not name:
        return Result(target, Outcome.REFUSED, f'Not removing "{path}": not a removable path')
    try:
        pfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Result(target, Outcome.MISSING)
    except OSError as e:
        return Result(target, Outcome.FAILED, f"file: {parent} : {e.strerror}")
    try:
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return Result(target, Outcome.MISSING)
        except OSError as e:
            return Result(target, Outcome.FAILED, f"file: {path} : {e.strerror}")
        if stat.S_ISLNK(st.st_mode):
            return Result(target, Outcome.REFUSED, f'Not removing "{path}": it is a symbolic link')
        owner = _user_name(st.st_uid)
        if owner != target.owner:
            return Result(target, Outcome.REFUSED, f'Not removing "{path}": Incorrect folder owner "{owner}"')
        if target.group is not None:
            group = _group_name(st.st_gid)
            if group != target.group:
                return Result(target, Outcome.REFUSED, f'Not removing "{path}": Incorrect folder group "{group}"')
        errors: list[str] = []
        try:
            if stat.S_ISDIR(st.st_mode):
                _rmtree(name, pfd, errors)
            else:
                os.unlink(name, dir_fd=pfd)
        except OSError as e:
            errors.append(f"file: {path} : {e.strerror or e}")
        if errors:
            return Result(target, Outcome.FAILED, "; ".join(errors))
        return Result(target, Outcome.REMOVED)
    finally:
        os.close(pfd)


def purge(items: Iterable[Target]) -> tuple[Result, ...]:
    return tuple(remove(t) for t in items)
