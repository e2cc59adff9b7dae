"""telemctl: opt in or out, start and stop the telemetry services, read the journal, see the status.

System mode drives the original's systemd units (root only, except is-active and status);
user mode runs the daemons as the user's own background processes (daemons/supervise.py),
so the whole pipeline works without root and without systemd.  Every misuse ends in one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from telemetry import cli as cli_mod
from telemetry import command as command_mod
from telemetry import config as config_mod
from telemetry import optin
from telemetry.cli import CONTEXT_SETTINGS, config_option, handle_errors, version_option
from telemetry.daemons.ctl import journal_print, journal_view, preflight, purge, supervise, units
from telemetry.daemons.ctl import status as status_mod
from telemetry.daemons.store import journal as journal_mod
from telemetry.errors import TelemetryError
from telemetry.hints import opt_in_phrase, run_phrase, systemd_running
from telemetry.paths import Mode, Paths

PROG = "telemctl"
EXIT_USAGE = 2
EXIT_NOT_ACTIVE = 3  # systemctl is-active's status for "not active"

# The original's messages (src/telemctl.c), unchanged.
MUST_BE_ROOT = "Must be root to run this command. Exiting..."
OPT_IN_FIRST = "Opt in to telemetry first."
ALREADY_IN = "Already opted in. Nothing to do."
ALREADY_OUT = "Already opted out. Nothing to do."

COMMAND_ORDER = ("stop", "start", "restart", "reload", "is-active", "opt-in", "opt-out", "journal", "status",
                 "metrics", "export")
IS_ACTIVE_ORDER = (supervise.PROBD, supervise.POSTD)


def err(message: str) -> None:
    click.echo(message, err=True)


@dataclass(frozen=True)
class Ctl:
    """What every command needs: the mode's paths and the -f file (passed on to the daemons)."""

    paths: Paths
    config_file: str | None

    @property
    def system(self) -> bool:
        return self.paths.mode is Mode.SYSTEM

    def config(self) -> config_mod.Config:
        return config_mod.load(self.paths, self.config_file)



class Group(command_mod.Group):
    """Commands listed in the original's order; an unknown one is a one-line usage error."""

    usage_exit = EXIT_USAGE

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise click.UsageError(
                f"Unknown command passed to {PROG}: {name!r} (commands: {', '.join(COMMAND_ORDER)})", ctx
            )
        return super().resolve_command(ctx, args)


def opt_in_first(ctl: Ctl) -> str:
    """The original's message, and the command that opts in."""
    return f"{OPT_IN_FIRST} Run {opt_in_phrase(ctl.paths)}."


def require_root(ctl: Ctl) -> None:
    """System mode: the original's real-uid check."""
    if ctl.system and os.getuid() != 0:
        err(MUST_BE_ROOT)
        sys.exit(1)


def require_systemd() -> units.Systemctl:
    if not systemd_running():
        raise units.SystemdNotRunning()
    return units.Systemctl(say=waiting)


FILES_HELP = """\b
Files (system mode; user mode keeps the same files in the XDG directories):
  /etc/telemetrics/opt-in              the opt-in marker
  /etc/telemetrics/telemetrics.conf    the configuration (telemetrics.conf(5))
  /var/spool/telemetry/                the C client's record files (imported at start)
  /var/spool/telemetry/queue/queue.db  the record queue
  /var/log/telemetry/journal.db        the journal and retained payloads
  /var/log/telemetry/journal           the C client's journal (imported once)
  $XDG_CONFIG_HOME/telemetrics/        user mode: opt-in, telemetrics.conf
  $XDG_STATE_HOME/telemetrics/         user mode: spool/, journal/, machine_id, *.log
  $XDG_RUNTIME_DIR/telemetrics/        user mode: telem-0 socket, *.pid
"""


@click.group(
    cls=Group,
    context_settings=CONTEXT_SETTINGS,
    invoke_without_command=True,
    short_help="control the telemetry services and read their journal",
    epilog=FILES_HELP + """
\b
Environment:
  TELEMETRY_MODE=user|system   the mode when neither --user nor --system is given;
                               otherwise root and the telemetry user mean system mode,
                               and so does a running system telemprobd

\b
Exit status:
  0  success
  1  the command failed (the message says why), or not root in system mode
  2  usage error: no or unknown command, bad option or filter value
  3  is-active: a daemon is not active

\b
Examples:
  telemctl opt-in && telemctl start    enable telemetry and start its services (root)
  telemctl status                      opt-in, daemons, queue and counters
  telemctl journal -c 'org.clearlinux/crash/*' -n 5   the last five crash records sent
  telemctl --user start                the whole pipeline as your own processes

\b
Shell completion: installed for bash, zsh and fish; by hand (bash; zsh_source and
fish_source likewise): eval "$(_TELEMCTL_COMPLETE=bash_source telemctl)"
""",
)
@cli_mod.mode_options
@config_option()
@version_option
@click.pass_context
@handle_errors
def cli(ctx: click.Context, config_file: str | None) -> int | None:
    """Control the telemetry services: opt in or out, start and stop the daemons, read the
    journal of what was sent, and show the pipeline's status.

    Nothing is collected or sent until the machine's owner opts in.  telemprobd receives
    records from the probes on a unix socket and queues them; telempostd delivers them to
    the collector named in telemetrics.conf and journals what became of each.

    In system mode the commands drive the systemd units of the telemetrics-client package
    and need root.  In user mode (--user, or TELEMETRY_MODE=user) any user runs the whole
    pipeline as background processes of their own, without systemd.
    """
    paths = Paths.detect(cli_mod.chosen_mode(ctx))
    ctx.obj = Ctl(paths, config_file)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(EXIT_USAGE)
    return None


def command(name: str, short_help: str, epilog: str = "") -> Callable:
    return cli.command(name, short_help=short_help, context_settings=CONTEXT_SETTINGS, epilog=epilog or None)


# --- opt-in / opt-out ---------------------------------------------------------------------

@command("opt-in", "Opts in to telemetry (does not start the services)", epilog="""
\b
Files:
  /etc/telemetrics/opt-in (system), $XDG_CONFIG_HOME/telemetrics/opt-in (user)

\b
Exit status: 0 when opted in (also when it already was), 1 on failure.
""")
@click.pass_obj
@handle_errors
def opt_in_cmd(ctl: Ctl) -> int:
    """Opt in to telemetry: create the opt-in file that every probe, telemprobd and the
    systemd units check before anything is collected or sent.

    It does not start the services; run 'telemctl start' for that.  In system mode the
    units are also enabled again (opt-out disables them), so they start at boot: of the
    two journal probes, which conflict, journal-probe-tail.service (journal-probe.service,
    which also reports what the journal held before its first start, is the admin's
    choice), and not crashprobe-journal.service.
    Opting in when already opted in changes nothing and says so.
    """
    require_root(ctl)
    try:
        change = optin.opt_in(ctl.paths)
    except OSError as e:
        failed = ctl.paths.config_dir if not os.path.isdir(ctl.paths.config_dir) else ctl.paths.opt_in_file + "."
        err(f"Failed to create {failed}" + (f" ({e.strerror})" if e.strerror else ""))
        return 1
    if change is optin.OptChange.ALREADY:
        err(ALREADY_IN)
        return 0
    result = 0
    if ctl.system and systemd_running():
        result = units.enable(units.Systemctl(), err)
    click.echo(f"Opted in to telemetry. Start the services with {run_phrase(ctl.paths, 'start')}.")
    return result


@command("opt-out", "Opts out of telemetry, stops the services and removes their data", epilog="""
\b
Files removed:
  system mode: the directories of /usr/lib/tmpfiles.d/telemetrics-dirs.conf that belong to
  user and group telemetry (machine id, queue, journal, retained records, pstore cache);
  user mode: $XDG_STATE_HOME/telemetrics/{spool,journal,machine_id}, $XDG_CACHE_HOME/telemetrics

\b
Exit status: 0 when opted out (also when it already was), 1 if a step failed.
""")
@click.pass_obj
@handle_errors
def opt_out_cmd(ctl: Ctl) -> int:
    """Opt out of telemetry: remove the opt-in file, stop the services, and delete what
    telemetry kept on this machine (machine id, queued records, journal, retained payloads).

    In system mode the units are also disabled, and a directory is only removed when it
    belongs to user and group telemetry; symbolic links are never followed.  Opting out
    when already opted out changes nothing and says so.
    """
    require_root(ctl)
    try:
        change = optin.opt_out(ctl.paths)
    except OSError as e:
        err(f"Failed to remove {ctl.paths.opt_in_file}." + (f" ({e.strerror})" if e.strerror else ""))
        return 1
    if change is optin.OptChange.ALREADY:
        err(ALREADY_OUT)
        return 0
    result = 0
    if ctl.system:
        if systemd_running():
            systemctl = units.Systemctl()
            result |= units.stop(systemctl, err)
            result |= units.disable(systemctl, err)
    else:
        result |= _user_stop(ctl, quiet=True)
    try:
        targets = purge.targets(ctl.paths)
    except purge.PurgeError as e:
        err(str(e))
        return 1
    for outcome in purge.purge(targets):
        if outcome.message:
            err(outcome.message)
        if not outcome.ok:
            result = 1
    click.echo("Opted out of telemetry.")
    return result


# --- start / stop / restart / is-active ---------------------------------------------------

UNIT_FILES = """
\b
Files:
  system mode: the units hprobe.timer, telemprobd.socket, telempostd.path,
  klogscanner.service, journal-probe-tail.service (start) and their services (stop)
  user mode: $XDG_RUNTIME_DIR/telemetrics/<daemon>.pid, $XDG_STATE_HOME/telemetrics/<daemon>.log
"""


def checked_config(ctl: Ctl, refusing: str) -> preflight.Checked | None:
    """The daemons' own start-up checks on the config, before anything is stopped; a bad
    file is one line (`refusing` says what is not done) and None."""
    try:
        checked = preflight.check(ctl.paths, ctl.config_file)
    except preflight.NotStartable as e:
        err(f"{PROG}: {refusing}: {e}")
        return None
    for warning in checked.warnings:
        err(f"{PROG}: warning: {warning}")
    return checked


def waiting(message: str) -> None:
    err(f"{PROG}: {message}")


def _user_start(ctl: Ctl, cfg: config_mod.Config) -> int:
    if not optin.is_opted_in(ctl.paths):
        err(opt_in_first(ctl))
        return 1
    sup = supervise.Supervisor(ctl.paths, config_file=ctl.config_file, socket_path=cfg.socket_path)
    sup.check_installed()
    result = 0
    with sup.locked():
        for name in supervise.DAEMONS:
            try:
                done = sup.start(name, waiting)
            except supervise.StartFailed as e:
                err(f"{PROG}: {e}")
                result = 1
                continue
            if done.outcome is supervise.StartOutcome.UNCONFIRMED:
                err(f"{PROG}: {name} (pid {done.pid}) has not reported ready after "
                    f"{sup.ready_timeout:.0f} s; see {sup.log_file(name)}")
            click.echo(f"{name}: {done.outcome.value} (pid {done.pid})")
    return result


def _user_stop(ctl: Ctl, quiet: bool = False) -> int:
    sup = supervise.Supervisor(ctl.paths)
    with sup.locked():
        for name in reversed(supervise.DAEMONS):
            done = sup.stop(name, None if quiet else waiting)
            if not quiet:
                pid = f" (pid {done.pid})" if done.pid else ""
                click.echo(f"{name}: {done.outcome.value}{pid}")
    return 0


def _system_start(ctl: Ctl) -> int:
    systemctl = require_systemd()
    if not optin.is_opted_in(ctl.paths):
        err(opt_in_first(ctl))
        return 1
    missing = units.missing_units(systemctl, [u for _, u in units.ACTIVATION_UNITS])
    if missing:
        raise units.SystemdError(
            f"the telemetry units are not installed ({', '.join(missing)} not found); "
            "install telemetrics-client with 'make install'"
        )
    return units.start(systemctl, ctl.paths.tmpfiles_conf, err)


def _system_stop(ctl: Ctl) -> int:
    return units.stop(require_systemd(), err)


CHECKED = """
\b
Before anything is stopped or started, the configuration is read and checked as the
daemons check it at start (every key, the server URL, the TLS files, the socket path); a
bad file is refused in one line and the running daemons are left as they are.  Keys and
sections it ignores are printed as warnings.
"""


@command("start", "Starts all telemetry services", epilog=UNIT_FILES + CHECKED + """
\b
Exit status: 0 when every service started, 1 otherwise (not opted in, a bad configuration,
a daemon that failed to start, systemd not running in system mode, not root in system mode).
""")
@click.pass_obj
@handle_errors
def start_cmd(ctl: Ctl) -> int:
    """Start the telemetry services.  Requires opt-in.

    System mode creates the work directories (systemd-tmpfiles) and starts the trigger
    units: hprobe.timer, telemprobd.socket, telempostd.path, klogscanner.service and
    journal-probe-tail.service; the daemons then start on demand.

    User mode starts telempostd and telemprobd as background processes in sessions of
    their own, waits until each reports it is ready, and prints their pids.  A daemon
    already running is left alone.  A start that takes more than a second says what it
    waits for.
    """
    require_root(ctl)
    checked = checked_config(ctl, "not starting")
    if checked is None:
        return 1
    return _system_start(ctl) if ctl.system else _user_start(ctl, checked.config)


@command("stop", "Stops all running telemetry services", epilog=UNIT_FILES + """
\b
Exit status: 0 when everything is stopped (also when nothing ran), 1 otherwise.
""")
@click.pass_obj
@handle_errors
def stop_cmd(ctl: Ctl) -> int:
    """Stop the telemetry services.

    System mode stops the trigger units, then the services.  User mode sends SIGTERM to
    telemprobd, then telempostd (which finishes the requests in flight), and kills a
    daemon that has not exited after 20 s.  A stop that takes more than a second says
    what it waits for.  Records already queued stay queued.
    """
    require_root(ctl)
    return _system_stop(ctl) if ctl.system else _user_stop(ctl)


@command("restart", "Restarts all telemetry services", epilog=UNIT_FILES + CHECKED + """
\b
Exit status: that of start; 1 when the configuration is refused (nothing is stopped) or
when stopping failed (then nothing is started).
""")
@click.pass_obj
@handle_errors
def restart_cmd(ctl: Ctl) -> int:
    """Check the configuration, then stop and start the telemetry services (start only
    runs if stop succeeded)."""
    require_root(ctl)
    checked = checked_config(ctl, "not restarting, the running daemons are left as they are")
    if checked is None:
        return 1
    if ctl.system:
        result = _system_stop(ctl)
        return result if result else _system_start(ctl)
    result = _user_stop(ctl)
    return result if result else _user_start(ctl, checked.config)


@command("reload", "Makes the running daemons read the configuration again", epilog=CHECKED + """
\b
Exit status: 0 when every running daemon was asked to reload (also when none runs), 1
when the configuration is refused or a reload failed.
""")
@click.pass_obj
@handle_errors
def reload_cmd(ctl: Ctl) -> int:
    """Make the running daemons read telemetrics.conf again without stopping them: records
    being received and requests in flight are not interrupted.

    User mode sends SIGHUP to each running daemon.  System mode runs 'systemctl
    try-reload-or-restart' on telemprobd.service and telempostd.service (their
    ExecReload= sends SIGHUP); a daemon that is not running reads the file when it
    starts.
    """
    require_root(ctl)
    if ctl.system:
        systemctl = require_systemd()
        if checked_config(ctl, "not reloading, the daemons keep their current settings") is None:
            return 1
        return systemctl.each("try-reload-or-restart", units.DAEMON_SERVICES.values(), err)
    if checked_config(ctl, "not reloading, the daemons keep their current settings") is None:
        return 1
    sup = supervise.Supervisor(ctl.paths)
    with sup.locked():
        for name in reversed(supervise.DAEMONS):
            done = sup.reload(name)
            pid = f" (pid {done.pid})" if done.pid else ""
            click.echo(f"{name}: {done.outcome.value}{pid}")
    return 0


@command("is-active", "Checks if telemprobd and telempostd are active", epilog="""
\b
Output: one line per daemon, "telemprobd : active" and "telempostd : inactive" (or
failed: its pid file remains but the process is gone).  System mode reports the
activating units, telemprobd.socket and telempostd.path.

\b
Files: $XDG_RUNTIME_DIR/telemetrics/<daemon>.pid (user mode; a pid counts only while its
process runs that daemon), systemctl is-active (system mode).

\b
Exit status: 0 when both are active, 3 when one is not (as systemctl is-active),
1 on error.  Needs no root.
""")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; only the exit status tells.")
@click.pass_obj
@handle_errors
def is_active_cmd(ctl: Ctl, quiet: bool) -> int:
    """Tell whether the two daemons are active."""
    if ctl.system:
        systemctl = require_systemd()
        states = [(name, systemctl.is_active(unit)) for name, unit in units.ACTIVATION_UNITS]
    else:
        sup = supervise.Supervisor(ctl.paths)
        states = [(name, sup.status(name).state.value) for name in IS_ACTIVE_ORDER]
    if not quiet:
        for name, state in states:
            click.echo(f"{name} : {state}")
    return 0 if all(state == "active" for _, state in states) else EXIT_NOT_ACTIVE


# --- journal ------------------------------------------------------------------------------

@command("journal", "Prints telemetry journal contents. Use -h argument with command for more options",
         epilog="""
\b
Output: one line per record, oldest first:
  classification (30 columns), local time, record id, event id, boot id
as the original telem_journal prints it; a record that was not delivered has its outcome
added at the end, e.g. "[rejected 400: <detail>]", "[expired]", "[dropped: <detail>]".
-V adds a header line and "Total records: N".  To a terminal every control character
(of a payload too) is shown as an escape such as \\x1b; to a pipe, -i writes each
payload as it was sent.

\b
Files: /var/log/telemetry/journal.db (system), $XDG_STATE_HOME/telemetrics/journal/journal.db
(user), read-only, while the daemons write it.

\b
Exit status: 0 (also when nothing matches), 1 when the journal cannot be read, 2 for a
malformed filter value.
""")
@click.option("-r", "--record_id", "record_id", metavar="ID", callback=journal_print.filter_callback(journal_view.record_id_filter),
              help="Print the record with this record id (32 hex characters).")
@click.option("-e", "--event_id", "event_id", metavar="ID", callback=journal_print.filter_callback(journal_view.event_id_filter),
              help="Print records with this event id (32 hex characters).")
@click.option("-c", "--classification", "classification", metavar="CLASS",
              callback=journal_print.filter_callback(journal_view.classification_filter),
              help="Print records with this classification (a/b/c), or whose classification "
              "starts with the prefix before a final '/*' (e.g. 'org.clearlinux/*').")
@click.option("-b", "--boot_id", "boot_id", metavar="UUID", callback=journal_print.filter_callback(journal_view.boot_id_filter),
              help="Print records processed during this boot (see /proc/sys/kernel/random/boot_id).")
@click.option("-i", "--include_record", "include_record", is_flag=True,
              help="Include the record's payload after its line, if retained "
              "(record_retention_enabled=true keeps the last 100).")
@click.option("-V", "--verbose", is_flag=True, help="Verbose output: a header line and the total.")
@click.option("-o", "--outcome", type=click.Choice([o.value for o in journal_mod.Outcome]),
              help="Print only records with this outcome.")
@click.option("-n", "--lines", "lines", type=click.IntRange(min=0), default=journal_mod.READER_WINDOW,
              show_default=True, metavar="N",
              help="Print at most the newest N matching records; 0 prints every one kept.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of objects, with outcome, HTTP status, detail and "
              "creation time too (and payload with -i).")
@click.pass_obj
@handle_errors
def journal_cmd(ctl: Ctl, record_id: str | None, event_id: str | None, classification: str | None,
                boot_id: str | None, include_record: bool, verbose: bool, outcome: str | None,
                lines: int, as_json: bool) -> int:
    """Print the telemetry journal: what became of each record the daemons handled
    (delivered, rejected, expired, dropped, ...), the newest matching ones (see -n).

    The filters are ANDed.  Ids are compared exactly (case is ignored); a classification
    ending in '/*' matches every classification starting with what precedes the '*'.
    Unlike the original, the filters search every entry the journal keeps, not only its
    last 100 lines.
    """
    require_root(ctl)
    query = journal_print.JournalQuery(
        record_id=record_id, event_id=event_id, classification=classification, boot_id=boot_id,
        outcome=journal_mod.Outcome(outcome) if outcome else None, limit=lines or None,
    )
    journal_print.print_journal(ctl.paths.journal_dir, query, include_record=include_record,
                                verbose=verbose, as_json=as_json)
    return 0


# --- status -------------------------------------------------------------------------------

def _daemon_infos(ctl: Ctl) -> list[status_mod.DaemonInfo]:
    if not ctl.system:
        sup = supervise.Supervisor(ctl.paths)
        infos = []
        for name in IS_ACTIVE_ORDER:
            st = sup.status(name)
            infos.append(status_mod.DaemonInfo(name, st.state.value, st.pid, f"log {st.log_file}"))
        return infos
    if not systemd_running():
        return [status_mod.DaemonInfo(name, "unknown", None, "systemd is not running")
                for name, _ in units.ACTIVATION_UNITS]
    systemctl = units.Systemctl()
    infos = []
    for name, trigger in units.ACTIVATION_UNITS:
        service = units.DAEMON_SERVICES[name]
        svc = systemctl.show(service, "ActiveState", "MainPID")
        trig = systemctl.show(trigger, "ActiveState")
        pid = int(svc.get("MainPID", "0") or 0) or None
        infos.append(status_mod.DaemonInfo(
            name, trig.get("ActiveState", "unknown"), pid,
            f"{trigger} {trig.get('ActiveState', 'unknown')}, {service} {svc.get('ActiveState', 'unknown')}",
        ))
    return infos


@command("status", "Shows opt-in, daemons, queue and counters", epilog="""
\b
Queue: staged records were never tried (deferred ones among them: held by the rate limit,
strategy spool); spooled ones wait for another attempt.

\b
Delivery: the last record the collector took and the last error, with their times; while
delivery waits, why (backoff after a failure, the collector's Retry-After, or a
configuration error: fix it, then 'telemctl reload'), until when, and when the next single
request checks whether the collector answers again (retry_probe_interval).

\b
Counters (since the queue was created): telemprobd received, staged, deferred (rate
limited, kept for later) and rejected:<reason>; telempostd delivered, rejected (by the
collector), rejected-local, expired, dropped, set-aside, retried and config-error (kept
while the configuration is at fault).  After a switch from the C client, telemprobd's
c-spool:imported, c-spool:already-queued, c-spool:not-a-record (left alone) and
c-spool:unreadable count the C record files it found at its starts.

\b
Files: the opt-in file, the pid files (user mode), the queue database (read-only),
delivery.json beside it (written by telempostd).

\b
Exit status: 0; 1 when the configuration cannot be read.  Needs no root; what this user
cannot read is reported as such.
""")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.pass_obj
@handle_errors
def status_cmd(ctl: Ctl, as_json: bool) -> int:
    """Show the state of the telemetry pipeline: opt-in, each daemon's state and pid, the
    socket, the queue (records and bytes against spool_max_size: staged, of which deferred,
    and spooled), the next delivery attempt, the last delivery and the last error, why
    delivery waits, and the daemons' counters.
    """
    cfg = ctl.config()
    st = status_mod.gather(
        ctl.paths, spool_dir=cfg.spool_dir, socket_path=cfg.socket_path,
        spool_max_size_kib=cfg.spool_max_size, config_file=cfg.source, daemons=_daemon_infos(ctl),
        config_notices=cfg.notices, delivery_enabled=cfg.record_server_delivery_enabled,
    )
    if as_json:
        click.echo(json.dumps(status_mod.to_json(st), indent=2))
    else:
        click.echo(status_mod.format_text(st))
    return 0


@command("metrics", "Prints the daemons' counters in Prometheus' text format", epilog="""
\b
Families: telemprobd_<counter>_total and telempostd_<counter>_total (rejections as
telemprobd_rejected_total{reason=...}), telemetry_queue_* (records, bytes, staged, spooled,
deferred, cap), telempostd_last_success_timestamp_seconds and
telempostd_last_error_timestamp_seconds (from delivery.json, once there is one),
telemetry_opted_in, telemetry_journal_entries.  The same format as the
collector's /metrics, rendered by prometheus-client.

\b
--textfile writes them instead to PATH (default: metrics_textfile in telemetrics.conf) as
node-exporter's textfile collector wants: a temporary file renamed over PATH.  With
metrics_textfile set, telemprobd and telempostd rewrite that file themselves at most once
a minute while they run.

\b
Exit status: 0; 1 when the configuration or the queue cannot be read, or PATH cannot be
written.
""")
@click.option("--textfile", "textfile", is_flag=False, flag_value="", default=None, metavar="PATH",
              help="Write to PATH (atomically) instead of printing; without PATH, to metrics_textfile.")
@click.pass_obj
@handle_errors
def metrics_cmd(ctl: Ctl, textfile: str | None) -> int:
    """Print the client daemons' counters and the queue's figures for Prometheus."""
    from telemetry.daemons.ctl import metrics as metrics_mod

    cfg = ctl.config()
    figures = metrics_mod.ClientFigures(ctl.paths, cfg.spool_dir, cfg.spool_max_size)
    if textfile is None:
        click.echo(metrics_mod.render(figures).decode(), nl=False)
        return 0
    path = textfile or cfg.metrics_textfile
    if not path:
        raise TelemetryError("--textfile needs a PATH, or metrics_textfile set in telemetrics.conf")
    metrics_mod.write_textfile(path, figures)
    return 0


# --- export -------------------------------------------------------------------------------

def _running_daemons(ctl: Ctl) -> list[str]:
    if not ctl.system:
        sup = supervise.Supervisor(ctl.paths)
        return [n for n in IS_ACTIVE_ORDER if sup.status(n).state is supervise.DaemonState.ACTIVE]
    if not systemd_running():
        return []
    systemctl = units.Systemctl()
    return [n for n in IS_ACTIVE_ORDER if systemctl.is_active(units.DAEMON_SERVICES[n]) in ("active", "reloading")]


@command("export", "Writes the queued records as C client spool files (going back)", epilog="""
\b
Going back to the C telemetrics-client:
  telemctl stop                     stop telemprobd and telempostd
  telemctl export --c-spool         hand the queued records over to the C client
  (install and start the C client on the same telemetrics.conf)

\b
Each record becomes one file as a C telemprobd stages it: an optional CFG: line, the 15
header lines, the payload and a newline; named as mkstemp names them, mode 0600, owned by
the directory's owner (the C telempostd deletes files of another user), its modification
time the time the record was received.  A file appears whole (written aside, synced,
then linked into place).  Only once every file is on disk are the records removed from
the queue (--keep leaves them); after an interrupted export, telemprobd recognises the
files by content at its next start and does not queue them twice.  A queue row that holds
no readable record is not exported and is named.

\b
Exit status: 0; 1 when a daemon still runs, the queue cannot be read or DIR cannot be
written (the queue is then unchanged); 2 without --c-spool.
""")
@click.option("--c-spool", "c_spool", is_flag=False, flag_value="", default=None, metavar="DIR",
              help="Write C spool files into DIR (default: spool_dir, where a C telempostd looks).")
@click.option("--keep", is_flag=True, help="Leave the exported records in the queue too (a copy, not a hand-over).")
@click.pass_obj
@handle_errors
def export_cmd(ctl: Ctl, c_spool: str | None, keep: bool) -> int:
    """Write every queued record as a C telemetrics-client spool file, so that a C
    telempostd delivers it: how records queued here survive going back to the C client.

    The daemons must be stopped first (telemctl stop), so that no record is delivered by
    both.
    """
    from telemetry.daemons.ctl import export as export_mod

    if c_spool is None:
        raise click.UsageError("export needs --c-spool [DIR] (the only format)")
    require_root(ctl)
    cfg = ctl.config()
    running = _running_daemons(ctl)
    if running:
        raise TelemetryError(f"{' and '.join(running)} still running: stop them first ({run_phrase(ctl.paths, 'stop')})")
    target = c_spool or cfg.spool_dir
    result = export_mod.export_c_spool(cfg.spool_dir, target, keep=keep)
    for record_id, why in result.skipped:
        err(f"{PROG}: not exported: queued record {record_id}: {why}")
    kept = "; they stay in the queue too (--keep)" if keep else "; removed from the queue"
    n = len(result.written)
    click.echo(f"{n} record{'' if n == 1 else 's'} written to {target} as C spool files"
               + (kept if result.written else ""))
    return 0


# --- entry point --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main()
