"""Running as root from the kernel, as little as possible."""

from __future__ import annotations

import os
import pwd
import resource

from telemetry.errors import TelemetryError
from telemetry.paths import SERVICE_USER

PR_SET_DUMPABLE = 4


class PrivilegeError(TelemetryError):
    pass


def make_undumpable() -> None:
    """No core of ours ever reaches core_pattern, so a crash of crashprobe cannot recurse."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # RLIMIT_CORE = 1 is the kernel's own mark of a core_pattern helper: a crash of a
    # process with that limit is never piped to the helper again (0 would not stop a pipe).
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        one = 1 if hard == resource.RLIM_INFINITY or hard >= 1 else hard
        resource.setrlimit(resource.RLIMIT_CORE, (one, one))
    except (ValueError, OSError):
        pass


def service_account() -> tuple[int, int] | None:
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        try:
            pw = pwd.getpwnam("nobody")
        except KeyError:
            return None
    return pw.pw_uid, pw.pw_gid


def drop_to(uid: int, gid: int) -> None:
    """Become uid/gid for good (no supplementary groups, no way back)."""
    if os.geteuid() != 0:
        return
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise PrivilegeError(f"cannot drop privileges to uid {uid}: {e.strerror}") from None
    make_undumpable()  # changing credentials resets the dumpable flag
