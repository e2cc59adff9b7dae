"""telemprobd: the ingest daemon.

Probes send one record per connection on the telemetry socket (libtelemetry framing);
telemprobd checks consent, validates the frame, writes in the machine id, applies the
rate limits and the spool quota, commits the record to the queue durably (group commit)
and then acknowledges it.  telempostd delivers from the queue.

Signals: SIGHUP reloads the configuration (a bad file is refused and the running
settings kept); SIGTERM and SIGINT finish the records in flight and exit 0.  When
started by systemd (socket activation or a service unit) and `daemon_recycling_enabled`,
it exits after daemon_idle_time (300 s) without a client; the socket unit starts it again.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time

from telemetry import config as config_mod
from telemetry import log as log_mod
from telemetry.bootid import read_boot_id
from telemetry.cli import VERSION, ConfigFile, command_attribute, handle_errors, program_main
from telemetry.daemons.probd.core import Settings
from telemetry.daemons.probd.ingest import IngestLoop
from telemetry.daemons.probd.listener import check_config, open_listener
from telemetry.daemons.probd.ratelimit import RateLimiter
from telemetry.daemons.probd.staging import LIMITER_META_KEY, Stager, elapsed_since
from telemetry.daemons.runtime.lifecycle import started_by_systemd
from telemetry.daemons.runtime.notify import notify
from telemetry.daemons.runtime.umask import make_files_private
from telemetry.machineid import MachineId
from telemetry.optin import is_opted_in
from telemetry.options import Options
from telemetry.paths import Mode, Paths

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    import click

PROGRAM = "telemprobd"
log = logging.getLogger(PROGRAM)


def restore_limiter(stager: Stager, settings: Settings, boot_id: str) -> RateLimiter:
    """The limiter as the previous run left it (spec/defects.md A4: limits survive restarts)."""
    raw = stager.read_meta(LIMITER_META_KEY)
    mono, wall = time.monotonic(), time.time()
    if not raw:
        return RateLimiter(settings.policy)
    try:
        saved = json.loads(raw)
        snapshot = json.dumps(saved["limits"])
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring unreadable rate-limit state in the queue")
        return RateLimiter(settings.policy)
    elapsed = elapsed_since(saved, boot_id=boot_id, mono=mono, wall=wall)
    return RateLimiter.restore(settings.policy, snapshot, mono, elapsed)


def serve(paths: Paths, cfg, config_file: str | None) -> int:
    make_files_private()
    settings = Settings.from_config(cfg)
    listener = open_listener(cfg.socket_path, create_dir=paths.mode is Mode.USER)
    try:
        machine_id = MachineId(paths)
        machine_id.refresh()
        boot_id = read_boot_id()
        stager = Stager(cfg.spool_dir, paths.journal_dir, PROGRAM)
        if is_opted_in(paths):  # consent first, for these records as for any other
            stager.import_c_spool()
        limiter = restore_limiter(stager, settings, boot_id)

        def reload() -> Settings | None:
            try:
                new = config_mod.load(paths, config_file)
            except config_mod.ConfigError as e:
                log.error("reloading the configuration failed: %s; keeping the previous settings", e)
                return None
            log.info("configuration reloaded from %s", new.source or "built-in defaults")
            new.log_notices(log)
            return Settings.from_config(new)

        loop = IngestLoop(
            listener=listener,
            settings=settings,
            stager=stager,
            limiter=limiter,
            machine_id=machine_id,
            paths=paths,
            idle_exit=listener.activated or started_by_systemd(),
            boot_id=boot_id,
            reload=reload,
            notify=notify,
        )
        try:
            code = loop.run()
        finally:
            stager.close()
        log.info("exiting: %s; %s", loop.counters.status(), stager.describe())
        return code
    finally:
        listener.close()


EPILOG = """\b
Switching from the C telemetrics-client: at start (opted in), the record files a C
telemprobd left in spool_dir are queued with their original headers and staging time
and removed, exactly once; a damaged one is kept in the journal (set-aside), any other
file left alone; each is logged and counted (c-spool:* in telemctl status).

\b
Listening: on the socket systemd passes (telemprobd.socket); started by hand, it binds
socket_path itself (mode 0666, a stale socket is replaced, a symbolic link refused).

\b
Signals:
  SIGHUP           reload telemetrics.conf; a bad file is logged and the old settings kept
  SIGTERM, SIGINT  finish the records being read, commit and acknowledge them, exit 0

\b
systemd: Type=notify (READY=1, STATUS= with the counters, WATCHDOG=1 when WatchdogSec=
is set).  Started by systemd with daemon_recycling_enabled=true, it exits after
daemon_idle_time (300 s) without work; the socket starts it again.

\b
Files (system mode; user mode keeps them in the XDG directories, see telemctl(1)):
  /etc/telemetrics/opt-in              nothing is accepted without it
  /var/spool/telemetry/                the C client's record files, imported at start
  /var/spool/telemetry/queue/queue.db  the queue (SQLite, WAL; synced as sync_interval says)
  /var/lib/telemetry/machine_id        the machine id, replaced every 3 days
  /var/log/telemetry/journal.db        records refused for lack of spool space

\b
Exit status:
  0  stopped by a signal, or exited for recycling
  1  it cannot start (a bad configuration, a socket it cannot listen on); one line says why

\b
Examples:
  systemctl status telemprobd.socket telemprobd.service   how systemd runs it
  telemprobd -f /etc/telemetrics/test.conf                by hand, with another configuration
  telemctl --user start                                   as your own process (user mode)
"""


# Read without click unless it is asked for help or the command line is wrong (telemetry.options).
OPTIONS = Options(ConfigFile(), VERSION)


@handle_errors
def run(config_file: str | None) -> None:
    """Accept records from probes on the telemetry socket, validate and rate-limit them,
    queue them durably for telempostd and acknowledge each one.

    Every record is checked (framing, headers, sizes, classification), counted against the
    rate limits (per machine and per sending user), stamped with the machine id and
    committed to the queue together with the other records waiting at that moment; only
    then does its sender get the acknowledgement, so an acknowledged record survives a
    crash or a power cut.  Settings: telemetrics.conf(5)."""
    paths = Paths.detect()
    cfg = config_mod.load(paths, config_file)
    check_config(cfg)  # refuse a bad config before anything is logged
    log_mod.setup(PROGRAM, cfg.log_level)
    log.info("configuration: %s", cfg.source or "built-in defaults")
    cfg.log_notices(log)
    sys.exit(serve(paths, cfg, config_file))


@functools.cache
def _command() -> click.Command:
    from telemetry.command import build_command

    return build_command(PROGRAM, OPTIONS, run, epilog=EPILOG,
                         short_help="receive the probes' records, check them and queue them for telempostd")


main = program_main(PROGRAM, OPTIONS, run, _command)
__getattr__ = command_attribute(__name__, _command)

if __name__ == "__main__":
    main()
