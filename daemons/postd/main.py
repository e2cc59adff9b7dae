"""telempostd: delivers queued records to the collector.

It wakes when telemprobd commits records (inotify on the queue's wake-up file, and a
look at start for what was queued while it was down), sends what is due oldest first
with several requests in flight on kept-alive connections, and decides each record's
fate: delivered, rejected for good, rejected locally (the collector could never accept
it), kept for a retry with backoff, expired, or set aside (the row holds no readable
record). Every decided record is journaled; with retention on, its payload is kept.

Signals: SIGTERM/SIGINT let the requests in flight finish, record their outcome and exit
0; SIGHUP reloads the config (a bad file is logged and the old settings kept). Started by
systemd (INVOCATION_ID set) with daemon_recycling_enabled, it exits after daemon_idle_time
(300 s) without work once the queue is empty; path activation starts it again. Otherwise
it sleeps until woken or until the next retry, expiry or deferral is due.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import random
import selectors
import signal
import time
from collections.abc import Callable

from telemetry import config as config_mod
from telemetry import log as log_mod
from telemetry.bootid import read_boot_id
from telemetry.cli import VERSION, ConfigFile, command_attribute, handle_errors, program_main
from telemetry.daemons.postd import spool
from telemetry.daemons.postd.backoff import Gate
from telemetry.daemons.postd.core import (
    DAEMON,
    DONE,
    RECORD_WARNINGS_PER_PASS,
    SETTLE_IN_WINDOW,
    WAIT,
    Courier,
    Fetch,
    Query,
    Release,
    Send,
    Settings,
    Settle,
    Settlement,
    SettlePolicy,
)
from telemetry.daemons.postd.endpoint import (
    DeliverySettings,
    RequestRefused,
    check_settings,
    delivery_settings,
)
from telemetry.daemons.postd.inotify import FileWatch
from telemetry.daemons.postd.request import RequestFormat
from telemetry.daemons.postd.transport import Transport, TransportFactory
from telemetry.daemons.runtime.lifecycle import started_by_systemd
from telemetry.daemons.runtime.notify import notify
from telemetry.daemons.runtime.signals import RELOAD_SIGNALS, Signals
from telemetry.daemons.runtime.umask import make_files_private
from telemetry.daemons.runtime.watchdog import Watchdog
from telemetry.daemons.store import cjournal
from telemetry.daemons.store import delivery as state_mod
from telemetry.daemons.store.journal import Counter, Journal, JournalError
from telemetry.daemons.store.queue import WAKEUP_FILE, Queue, QueuedRecord, QueueError, queue_dir
from telemetry.entry import require
from telemetry.errors import TelemetryError
from telemetry.options import ClickOnly, Options
from telemetry.paths import Paths

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    import click

log = logging.getLogger(DAEMON)

__all__ = ["RECORD_WARNINGS_PER_PASS", "Counter", "Postd", "Settings", "main", "serve", "settings_from"]

# Longest wait for an in-flight transfer between checks of signals and the gate.
POLL_WAIT = 0.5
# After a queue error that is not damage (disk full, locked too long): look again after.
QUEUE_ERROR_RETRY = 5.0
JOURNAL_REOPEN_INTERVAL = 60.0
# Longest single sleep; far-off wake times (an expiry in years) are re-computed after it.
MAX_SLEEP = 3600.0
SQLITE_CACHE_KIB = 256
# The delivery state file (`telemctl status`) is rewritten at most this often while it changes.
STATE_INTERVAL = 1.0


def settings_from(cfg: config_mod.Config) -> Settings:
    delivery = delivery_settings(cfg)
    if cfg.record_server_delivery_enabled:
        check_settings(delivery)
    return Settings(
        delivery=delivery,
        request_format=RequestFormat(cfg.request_format),
        tid=config_mod.tid_header(cfg),
        base_delay=float(cfg.spool_process_time),
        retry_max_delay=float(cfg.retry_max_delay),
        record_expiry=cfg.record_expiry,
        delivery_enabled=cfg.record_server_delivery_enabled,
        retention_enabled=cfg.record_retention_enabled,
        recycling=cfg.daemon_recycling_enabled,
        idle_after=float(cfg.daemon_idle_time),
        spool_dir=cfg.spool_dir,
        log_level=cfg.log_level,
        metrics_textfile=cfg.metrics_textfile,
        spool_max_size_kib=cfg.spool_max_size,
        probe_interval=float(cfg.retry_probe_interval),
    )


def curl_transport(settings: DeliverySettings) -> Transport:
    from telemetry.daemons.postd.curl import (
        CurlTransport,  # libcurl is loaded once there is something to send
    )

    return CurlTransport(settings)


class Postd:
    """The loop around `core.Courier`: the queue, the journal, the transport and the clock.

    One pass (`run_pass`) does what the courier asks until it is done; `serve` adds the
    waiting between passes.  `transport` makes the HTTP transport (pycurl by default; a
    `transport.MemoryTransport` in tests that need no network).
    """

    def __init__(
        self,
        paths: Paths,
        cfg: config_mod.Config,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        boot_id: str | None = None,
        by_systemd: bool | None = None,
        idle_after: float | None = None,
        transport: TransportFactory = curl_transport,
        settle: SettlePolicy = SETTLE_IN_WINDOW,
    ):
        self.paths = paths
        settings = settings_from(cfg)
        if cfg.cainfo and not os.path.isfile(cfg.cainfo):
            log.warning("cainfo %s does not exist; using the system CA store", cfg.cainfo)
        self.clock = clock
        self.boot_id = read_boot_id() if boot_id is None else boot_id
        self.core = Courier(settings, boot_id=self.boot_id, rng=rng, policy=settle)
        self.by_systemd = started_by_systemd() if by_systemd is None else by_systemd
        self._idle_after = idle_after  # None: daemon_idle_time
        self.queue = self._open_queue(settings.spool_dir)
        self.journal: Journal | None = None
        self._journal_tried = float("-inf")
        self._open_journal()
        self._make_transport = transport
        self._transport: Transport | None = None
        self.reload_requested = False
        self.last_activity = clock()
        self._queue_retry_at: float | None = None
        self._textfile: Any = None  # ctl.metrics.TextfileWriter, when metrics_textfile is set
        # On the real clock, not `clock`: systemd's timeout runs on it.
        self.watchdog = Watchdog.from_environment(time.monotonic())
        try:
            previous = state_mod.read(settings.spool_dir)
        except OSError:
            previous = None
        if previous is not None:  # what was learnt before a restart, not the pause it was in
            self.core.last_success, self.core.last_error = previous.last_success, previous.last_error
        self._state: state_mod.DeliveryState | None = None
        self._pid = os.getpid()
        self._state_written = float("-inf")
        self._release_waits("started")
        self._refresh_view()

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def gate(self) -> Gate:
        return self.core.gate

    @property
    def view(self) -> spool.QueueView:
        return self.core.view

    @property
    def stopping(self) -> bool:
        return self.core.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self.core.stopping = value

    # --- resources ---------------------------------------------------------------------

    def _open_queue(self, spool_dir: str) -> Queue:
        # Rows are read once, in order: a small page cache keeps the daemon small.  Fates
        # are not synced each: they are on disk with telemprobd's next sync of the WAL they
        # share (within sync_interval) or a checkpoint, and a power cut before that repeats
        # a delivery, it never loses a record.  Deleted rows are overwritten with zeros in
        # the pages a settle writes anyway, not by writing every page they leave empty
        # (secure_delete=FAST; Debian's SQLite writes them, upstream's zeroes nothing):
        # those pages go back to telemprobd's next records.
        return Queue(spool_dir, cache_kib=SQLITE_CACHE_KIB, sync_commits=False, background_checkpoints=True,
                     secure_delete="FAST")

    def _open_journal(self) -> None:
        now = self.clock()
        if self.journal is not None or now - self._journal_tried < JOURNAL_REOPEN_INTERVAL:
            return
        self._journal_tried = now
        try:
            self.journal = Journal(self.paths.journal_dir, boot_id=self.boot_id)
        except JournalError as e:
            log.error("journal unavailable, records are delivered without journal entries: %s", e)
            return
        try:
            cjournal.import_file(self.journal, os.path.join(self.paths.journal_dir, cjournal.C_JOURNAL))
        except JournalError as e:
            log.error("cannot import the C client's journal now: %s", e)

    def _transport_now(self) -> Transport:
        if self._transport is None:
            self._transport = self._make_transport(self.settings.delivery)
        return self._transport

    def _capacity(self) -> int:
        if self._transport is None:  # an idle daemon never loads libcurl
            return self.settings.delivery.max_in_flight
        return self._transport.capacity()

    def _drop_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def close(self) -> None:
        self._drop_transport()
        if self.journal is not None:
            self.journal.close()
        self.queue.close()

    def _release_waits(self, why: str) -> None:
        """A new process or configuration: the waits that earlier failures set are not
        kept (they were for a collector or settings that may be fixed now); one failure
        closes the gate again for everyone."""
        try:
            released = self.queue.release_retries()
        except QueueError as e:
            log.error("%s", e)
            return
        if released:
            log.info("%s: %d records that waited for a retry are due now", why, released)

    def write_state(self, *, force: bool = False) -> None:
        """Tell `telemctl status` what delivery learnt, when it changed: at once with
        `force` (the end of a pass), else at most once a second."""
        core, now = self.core, self.clock()
        if not force and now - self._state_written < STATE_INTERVAL:
            return  # (after every settle while records flow: nothing is built)
        paused = core.pause if not core.gate.is_open(now) else None
        state = state_mod.DeliveryState(
            self._pid, now, core.last_success, core.last_error, paused,
            core.gate.open_at if paused is not None else None, core.probe_at if paused is not None else None)
        if self._state is not None and dataclasses.replace(state, written_at=0) == dataclasses.replace(
                self._state, written_at=0):
            return
        try:
            state_mod.write(self.settings.spool_dir, state)
        except (OSError, TelemetryError) as e:
            log.debug("cannot write %s: %s", state_mod.STATE_FILE, e)
            return
        self._state, self._state_written = state, now

    def reload(self, cfg: config_mod.Config) -> None:
        """Apply a new config between passes; the gate reopens (the fix may be in it)."""
        settings = settings_from(cfg)
        if settings.spool_dir != self.settings.spool_dir:
            queue = self._open_queue(settings.spool_dir)  # may fail: the old one stays in use
            self.queue.close()
            self.queue = queue
        self._drop_transport()
        if settings.log_level != self.settings.log_level:
            logging.getLogger().setLevel(log_mod.LEVELS.get(settings.log_level, logging.INFO))
        self.core.reload(settings)
        self._release_waits("configuration reloaded")
        self._refresh_view()
        log.info("configuration reloaded from %s", cfg.source or "built-in defaults")
        cfg.log_notices(log)
        if (warning := config_mod.plaintext_warning(cfg)) is not None:
            log.warning("%s", warning)

    # --- one pass ----------------------------------------------------------------------

    def run_pass(self) -> collections.Counter[Counter]:
        """Expire, then deliver (or keep locally) everything due; returns what happened."""
        core = self.core
        tally: collections.Counter[Counter] = collections.Counter()
        try:
            self.queue.follow()
            now = self.clock()
            core.start_pass(now)
            while True:
                action = core.step(now, self._capacity())
                if isinstance(action, Send):
                    try:
                        self._transport_now().submit(action.token, action.request)
                    except RequestRefused as e:
                        core.refused(action.token, str(e), now)
                    continue
                if action is DONE:
                    break
                # Waiting, reading and writing take time: the clock is read again after them.
                if action is WAIT:
                    for token, response in self._transport_now().poll(core.wait_limit(now, POLL_WAIT)):
                        core.answered(token, response, self.clock())
                elif isinstance(action, Fetch):
                    core.fetched(self._fetch(action), now)
                elif isinstance(action, Settle):
                    self._settle(action.settlement)
                    tally.update(action.settlement.counts)
                    self.write_state()
                elif isinstance(action, Release):
                    released = self.queue.release_retries(action.until)
                    log.info("%d records that waited for the collector are due now", released)
                self.keep_alive()
                now = self.clock()
            self._queue_retry_at = None
        except QueueError as e:
            if core.abandon():
                self._drop_transport()  # forget the transfers; their rows stay as they are
            log.error("%s; trying again in %.0f s", e, QUEUE_ERROR_RETRY)
            self._queue_retry_at = self.clock() + QUEUE_ERROR_RETRY
        self._refresh_view()
        self.write_state(force=True)
        unlogged = core.finish_pass()
        if unlogged > 0:
            log.warning("%d more records were set aside or rejected in this pass (not logged one by one; "
                        "'telemctl journal -o OUTCOME' lists them)", unlogged)
        if sum(tally.values()):
            self.last_activity = self.clock()
            self._log_pass(tally)
        return tally

    def _fetch(self, f: Fetch) -> list[QueuedRecord]:
        if f.query is Query.EXPIRED:
            return self.queue.received_before(f.cutoff, f.limit)
        if f.query is Query.DUE:
            return self.queue.due_after(f.now, f.after, f.limit)
        if f.query is Query.PROBE:
            row = self.queue.first_sendable(f.now)
            return [] if row is None else [row]
        return self.queue.after(f.after, f.limit)

    def _settle(self, s: Settlement) -> None:
        """Journal first, then the queue: a crash in between repeats a record's processing
        (one journal entry, at most one duplicate POST), never loses it."""
        self.keep_alive()
        if s.entries:
            self._open_journal()
            if self.journal is not None:
                try:
                    self.journal.add(s.entries, s.retained, s.aside)
                except JournalError as e:
                    log.error("%s", e)
        self.queue.follow()  # telemprobd may have replaced a damaged file since: rows keep their positions
        self.queue.settle((), s.retry, s.queue_counters, delete_seqs=s.delete)

    def _log_pass(self, tally: collections.Counter[Counter]) -> None:
        text = ", ".join(f"{c.value} {n}" for c, n in tally.items() if n)
        log.info("%s", text)
        if self.view.rows and not self.gate.is_open(self.clock()):
            wait = self.gate.open_at - self.clock()
            log.info("%d records wait; next delivery attempt in %.0f s", self.view.rows, wait)
            self.notify(f"STATUS={self.view.rows} records waiting; collector retry in {wait:.0f} s")
        else:
            self.notify(f"STATUS={self.view.rows} records queued")
        if self.settings.metrics_textfile:
            from telemetry.daemons.ctl.metrics import refresh_textfile

            s = self.settings
            self._textfile = refresh_textfile(self._textfile, s.metrics_textfile, self.paths, s.spool_dir,
                                              s.spool_max_size_kib, time.monotonic())

    def keep_alive(self) -> None:
        """Ping systemd's watchdog when due: from the main loop, and within a long pass."""
        self.watchdog.ping_if_due(time.monotonic(), self.notify)

    notify = staticmethod(notify)

    def _refresh_view(self) -> None:
        try:
            self.core.view = spool.QueueView(*self.queue.overview())
        except QueueError as e:
            log.error("%s", e)
            self.core.view = spool.QueueView(0, None, None)

    # --- waiting -----------------------------------------------------------------------

    @property
    def idle_after(self) -> float:
        return self.settings.idle_after if self._idle_after is None else self._idle_after

    def idle_deadline(self) -> float | None:
        return spool.idle_deadline(
            last_activity=self.last_activity, idle_after=self.idle_after, recycling=self.settings.recycling,
            started_by_systemd=self.by_systemd, queued_rows=self.view.rows,
        )

    def should_exit_idle(self) -> bool:
        deadline = self.idle_deadline()
        return deadline is not None and self.clock() >= deadline

    def next_wake(self) -> float | None:
        wake = self.core.next_wake(self.clock(), self.idle_deadline())
        if self._queue_retry_at is not None:
            # The queue failed (disk full, locked): records already due must not make the
            # daemon retry at once, in a loop, until the retry time.
            wake = self._queue_retry_at if wake is None else max(wake, self._queue_retry_at)
        return wake

    def pass_due(self) -> bool:
        """Whether a pass can do anything now (see `Courier.pass_due`)."""
        return self.core.pass_due(self.clock(), self.next_wake())


def serve(postd: Postd, config_file: str | None) -> None:
    # The loop and the passes look at postd.stopping; the signal only sets it.
    signals = Signals(reload=RELOAD_SIGNALS, on_stop=lambda: setattr(postd, "stopping", True),
                      on_reload=lambda: setattr(postd, "reload_requested", True)).install()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    watch = FileWatch(queue_dir(postd.settings.spool_dir), WAKEUP_FILE)
    sel = selectors.DefaultSelector()
    sel.register(watch.fileno(), selectors.EVENT_READ, "queue")
    sel.register(signals.fileno(), selectors.EVENT_READ, "signal")
    log.info("delivering %s to %s (%s requests, up to %d in flight)%s", postd.queue.path,
             postd.settings.delivery.url, postd.settings.request_format.value,
             postd.settings.delivery.max_in_flight,
             "" if postd.settings.delivery_enabled else "; delivery disabled, records kept locally only")
    postd.notify("READY=1")
    try:
        postd.run_pass()
        while not postd.stopping:
            if postd.reload_requested:
                postd.reload_requested = False
                old_dir = postd.settings.spool_dir
                try:
                    postd.reload(config_mod.load(postd.paths, config_file))
                except TelemetryError as e:
                    log.error("reload failed, keeping the current settings: %s", e)
                if postd.settings.spool_dir != old_dir:
                    sel.unregister(watch.fileno())
                    watch.close()
                    watch = FileWatch(queue_dir(postd.settings.spool_dir), WAKEUP_FILE)
                    sel.register(watch.fileno(), selectors.EVENT_READ, "queue")
                postd.run_pass()
                continue
            if postd.should_exit_idle():
                log.info("Telemetry post daemon exiting for recycling")
                break
            postd.keep_alive()
            wake = postd.next_wake()
            timeout = None if wake is None else min(MAX_SLEEP, max(0.0, wake - postd.clock()))
            ping_in = postd.watchdog.next_at - time.monotonic()
            ping_only = timeout is None or ping_in < timeout  # woken only to ping: no pass
            if ping_only and postd.watchdog.interval is not None:
                timeout = max(0.0, ping_in)
            events = sel.select(timeout)
            for key, _ in events:
                if key.data == "queue":
                    if watch.read():
                        postd.last_activity = postd.clock()
                else:
                    signals.drain()
            if postd.stopping:
                break
            if not events and ping_only and postd.watchdog.interval is not None:
                continue
            if not postd.reload_requested and postd.pass_due():
                postd.run_pass()
        postd.notify("STOPPING=1")
    finally:
        sel.close()
        watch.close()
        signals.close()


EPILOG = """\b
Signals:
  SIGHUP           reload telemetrics.conf; a bad file is logged and the old settings kept
  SIGTERM, SIGINT  start no new request; the ones in flight finish and are recorded; exit 0

\b
systemd: Type=notify (READY=1, STATUS=, WATCHDOG=1 when WatchdogSec= is set).  Started
by systemd with daemon_recycling_enabled=true, it exits after daemon_idle_time (300 s)
without work once
nothing is queued; telempostd.path starts it again when a record is queued.

\b
Switching from the C telemetrics-client: at start, the entries of the C journal
(/var/log/telemetry/journal) are copied into journal.db once, as outcome "imported".

\b
Files (system mode; user mode keeps them in the XDG directories, see telemctl(1)):
  /var/spool/telemetry/queue/queue.db       the queue it delivers from
  /var/spool/telemetry/queue/queue.changed  touched by telemprobd at each commit
  /var/spool/telemetry/queue/delivery.json  last delivery, last error, why delivery waits
                                            (read by 'telemctl status')
  /var/log/telemetry/journal.db             what became of each record, and retained payloads
  /var/log/telemetry/journal                the C client's journal, imported once at start

\b
Exit status:
  0  stopped by a signal, or exited for recycling
  1  it cannot start (a bad configuration, an unusable queue); one line says why

\b
Examples:
  systemctl status telempostd.path telempostd.service   how systemd runs it
  systemctl reload telempostd                           read telemetrics.conf again (SIGHUP)
  telemctl journal -n 20                                what became of the last 20 records
"""


def _idle_exit_after(f: Callable[..., Any]) -> Callable[..., Any]:
    """Sub-second idle times for the tests; daemon_idle_time is the setting."""
    import click

    return click.option("--idle-exit-after", type=click.FloatRange(min=0), default=None, hidden=True)(f)


# Read without click unless it is asked for help or the command line is wrong (telemetry.options).
OPTIONS = Options(ConfigFile(), VERSION, ClickOnly(_idle_exit_after, (("idle_exit_after", None),)))


@handle_errors
def run(config_file: str | None, idle_exit_after: float | None) -> None:
    """Deliver queued telemetry records to the collector.

    Records are POSTed to `server` in queue order, several at a time over kept-alive
    connections, in the request format `request_format` chooses.  A 2xx removes the
    record; a 4xx other than 408 and 429 rejects it for good (once the collector has taken
    a record: the same 4xx for every record is a configuration error, and pauses delivery);
    anything else keeps it for another attempt after an exponential backoff (Retry-After
    honoured) until `record_expiry`, while one record every `retry_probe_interval` checks
    whether the collector answers again.  Each outcome goes to the journal ('telemctl journal').  Settings:
    telemetrics.conf(5)."""
    require("pycurl")  # imported at the first delivery
    os.environ["LC_ALL"] = "C"
    make_files_private()
    paths = Paths.detect()
    cfg = config_mod.load(paths, config_file)
    settings_from(cfg)  # refuse a bad config before anything is logged
    log_mod.setup(DAEMON, cfg.log_level)
    log.info("configuration: %s", cfg.source or "built-in defaults")
    cfg.log_notices(log)
    if (warning := config_mod.plaintext_warning(cfg)) is not None:
        log.warning("%s", warning)
    postd = Postd(paths, cfg, idle_after=idle_exit_after)
    try:
        serve(postd, config_file)
    finally:
        postd.close()


@functools.cache
def _command() -> click.Command:
    from telemetry.command import build_command

    return build_command(DAEMON, OPTIONS, run, epilog=EPILOG)


main = program_main(DAEMON, OPTIONS, run, _command)
__getattr__ = command_attribute(__name__, _command)

if __name__ == "__main__":
    main()
