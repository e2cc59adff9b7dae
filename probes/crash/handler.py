"""One crash from the kernel, a core file or an offline analysis, to at most one record.

This is what runs when the kernel starts crashprobe for a crash, so it imports nothing
it does not need (no CLI framework; the analysis only when a core is read).  As root, the
analysis runs in a child that has become the crashed user, under the parent's lock and
deadline (isolate.py); the parent sends the report, on behalf of the crashed process's
user so telemprobd counts it in that user's share.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from dataclasses import replace

from telemetry.errors import TelemetryError

from ..common import EXIT_FAILURE, EXIT_OK, opt_in_hint
from .files import FileAccess, FileRefused, open_core
from .flood import LockBusy, LockUnavailable, analysis_lock
from .identity import IdentityError, read_process
from .pipeline import Action, CrashEvent, Namespace, Outcome
from .privileges import drop_to, service_account
from .reporter import GRACE, Report, Reporter, preload

NOT_A_CORE_SOURCE = "Cannot process core file. Use the -c option, or pass the core file on stdin."


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_offline(cp: Reporter, event: CrashEvent, core_path: str, exe: str | None, send: bool) -> int:
    if core_path == "-" and not _stdin_is_a_core_source():
        raise TelemetryError(NOT_A_CORE_SOURCE)
    fd = os.dup(0) if core_path == "-" else _open_core(core_path)
    _drop_privileges(cp)
    trusted = frozenset({0, os.geteuid(), os.getuid()})
    access = FileAccess(trusted_uids=trusted, debug_dirs=cp.debug_dirs)
    # Offline analysis is for the person at the keyboard: every core is analysed, with no
    # path filter (they apply to what the kernel reports, not to a local build).
    outcome = Outcome(Action.ANALYZE)
    # As root, the analysis runs as the service account, which may not write root's cache.
    try:
        report = cp.report(event, outcome, lambda: cp.read_core(fd), access, exe_path=exe,
                           store_cache=os.geteuid() == cp.cache.owner)
    finally:
        os.close(fd)
    if report.analysis is not None and report.analysis.unreadable:
        raise TelemetryError(f"{core_path}: {report.analysis.error}")
    _out(report.payload)
    if send:
        if not cp.probe.opted_in:
            raise TelemetryError(opt_in_hint(cp.probe.paths))
        return EXIT_OK if cp.send(report) else EXIT_FAILURE
    return EXIT_OK


def run_handler(cp: Reporter, event: CrashEvent, core_file: str | None, exe: str | None,
                dump_time: int | None, pidfd: int | None, verbose: bool) -> int:
    log = cp.log
    if not cp.probe.opted_in:
        log.info("%s", opt_in_hint(cp.probe.paths))
        return EXIT_OK
    if core_file is not None:
        fd = _open_core(core_file)
    else:
        fd = 0
        if not _stdin_is_a_core_source():
            _out(NOT_A_CORE_SOURCE + "\n")
            return EXIT_FAILURE
    root_fd = None
    if event.pid is not None and core_file is None:
        try:
            facts, root = read_process(event.pid, pidfd, dump_time)
            root_fd = root if root >= 0 else None
            event = replace(
                event,
                namespace=Namespace.FOREIGN if facts.foreign_mount_ns else Namespace.HOST,
                credentials_changed=facts.credentials_changed,
                exe=facts.exe,
                uid=event.uid if event.uid is not None else (facts.uids[0] if facts.uids else None),
                gid=event.gid if event.gid is not None else (facts.gids[0] if facts.gids else None),
            )
        except IdentityError as e:
            log.warning("%s; the crash is reported from its core alone", e)
    elif core_file is not None:
        event = replace(event, namespace=Namespace.HOST)
    outcome = cp.outcome(event)
    if outcome.action is Action.SKIP:
        log.info("crash of %s not reported: %s", event.executable, outcome.reason)
        return EXIT_OK
    if not cp.flood_allows(event):
        return EXIT_OK
    if outcome.action is Action.FIXED:
        log.info("%s", outcome.reason)
    access = cp.access_for(event, root_fd)
    try:
        if outcome.action is Action.ANALYZE:
            try:
                with analysis_lock(cp.lock_dir(), min(cp.time_limit / 2, 10)) as lock:
                    report = _analyse_isolated(cp, event, outcome, fd, access, exe, lock.fd,
                                               kernel_event=event if core_file is None else None)
            except LockUnavailable as e:
                # Busy: a storm is being analysed one crash at a time.  Unusable: reported
                # all the same, without analysis, which without the lock would be unbounded.
                if isinstance(e, LockBusy):
                    reason = "another crash was being analysed"
                else:
                    log.warning("%s; the crash of %s is reported without a backtrace", e, event.executable)
                    reason = "the analysis lock is unavailable"
                report = cp.report(event, Outcome(Action.STUB, reason=reason), None, None)
        else:
            report = cp.report(event, outcome, None, None)
    finally:
        if fd != 0:
            os.close(fd)
        if root_fd is not None:
            os.close(root_fd)
    if verbose:
        _out(report.payload + "\n")
    return EXIT_OK if cp.send(report, on_behalf_of=event) else EXIT_FAILURE


def _analyse_isolated(cp: Reporter, event: CrashEvent, outcome: Outcome, fd: int, access: FileAccess,
                      exe: str | None, lock_fd: int, kernel_event: CrashEvent | None) -> Report:
    """The analysis in a child (as the crashed user when we are root); a child that fails,
    is stopped or overruns gives a report without a backtrace, saying why."""
    from .isolate import run_isolated

    def work() -> dict:
        import base64

        _drop_privileges(cp, kernel_event)
        report = cp.report(event, outcome, lambda: cp.read_core(fd), access, exe_path=exe, store_cache=False)
        updates = report.analysis.cache_updates if report.analysis is not None else ()
        return {"category": report.category.name, "payload": report.payload,
                "cache": [[b.hex(), base64.b64encode(d).decode()] for b, d in updates]}

    result = run_isolated(work, time.monotonic() + cp.time_limit + GRACE, close_fds=(lock_fd,))
    if result.document is not None:
        return cp.report_from_child(result.document)
    cp.log.warning("%s; the crash of %s is reported without a backtrace", result.failure, event.executable)
    return cp.report(event, Outcome(Action.STUB, reason=result.failure or "the analysis failed"), None, None)


# --- helpers -------------------------------------------------------------------------

def _open_core(path: str) -> int:
    try:
        return open_core(path, pipe_ok=True)
    except FileRefused as e:
        raise TelemetryError(f"Failed to open input core file {path}: {e}") from None


def _stdin_is_a_core_source() -> bool:
    """A pipe (the kernel's) or a regular file, as the original accepts."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _drop_privileges(cp: Reporter, kernel_event: CrashEvent | None = None) -> None:
    """As root in system mode, before a core is parsed: become the crashed user the kernel
    named (who may read what it mapped), else the service account (root's crashes, core
    files, offline analysis)."""
    if not (cp.system and os.geteuid() == 0):
        return
    preload()
    if kernel_event is not None and kernel_event.uid and kernel_event.gid is not None:
        drop_to(kernel_event.uid, kernel_event.gid)
        return
    account = service_account()
    if account is not None:
        drop_to(*account)


def handle(parsed, prog: str) -> int:
    """The handler's command line (args.HandlerArgs) to an exit status; a bad value is one
    line on stderr and exit 1, as the full CLI would say it."""
    from telemetry import config as config_mod

    from . import args as A
    from .files import DEFAULT_DEBUG_DIRS

    try:
        config_file = parsed.get("config_file")
        if config_file is not None:
            config_mod.check_config_path(config_file)
        event = CrashEvent(
            process_name=parsed.get("process_name"),
            raw_path=parsed.get("process_path"),
            signal=A.parse_signal(parsed.get("signal")),
            pid=A.parse_optional_id("pid", parsed.get("pid"), 1, 2**22),
            uid=A.parse_optional_id("uid", parsed.get("uid")),
            gid=A.parse_optional_id("gid", parsed.get("gid")),
            dump_mode=A.parse_optional_id("dump-mode", parsed.get("dump_mode"), 0, 2),
        )
        dump_time = A.parse_optional_id("time", parsed.get("time"), 0, 2**63 - 1)
        pidfd = A.parse_optional_id("pidfd", parsed.get("pidfd"), 0, 1 << 20)
        dirs = parsed.all("debug_dir")
        dirs = tuple(d for d in dirs if d) if dirs else DEFAULT_DEBUG_DIRS
        core_file = parsed.get("core_file")
        cp = Reporter(config_file, dirs, kernel=core_file is None)
        return run_handler(cp, event, core_file, None, dump_time, pidfd, parsed.verbose)
    except TelemetryError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as e:  # the environment (permissions, full disk), not a bug: one line
        where = f": {e.filename}" if e.filename else ""
        sys.stderr.write(f"{prog}: {e.strerror or e}{where}\n")
        return EXIT_FAILURE
