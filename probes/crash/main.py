"""crashprobe: the kernel's core_pattern handler, and its offline and journal modes.

    kernel      |crashprobe -p %e -E %E -s %s --pid=%P --uid=%u ...   core on stdin
    file        crashprobe -p NAME -c CORE                             as the original
    offline     crashprobe --core CORE [--exe PATH] [--send]           prints the payload
    journal     crashprobe --journal [--follow]                        beside systemd-coredump

Every mode ends in at most one record per crash, built by the same pipeline: decide
(pipeline.py), flood control (flood.py), read the core (corefile.py via source.py),
unwind and symbolize (analyze.py), lay out the payload (payload.py), send (probes/common).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import replace

import click

from telemetry.cli import CONTEXT_SETTINGS, config_option, version_option
from telemetry.errors import TelemetryError

from ..common import EXIT_FAILURE, EXIT_OK, ProbeCommand, opt_in_hint
from . import args as A
from .files import DEFAULT_DEBUG_DIRS, FileAccess, FileRefused, open_core
from .flood import LockBusy, LockUnavailable, analysis_lock
from .identity import IdentityError, read_process
from .pipeline import Action, CrashEvent, Namespace, Outcome
from .privileges import drop_to, make_undumpable, service_account
from .reporter import PROGRAM, Reporter, preload

NOT_A_CORE_SOURCE = "Cannot process core file. Use the -c option, or pass the core file on stdin."


# --- the command line -------------------------------------------------------------------

HELP = """Collect a backtrace from a core dump and send it as a crash record.

As the kernel's core_pattern handler (40-crash-probe.conf sets kernel.core_pattern) it
reads the core from stdin; `-c CORE` processes a core file; `--core CORE` only prints the report it would send;
`--journal` reports the crashes systemd-coredump recorded in the journal."""


EPILOG = """\b
Exit status:
  0  the crash was reported, or left out on purpose (flood control, a crash it must not
     report, not opted in); --core: the report was printed (and sent with --send)
  1  a bad argument, no core to read, or the report was not kept (the message says why)

\b
Files:
  /usr/lib/sysctl.d/40-crash-probe.conf  makes it the kernel's core_pattern handler
  /usr/lib/debug/                        separate debug files, looked up by build id
  /var/lib/telemetry/                    flood-control state and the journal cursor

\b
Examples:
  crashprobe --core core.1234 --exe ./prog   print the report a core file gives
  crashprobe --journal                       report the crashes systemd-coredump recorded
  cat /proc/sys/kernel/core_pattern          see whether the kernel starts crashprobe
"""


@click.command(cls=ProbeCommand, context_settings=CONTEXT_SETTINGS, help=HELP, epilog=EPILOG)
@config_option("-f", "--config_file", "--config-file")
@click.option("-c", "--core-file", metavar="PATH", help="Core file to process and report (never through a symlink).")
@click.option("--core", "offline_core", metavar="PATH",
              help="Analyse this core ('-': stdin) and print the payload; send only with --send.")
@click.option("--exe", metavar="PATH", help="The crashed executable (path as -E; also the file read for the main module).")
@click.option("-p", "--process-name", metavar="NAME", help="Name of the crashed process (%e).")
@click.option("-E", "--process-path", metavar="PATH", help="Path of the crashed executable, with ! or / separators (%E).")
@click.option("-s", "--signal", "signal_text", metavar="N", help="Signal that killed the process (%s).")
@click.option("--pid", "pid_text", metavar="N", help="Pid in the initial pid namespace (%P).")
@click.option("--uid", "uid_text", metavar="N", help="Real uid of the crashed process (%u).")
@click.option("--gid", "gid_text", metavar="N", help="Real gid of the crashed process (%g).")
@click.option("--dump-mode", "dump_mode_text", metavar="N", help="Kernel dump mode: 1 normal, 2 setuid-safe (%d).")
@click.option("--time", "time_text", metavar="N", help="Time of the dump, seconds since the epoch (%t).")
@click.option("--pidfd", "pidfd_text", metavar="FD", help="A pidfd of the crashed process (%F).")
@click.option("--journal", is_flag=True, help="Report systemd-coredump's journal entries not reported yet.")
@click.option("--follow", is_flag=True, help="With --journal: keep waiting for new entries.")
@click.option("--journal-dir", metavar="DIR", help="With --journal: read the journal files in DIR.")
@click.option("--debug-dir", "debug_dirs", multiple=True, metavar="DIR",
              help="Where separate debug files are looked up by build id (default /usr/lib/debug).")
@click.option("--send", is_flag=True, help="With --core: also send the report.")
@click.option("-v", "--verbose", is_flag=True, help="Print the payload on stdout.")
@version_option
def command(config_file, core_file, offline_core, exe, process_name, process_path, signal_text, pid_text,
            uid_text, gid_text, dump_mode_text, time_text, pidfd_text, journal, follow, journal_dir,
            debug_dirs, send, verbose) -> int:
    sig = A.parse_signal(signal_text)
    event = CrashEvent(
        process_name=process_name,
        raw_path=process_path if process_path is not None else exe,
        signal=sig,
        pid=A.parse_optional_id("pid", pid_text, 1, 2**22),
        uid=A.parse_optional_id("uid", uid_text),
        gid=A.parse_optional_id("gid", gid_text),
        dump_mode=A.parse_optional_id("dump-mode", dump_mode_text, 0, 2),
    )
    dump_time = A.parse_optional_id("time", time_text, 0, 2**63 - 1)
    pidfd = A.parse_optional_id("pidfd", pidfd_text, 0, 1 << 20)
    dirs = tuple(d for d in debug_dirs if d) if debug_dirs else DEFAULT_DEBUG_DIRS
    if follow and not journal:
        raise click.UsageError("--follow needs --journal")
    if send and not offline_core:
        raise click.UsageError("--send goes with --core (the other modes always send)")
    if journal:
        from .journal_mode import run_journal

        return run_journal(Reporter(config_file, dirs, kernel=False), journal_dir, follow, verbose)
    if offline_core:
        return run_offline(Reporter(config_file, dirs, kernel=False), event, offline_core, exe, send)
    if process_name is None:
        click.echo("Missing required -p option. See --help output")
        return EXIT_FAILURE
    return run_handler(Reporter(config_file, dirs, kernel=core_file is None), event, core_file, exe,
                       dump_time, pidfd, verbose)


def run_offline(cp: Reporter, event: CrashEvent, core_path: str, exe: str | None, send: bool) -> int:
    if core_path == "-" and not _stdin_is_a_core_source():
        raise TelemetryError(NOT_A_CORE_SOURCE)
    fd = os.dup(0) if core_path == "-" else _open_core(core_path)
    _drop_privileges(cp)
    trusted = frozenset({0, os.geteuid(), os.getuid()})
    access = FileAccess(trusted_uids=trusted, debug_dirs=cp.debug_dirs)
    outcome = cp.outcome(replace(event, namespace=Namespace.HOST))
    if outcome.action is Action.SKIP:
        outcome = Outcome(Action.ANALYZE)
    try:
        report = cp.report(event, outcome, lambda: cp.read_core(fd), access, exe_path=exe)
    finally:
        os.close(fd)
    click.echo(report.payload, nl=False)
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
            click.echo(NOT_A_CORE_SOURCE)
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
                with analysis_lock(cp.probe.paths.state_dir, min(cp.time_limit / 2, 10)):
                    _drop_privileges(cp, event if core_file is None else None)
                    report = cp.report(event, outcome, lambda: cp.read_core(fd), access, exe_path=exe)
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
        click.echo(report.payload)
    return EXIT_OK if cp.send(report) else EXIT_FAILURE


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


def _ensure_std_fds() -> None:
    """The kernel starts the handler with only stdin: give stdout and stderr /dev/null."""
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def main() -> None:
    make_undumpable()
    _ensure_std_fds()
    command.main(prog_name=PROGRAM)


__all__ = ["command", "main"]


if __name__ == "__main__":
    main()
