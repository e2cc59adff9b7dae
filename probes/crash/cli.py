"""crashprobe's full command line (click): help, the offline and journal modes, and every
error explained.  The kernel's own invocation is read without it (main.py, args.py)."""

from __future__ import annotations

import os
from dataclasses import replace

import click

from telemetry.cli import CONTEXT_SETTINGS, config_option, version_option

from ..common import EXIT_FAILURE, ProbeCommand
from . import args as A
from .files import DEFAULT_DEBUG_DIRS
from .handler import run_handler, run_offline
from .pipeline import CrashEvent
from .reporter import Reporter

HELP = """Collect a backtrace from a core dump and send it as a crash record.

As the kernel's core_pattern handler (40-crash-probe.conf sets kernel.core_pattern) it
reads the core from stdin; `-c CORE` processes a core file; `--core CORE` only prints the
report it would send; `--journal` reports the crashes systemd-coredump recorded in the
journal."""

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
        if exe is not None:
            exe = os.path.abspath(exe)
            event = replace(event, raw_path=process_path if process_path is not None else exe)
        return run_offline(Reporter(config_file, dirs, kernel=False), event, offline_core, exe, send)
    if process_name is None:
        click.echo("Missing required -p option. See --help output")
        return EXIT_FAILURE
    return run_handler(Reporter(config_file, dirs, kernel=core_file is None), event, core_file, exe,
                       dump_time, pidfd, verbose)


