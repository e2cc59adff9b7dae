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
(300 s) without work once the queue is empty; path activation starts it again. Otherwise it sleeps until
woken or until the next retry, expiry or deferral is due.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import selectors
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from telemetry import config as config_mod
from telemetry import log as log_mod
from telemetry.cli import VERSION, ConfigFile, command_attribute, handle_errors, program_main
from telemetry.contract import check_header_block, check_record, check_record_id, printable_id
from telemetry.daemons.postd import spool
from telemetry.daemons.postd.backoff import Gate, next_attempt_at
from telemetry.daemons.postd.endpoint import DeliverySettings, RequestRefused, check_settings
from telemetry.daemons.postd.inotify import FileWatch
from telemetry.daemons.postd.outcome import Classified, Response, Verdict, classify
from telemetry.daemons.postd.request import Request, RequestFormat, build_request
from telemetry.daemons.runtime.signals import RELOAD_SIGNALS, Signals
from telemetry.daemons.runtime.watchdog import Watchdog
from telemetry.daemons.store.journal import (
    Counter,
    Journal,
    JournalEntry,
    JournalError,
    Outcome,
    SetAside,
    entry_for,
    read_boot_id,
)
from telemetry.daemons.store.queue import (
    WAKEUP_FILE,
    Queue,
    QueuedRecord,
    QueueError,
    is_corruption,
)
from telemetry.entry import require
from telemetry.errors import TelemetryError
from telemetry.options import ClickOnly, Options
from telemetry.paths import Paths
from telemetry.record import Record, RecordError, parse_header_block

if TYPE_CHECKING:
    import click

    from telemetry.daemons.postd.delivery import Delivery

DAEMON = "telempostd"
log = logging.getLogger(DAEMON)

# Longest wait for an in-flight transfer between checks of signals and the gate.
POLL_WAIT = 0.5
# After a queue error that is not damage (disk full, locked too long): look again after.
QUEUE_ERROR_RETRY = 5.0
JOURNAL_REOPEN_INTERVAL = 60.0
# Longest single sleep; far-off wake times (an expiry in years) are re-computed after it.
MAX_SLEEP = 3600.0
SQLITE_CACHE_KIB = 256
# A pass logs the first records it sets aside or that are rejected one line each, and
# only counts the rest: a queue of damaged rows must not flood the log (the journal has
# every one of them).
RECORD_WARNINGS_PER_PASS = 10
_CLASSIFICATION = b"classification: "
_EVENT_ID = b"event_id: "


@dataclass(frozen=True)
class Settings:
    """What telempostd takes from the config, checked at load."""

    delivery: DeliverySettings
    request_format: RequestFormat
    tid: tuple[str, str]
    base_delay: float
    retry_max_delay: float
    record_expiry: int
    delivery_enabled: bool
    retention_enabled: bool
    recycling: bool
    idle_after: float
    spool_dir: str
    log_level: str
    metrics_textfile: str = ""
    spool_max_size_kib: int = -1


def settings_from(cfg: config_mod.Config) -> Settings:
    delivery = DeliverySettings(
        url=cfg.server,
        cainfo=cfg.cainfo,
        client_cert=cfg.tls_client_cert,
        client_key=cfg.tls_client_key,
        max_in_flight=cfg.max_in_flight,
        connect_timeout=cfg.connect_timeout,
        request_timeout=cfg.request_timeout,
    )
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
    )


@dataclass(frozen=True)
class Decision:
    """The fate of one queue row: final (`outcome` set) or tried again later."""

    row: QueuedRecord
    record: Record | None
    counter: Counter
    outcome: Outcome | None = None
    detail: str = ""
    http_status: int | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0


def _header_value(headers: bytes, prefix: bytes, limit: int) -> str:
    """Best-effort field of a row that does not parse, for its journal entry."""
    for line in headers.split(b"\n"):
        if line.startswith(prefix):
            return line[len(prefix):][:limit].decode("utf-8", errors="replace")
    return ""


def started_by_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID"))


class Postd:
    """The daemon's state and one pass over the queue; `serve` adds the waiting."""

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
    ):
        self.paths = paths
        self.settings = settings_from(cfg)
        if cfg.cainfo and not os.path.isfile(cfg.cainfo):
            log.warning("cainfo %s does not exist; using the system CA store", cfg.cainfo)
        self.clock = clock
        self.rng = rng or random.Random()
        self.boot_id = read_boot_id() if boot_id is None else boot_id
        self.by_systemd = started_by_systemd() if by_systemd is None else by_systemd
        self._idle_after = idle_after  # None: daemon_idle_time
        self.queue = self._open_queue(self.settings.spool_dir)
        self.journal: Journal | None = None
        self._journal_tried = float("-inf")
        self._open_journal()
        self._delivery: Delivery | None = None
        self.gate = Gate()
        self.stopping = False
        self.reload_requested = False
        self.last_activity = clock()
        self._config_error_logged = False
        self._queue_retry_at: float | None = None
        self._record_warnings = 0  # in the current pass
        self._textfile: Any = None  # ctl.metrics.TextfileWriter, when metrics_textfile is set
        # On the real clock, not `clock`: systemd's timeout runs on it.
        self.watchdog = Watchdog.from_environment(time.monotonic())
        self.view = spool.QueueView(0, None, None)
        self._refresh_view()

    # --- resources ---------------------------------------------------------------------

    @staticmethod
    def _open_queue(spool_dir: str) -> Queue:
        try:
            queue = Queue(spool_dir)
        except OSError as e:  # the spool directory cannot be created
            raise QueueError(f"{spool_dir}: {e.strerror or e}") from None
        # Rows are read once, in order: a small page cache keeps the daemon small.
        queue.db.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        return queue

    def _open_journal(self) -> None:
        now = self.clock()
        if self.journal is not None or now - self._journal_tried < JOURNAL_REOPEN_INTERVAL:
            return
        self._journal_tried = now
        try:
            self.journal = Journal(self.paths.journal_dir, boot_id=self.boot_id)
        except JournalError as e:
            log.error("journal unavailable, records are delivered without journal entries: %s", e)

    def delivery(self) -> Delivery:
        if self._delivery is None:
            from telemetry.daemons.postd.delivery import (
                Delivery,  # libcurl is loaded once there is something to send
            )

            self._delivery = Delivery(self.settings.delivery)
        return self._delivery

    def close(self) -> None:
        if self._delivery is not None:
            self._delivery.close()
            self._delivery = None
        if self.journal is not None:
            self.journal.close()
        self.queue.close()

    def reload(self, cfg: config_mod.Config) -> None:
        """Apply a new config between passes; the gate reopens (the fix may be in it)."""
        settings = settings_from(cfg)
        if settings.spool_dir != self.settings.spool_dir:
            queue = self._open_queue(settings.spool_dir)  # may fail: the old one stays in use
            self.queue.close()
            self.queue = queue
        if self._delivery is not None:
            self._delivery.close()
            self._delivery = None
        if settings.log_level != self.settings.log_level:
            logging.getLogger().setLevel(log_mod.LEVELS.get(settings.log_level, logging.INFO))
        self.settings = settings
        self.gate = Gate()
        self._config_error_logged = False
        self._refresh_view()
        log.info("configuration reloaded from %s", cfg.source or "built-in defaults")
        cfg.log_notices(log)
        if (warning := config_mod.plaintext_warning(cfg)) is not None:
            log.warning("%s", warning)

    # --- one pass ----------------------------------------------------------------------

    def run_pass(self) -> collections.Counter[Counter]:
        """Expire, then deliver (or keep locally) everything due; returns what happened."""
        tally: collections.Counter[Counter] = collections.Counter()
        self._record_warnings = 0
        try:
            self._expire(tally)
            if not self.settings.delivery_enabled:
                self._keep_local(tally)
            elif self.gate.is_open(self.clock()):
                self._pump(tally)
            self._queue_retry_at = None
        except sqlite3.DatabaseError as e:
            if is_corruption(e):
                self.queue.reopen_after_corruption(e)
            else:
                log.error("queue %s: %s; trying again in %.0f s", self.queue.path, e, QUEUE_ERROR_RETRY)
                self._queue_retry_at = self.clock() + QUEUE_ERROR_RETRY
        self._refresh_view()
        unlogged = self._record_warnings - RECORD_WARNINGS_PER_PASS
        if unlogged > 0:
            log.warning("%d more records were set aside or rejected in this pass (not logged one by one; "
                        "'telemctl journal -o OUTCOME' lists them)", unlogged)
        if sum(tally.values()):
            self.last_activity = self.clock()
            self._log_pass(tally)
        return tally

    def _warn_record(self, message: str, *args: object) -> None:
        """A record set aside or rejected: a warning for the first few of a pass, a count for the rest."""
        self._record_warnings += 1
        if self._record_warnings <= RECORD_WARNINGS_PER_PASS:
            log.warning(message, *args)

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

    @staticmethod
    def notify(message: str) -> None:
        """sd_notify, when systemd asked for it (Type=notify)."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        try:
            from systemd import daemon as sd

            sd.notify(message)
        except Exception:  # no systemd-python, or the socket went away: nothing to tell
            pass

    def _refresh_view(self) -> None:
        try:
            rows, _ = self.queue.stats()
            self.view = spool.QueueView(rows, self.queue.next_due_time(), self.queue.oldest_received_at())
        except sqlite3.Error as e:
            log.error("queue %s: %s", self.queue.path, e)
            self.view = spool.QueueView(0, None, None)

    def _expire(self, tally: collections.Counter[Counter]) -> None:
        now = self.clock()
        cutoff = spool.expiry_cutoff(now, self.settings.record_expiry)
        while True:
            rows = self.queue.received_before(cutoff, spool.FETCH_SLICE)
            if not rows:
                return
            self._commit([self._expired(row, self._parse(row)[0]) for row in rows], tally)

    def _keep_local(self, tally: collections.Counter[Counter]) -> None:
        """record_server_delivery_enabled=false: journal (and retain) every record, post none."""
        cursor = 0
        while not self.stopping:
            rows = self.queue.after(cursor, spool.FETCH_SLICE)
            if not rows:
                return
            cursor = rows[-1].seq
            self._commit([self._prepare(row, self.clock()) for row in rows], tally)  # type: ignore[misc]

    def _parse(self, row: QueuedRecord) -> tuple[Record | None, str]:
        try:
            return parse_header_block(row.headers, row.payload), ""
        except RecordError as e:
            return None, str(e)
        except (ValueError, TypeError) as e:  # bytes no record check anticipated
            return None, f"{type(e).__name__}: {e}"

    def _local(self, row: QueuedRecord, record: Record | None, outcome: Outcome, detail: str) -> Decision:
        return Decision(row, record, Counter(outcome.value), outcome, detail, attempts=row.attempts)

    def _expired(self, row: QueuedRecord, record: Record | None) -> Decision:
        detail = f"not delivered within record_expiry ({self.settings.record_expiry} min)"
        if row.last_error:
            detail += f"; last error: {row.last_error}"
        return self._local(row, record, Outcome.EXPIRED, detail)

    def _prepare(self, row: QueuedRecord, now: float) -> Decision | tuple[Record, Request]:
        """A local decision, or the request to send."""
        s = self.settings
        record, problem = self._parse(row)
        bad_id = check_record_id(row.record_id)
        if bad_id is not None:  # it would go into a header line: never sent
            record, problem = None, str(bad_id)
        violation = None
        request = None
        if record is not None and s.delivery_enabled:
            violation = check_record(record)
            if violation is None:
                request = build_request(record, row.record_id, s.request_format, s.tid)
                if s.request_format is RequestFormat.HEADERS:
                    violation = check_header_block(request.headers)
        disposition = spool.disposition(
            received_at=row.received_at, now=now, record_expiry_minutes=s.record_expiry,
            readable=record is not None, acceptable=violation is None, delivery_enabled=s.delivery_enabled,
        )
        if disposition is spool.Disposition.SEND:
            assert record is not None and request is not None
            return record, request
        if disposition is spool.Disposition.EXPIRE:
            return self._expired(row, record)
        if disposition is spool.Disposition.SET_ASIDE:
            self._warn_record("queue row %s holds no readable record, set aside: %s", printable_id(row.record_id),
                              problem)
            return self._local(row, None, Outcome.SET_ASIDE, f"unreadable record: {problem}")
        if disposition is spool.Disposition.KEEP_LOCAL:
            return self._local(row, record, Outcome.DROPPED,
                               "not sent: record_server_delivery_enabled is false")
        self._warn_record("record %s (%s) rejected without sending: %s", row.record_id,
                          record.classification if record else "?", violation)
        return self._local(row, record, Outcome.REJECTED_LOCAL, f"not sent: {violation}")

    def _pump(self, tally: collections.Counter[Counter]) -> None:
        """Send due rows oldest first, keeping up to max_in_flight requests going, until
        nothing is due, the gate closes or a stop is requested."""
        delivery = self._delivery  # created at the first request: an idle daemon never loads libcurl
        cursor = 0
        buffer: collections.deque[QueuedRecord] = collections.deque()
        exhausted = False
        inflight: dict[int, tuple[QueuedRecord, Record]] = {}  # by queue position, unique even in a damaged queue
        pending: list[Decision] = []
        pending_since = 0.0

        def decided(decision: Decision) -> None:
            nonlocal pending_since
            if not pending:
                pending_since = time.monotonic()
            pending.append(decision)
            if len(pending) >= spool.COMMIT_SLICE:
                self._commit(pending, tally)
                pending.clear()

        try:
            while True:
                self.keep_alive()
                now = self.clock()
                while (delivery is None or delivery.has_capacity()) and not self.stopping and self.gate.is_open(now):
                    if not buffer:
                        if exhausted:
                            break
                        rows = self.queue.due_after(now, cursor, spool.FETCH_SLICE)
                        if not rows:
                            exhausted = True
                            break
                        cursor = rows[-1].seq
                        buffer.extend(rows)
                    row = buffer.popleft()
                    prepared = self._prepare(row, now)
                    if isinstance(prepared, Decision):
                        decided(prepared)
                        continue
                    record, request = prepared
                    if delivery is None:
                        delivery = self.delivery()
                    try:
                        delivery.submit(row.seq, request)
                    except RequestRefused as e:
                        decided(self._local(row, record, Outcome.REJECTED_LOCAL, f"not sent: {e}"))
                        continue
                    inflight[row.seq] = (row, record)
                if not inflight or delivery is None:
                    break  # nothing more could be started
                for token, response in delivery.poll(POLL_WAIT):
                    row, record = inflight.pop(token)  # type: ignore[call-overload]
                    decided(self._judge(row, record, response))
                if pending and time.monotonic() - pending_since >= spool.COMMIT_INTERVAL:
                    self._commit(pending, tally)
                    pending.clear()
        finally:
            if inflight and delivery is not None:
                # Only reached through an exception: forget the transfers, keep the rows.
                self._delivery = None
                delivery.close()
            if pending:
                self._commit(pending, tally)

    def _judge(self, row: QueuedRecord, record: Record, response: Response) -> Decision:
        now = self.clock()
        s = self.settings
        c: Classified = classify(response, now)
        if c.verdict is Verdict.DELIVERED:
            self.gate = self.gate.after_success()
            self._config_error_logged = False
            return Decision(row, record, Counter.DELIVERED, Outcome.DELIVERED, c.detail, c.status, row.attempts + 1)
        if c.verdict is Verdict.REJECTED:
            self.gate = self.gate.after_success()
            self._warn_record("record %s (%s) rejected by the collector: %s", row.record_id, record.classification,
                              c.detail)
            return Decision(row, record, Counter.REJECTED, Outcome.REJECTED, c.detail, c.status, row.attempts + 1)
        if c.verdict is Verdict.CONFIG_ERROR:
            self.gate = self.gate.hold(now, s.retry_max_delay)
            if not self._config_error_logged:
                self._config_error_logged = True
                log.error("delivery stopped: %s; records are kept, next attempt in %.0f s or after "
                          "a reload (SIGHUP)", c.detail, self.gate.open_at - now)
            return Decision(row, record, Counter.CONFIG_ERROR, None, c.detail, c.status, row.attempts,
                            row.next_attempt_at)
        was_open = self.gate.is_open(now)
        self.gate = self.gate.after_failure(now, base=s.base_delay, cap=s.retry_max_delay,
                                            rand=self.rng.random(), retry_after=c.retry_after)
        attempts = row.attempts + 1
        when = next_attempt_at(attempts, self.gate, now, base=s.base_delay, cap=s.retry_max_delay,
                               rand=self.rng.random())
        if was_open:
            log.warning("delivery failed (%s); trying again in %.0f s", c.detail, self.gate.open_at - now)
        return Decision(row, record, Counter.RETRIED, None, c.detail, c.status, attempts, when)

    def _commit(self, decisions: list[Decision], tally: collections.Counter[Counter]) -> None:
        self.keep_alive()
        """Journal first, then the queue: a crash in between repeats a record's processing
        (one journal entry, at most one duplicate POST), never loses it."""
        decisions.sort(key=lambda d: d.row.seq)
        now = self.clock()
        entries: list[JournalEntry] = []
        retained: list[tuple[str, bytes]] = []
        aside: list[SetAside] = []
        delete: list[int] = []  # queue positions: a damaged row's id may not even be text
        retry: list[tuple[str, int, float, str]] = []
        counts: collections.Counter[Counter] = collections.Counter()
        for d in decisions:
            counts[d.counter] += 1
            row = d.row
            if d.outcome is None:
                retry.append((row.record_id, d.attempts, d.next_attempt_at, d.detail))
                continue
            delete.append(row.seq)
            rid = printable_id(row.record_id)  # the key of its journal entry and payload copy
            entries.append(entry_for(
                rid, d.record, d.outcome, timestamp=now, boot_id=self.boot_id,
                http_status=d.http_status, detail=d.detail,
                classification="" if d.record else _header_value(row.headers, _CLASSIFICATION, 122),
                event_id="" if d.record else _header_value(row.headers, _EVENT_ID, 32),
            ))
            if d.outcome is Outcome.SET_ASIDE:
                aside.append(SetAside(rid, now, d.detail, row.headers, row.payload))
            elif self.settings.retention_enabled:
                retained.append((rid, row.payload))
        self._journal(entries, retained, aside)
        self.queue.settle((), retry, {(DAEMON, c.value): n for c, n in counts.items()}, delete_seqs=delete)
        tally.update(counts)

    def _journal(self, entries: list[JournalEntry], retained: list[tuple[str, bytes]], aside: list[SetAside]) -> None:
        if not entries:
            return
        self._open_journal()
        if self.journal is None:
            return
        try:
            self.journal.add(entries, retained, aside)
        except JournalError as e:
            log.error("%s", e)

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
        return spool.should_exit_idle(
            self.clock(), last_activity=self.last_activity, idle_after=self.idle_after,
            recycling=self.settings.recycling, started_by_systemd=self.by_systemd, queued_rows=self.view.rows,
        )

    def next_wake(self) -> float | None:
        wake = spool.next_wake(
            self.clock(), self.view, self.gate, record_expiry_minutes=self.settings.record_expiry,
            delivery_enabled=self.settings.delivery_enabled, idle_deadline=self.idle_deadline(),
        )
        if self._queue_retry_at is not None:
            # The queue failed (disk full, locked): records already due must not make the
            # daemon retry at once, in a loop, until the retry time.
            wake = self._queue_retry_at if wake is None else max(wake, self._queue_retry_at)
        return wake

    def pass_due(self) -> bool:
        """Whether a pass can do anything now.

        While the collector is waited for (the gate is closed) and records are queued,
        records queued meanwhile can neither be sent nor move the next wake (they are due
        no earlier than the gate opens, and expire after the oldest): a pass reads the
        whole queue, so during an outage it waits for its time instead of following
        every commit of telemprobd."""
        now = self.clock()
        if not self.settings.delivery_enabled or self.gate.is_open(now) or not self.view.rows:
            return True
        wake = self.next_wake()
        return wake is not None and now >= wake


def serve(postd: Postd, config_file: str | None) -> None:
    # The loop and the passes look at postd.stopping; the signal only sets it.
    signals = Signals(reload=RELOAD_SIGNALS, on_stop=lambda: setattr(postd, "stopping", True),
                      on_reload=lambda: setattr(postd, "reload_requested", True)).install()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    watch = FileWatch(postd.settings.spool_dir, WAKEUP_FILE)
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
                    watch = FileWatch(postd.settings.spool_dir, WAKEUP_FILE)
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
Files (system mode; user mode keeps them in the XDG directories, see telemctl(1)):
  /var/spool/telemetry/queue.db       the queue it delivers from
  /var/spool/telemetry/queue.changed  touched by telemprobd at each commit
  /var/log/telemetry/journal.db       what became of each record, and retained payloads

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
    record; a 4xx other than 408 and 429 rejects it for good; anything else keeps it for
    another attempt after an exponential backoff (Retry-After honoured) until
    `record_expiry`.  Each outcome goes to the journal ('telemctl journal').  Settings:
    telemetrics.conf(5)."""
    require("pycurl")  # imported at the first delivery
    os.environ["LC_ALL"] = "C"
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
