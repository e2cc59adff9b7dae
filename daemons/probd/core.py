"""telemprobd's rules, with no I/O: which connection is served, which record is kept, when
a batch is committed and when each sender hears back.

`Ingest` is fed what happened (a connection accepted, a frame read, a commit done or
failed, time passing) and answers with what to do: the acknowledgement to write to a
connection (`Reply`), the batch to commit (`Commit`), the records to journal, the status
to tell systemd.  `ingest.IngestLoop` is the thin loop around it that owns the sockets,
epoll, the queue and the journal.

The promises kept here, and tested by property:

* A record is acknowledged (`accepted`, `deferred`) only by the reply that follows the
  successful commit of the batch holding it, and every record of that batch gets it.
* The reply says `on-disk` only for a batch synced before it; a batch holding a record
  at or above `sync_severity` (or any batch, with `sync_interval` 0) is synced before its
  reply, and every other commit is synced within `sync_interval` (`sync_due`).  Syncs
  run beside the loop, one at a time (`sync_start_due`, `sync_started`, `sync_done`): a
  sync covers the commits made before it started, and the batches committed while it
  runs wait for the next one.  So the disk's wait for one group of senders overlaps the
  reading and committing of the next group, and one fsync serves every batch waiting.
* A batch whose commit failed is answered with the failure's reason, never as accepted;
  its rate-limit bookings are taken back.  A lock held by the other daemon is retried for
  `BUSY_GIVE_UP` seconds first.
* Every connection gets one reply at most, and once stopping, every connection gets one
  (what is admitted is committed first; senders still mid-frame after `SHUTDOWN_GRACE`
  are told "busy").

Batching: a batch is committed once every frame already readable was read and either it
holds as many records as the last batch did (its senders are all back) or `COALESCE_MAX`
has passed since its first record (a sender that is not coming does not hold the others).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Hashable
from dataclasses import dataclass

from telemetry.ack import Ack, AckStatus, Durability
from telemetry.daemons.probd import reserved
from telemetry.daemons.probd.admission import Admission, Context, Refuse, spool_limit_bytes
from telemetry.daemons.probd.ratelimit import Booking, Policy, RateLimiter
from telemetry.daemons.probd.reserved import NO_RESERVATION, Reservation
from telemetry.daemons.probd.staging import (
    BUSY_GIVE_UP,
    FLUSH_INTERVAL,
    LIMITER_META_KEY,
    Dropped,
    StageError,
    limiter_meta,
)
from telemetry.daemons.runtime.throttle import LogThrottle
from telemetry.daemons.store.queue import NewRecord, Sender
from telemetry.wire import Frame

log = logging.getLogger("telemprobd")

TICK = 0.25  # housekeeping (deadlines, flushes, status) at least this often while busy
SHUTDOWN_GRACE = 2.0  # how long senders still mid-frame get after SIGTERM
STATUS_INTERVAL = 2.0
MEASURE_MIN_INTERVAL = 0.25  # re-reading the queue size when a record seems not to fit
MAX_POLL = 60.0
COALESCE_MAX = 0.0005  # longest wait for the stragglers of a batch
BUSY_RETRY = 0.001  # a locked queue is tried again this often, up to BUSY_GIVE_UP
DROPPED_JOURNAL_MAX = 10_000  # refusals waiting to be journaled, at most
# Counters are written with the records once a second under load; once senders pause this
# long, at once, so that `telemctl status` does not show telempostd's deliveries ahead of
# the records telemprobd received.
QUIET_FLUSH = 0.1
# telempostd is woken (the queue's wake-up file touched) at most this often: a touch is
# three system calls and an inotify event for telempostd, and under load it was one per
# commit.  A commit within the interval is announced at its end.
WAKE_POSTD_INTERVAL = 0.05

Conn = Hashable  # the loop's handle for a connection; opaque here


@dataclass(frozen=True)
class Settings:
    """What the rules take from the config; rebuilt on SIGHUP."""

    max_connections: int
    connection_timeout: float
    spool_max_bytes: int
    policy: Policy
    recycling: bool
    idle_after: float  # daemon_idle_time
    spool_dir: str
    socket_path: str
    log_level: str
    metrics_textfile: str = ""
    spool_max_size_kib: int = -1
    sync_interval: float = 1.0  # 0: every commit synced before its replies
    sync_severity: int = 3  # a batch holding a record this severe is synced before its replies
    reserved: Reservation = NO_RESERVATION

    @classmethod
    def from_config(cls, cfg) -> Settings:
        return cls(
            max_connections=cfg.max_connections,
            connection_timeout=float(cfg.connection_timeout),
            spool_max_bytes=spool_limit_bytes(cfg.spool_max_size),
            policy=Policy.from_config(cfg),
            recycling=cfg.daemon_recycling_enabled,
            idle_after=float(cfg.daemon_idle_time),
            spool_dir=cfg.spool_dir,
            socket_path=cfg.socket_path,
            log_level=cfg.log_level,
            metrics_textfile=cfg.metrics_textfile,
            spool_max_size_kib=cfg.spool_max_size,
            sync_interval=float(cfg.sync_interval),
            sync_severity=cfg.sync_severity,
            reserved=reserved.from_config(cfg),
        )


# --- what the loop is told to do -------------------------------------------------------


@dataclass(slots=True)
class Reply:
    """Write `ack` to the connection and close it.  (Made once per record: not frozen,
    as a frozen dataclass costs half a microsecond more to make; nothing changes it.)"""

    conn: Conn
    ack: Ack


@dataclass(frozen=True)
class Commit:
    """One transaction: the records, and the counters and state riding along; `sync`:
    synced to disk before the replies."""

    records: list[NewRecord]
    counters: dict[str, int]
    meta: dict[str, str]
    sync: bool = False


class Measure:
    """Read the queue's size, tell `measured`, then hand the same frame in again."""


MEASURE = Measure()


@dataclass(slots=True)
class _Held:
    """A record admitted and waiting for the group commit, with whom to answer (not
    frozen, as `Reply`)."""
    record: NewRecord
    conn: Conn
    booking: Booking
    deferred: bool
    severity: int
    size: int  # record.size, computed once


def _acks(items: list[_Held], durability: Durability) -> list[Reply]:
    return [Reply(h.conn, Ack(AckStatus.DEFERRED if h.deferred else AckStatus.ACCEPTED, h.record.record_id,
                              durability=durability))
            for h in items]


@dataclass(frozen=True)
class Housekeeping:
    """`expired`: connections past their deadline, to be answered through `timed_out`;
    `replies`: to write now; `status`: the new STATUS= text (None: unchanged); `report`:
    time to report the figures again (metrics); `stop`: stop listening (idle recycling)."""

    expired: list[Conn]
    replies: list[Reply]
    status: str | None
    stop: bool
    report: bool = False


@dataclass(slots=True)
class _Conn:
    """A connection being read: its sender, and when it times out."""
    sender: Sender
    deadline: float


class Counters:
    """received, staged, deferred, rejected:<ack status>: totals since start (STATUS=)
    and the deltas not yet written to the queue's counters table."""

    def __init__(self) -> None:
        self.totals: collections.Counter[str] = collections.Counter()
        self.unflushed: collections.Counter[str] = collections.Counter()
        self.changes = 0  # how often `add` was called: whether status() may have changed

    def add(self, name: str, n: int = 1) -> None:
        self.totals[name] += n
        self.unflushed[name] += n
        self.changes += 1

    def take(self) -> dict[str, int]:
        taken, self.unflushed = self.unflushed, collections.Counter()
        return dict(taken)

    def give_back(self, taken: dict[str, int]) -> None:
        self.unflushed.update(taken)

    def status(self) -> str:
        t = self.totals
        parts = [f"{k}={t[k]}" for k in ("received", "staged", "deferred")]
        parts += [f"{k}={v}" for k, v in sorted(t.items()) if k.startswith("rejected:")]
        return " ".join(parts)


class Ingest:
    """The state of telemprobd between two wake-ups; every method takes the time it is."""

    def __init__(self, settings: Settings, limiter: RateLimiter, *, boot_id: str, now: float,
                 idle_exit: bool = False):
        self.settings = settings
        self.admission = Admission(limiter, settings.spool_max_bytes, settings.reserved)  # owns the limiter
        self.counters = Counters()
        self.boot_id = boot_id
        self.idle_exit = idle_exit  # started by systemd: recycling applies
        # Apart, so that a flood of bad frames cannot hide that the queue is failing.
        self.refusals_log = LogThrottle(logger=log)
        self.failures_log = LogThrottle(logger=log)
        self._conns: dict[Conn, _Conn] = {}
        self._uid_conns: dict[int, int] = {}
        self._pending: list[_Held] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._last_batch = 1
        self._committing: list[_Held] | None = None
        self._commit_sync = False  # the batch being committed is answered after a sync
        self._awaiting_sync: list[_Held] = []  # committed; answered by the next sync
        self._syncing: list[_Held] | None = None  # answered by the sync running (None: none runs)
        self._commit_extras: tuple[dict[str, int], dict[str, str]] = ({}, {})
        self._busy_since: float | None = None
        self._unsynced_since: float | None = None  # the first commit not synced to disk yet
        self._retry_at = 0.0
        self._dropped: list[Dropped] = []
        self._meta: dict[str, str] = {}
        self._limiter_dirty = False
        self._measured = 0  # queue bytes when last measured
        self._committed_since_measure = 0  # bytes this process committed since then
        # The same per sending uid (rate_limit_uid_share of spool_max_size).
        self._uid_measured: dict[int, int] = {}
        self._uid_committed: collections.Counter[int] = collections.Counter()
        self._uid_pending: collections.Counter[int] = collections.Counter()
        self._measured_at = -math.inf
        self.stopping = False
        self._stop_deadline = 0.0
        self._last_activity = now
        self._next_tick = now + TICK
        self._next_flush = now + FLUSH_INTERVAL
        self._quiet_flush = math.inf
        self._next_journal = now
        self._next_status = now
        self._last_status = ""
        self._status_seen = -1  # counters.changes when the status was last made
        self._last_wake = -math.inf
        self._wake_pending = False

    # --- connections --------------------------------------------------------------------

    def connected(self, conn: Conn, sender: Sender, now: float) -> Reply | None:
        """A new connection: served (None) or told "busy" (over the caps)."""
        self._last_activity = now
        s = self.settings
        if len(self._conns) + len(self._pending) + self._awaiting_count() >= s.max_connections:
            return self._refuse(conn, sender, AckStatus.BUSY,
                                f"telemprobd is serving {s.max_connections} connections; try again", now)
        cap = self._uid_cap
        held = self._uid_conns.get(sender.uid, 0)
        if held >= cap:  # one user holding every slot would lock the others out
            return self._refuse(conn, sender, AckStatus.BUSY,
                                f"uid {sender.uid} already has {cap} connections open; try again", now)
        self._conns[conn] = _Conn(sender, now + s.connection_timeout)
        self._uid_conns[sender.uid] = held + 1
        return None

    def uid_connection_cap(self) -> int:
        """One uid's part of max_connections: the rate limits' per-uid share of it."""
        share = self.settings.policy.uid_share
        total = self.settings.max_connections
        return total if share >= 100 else max(1, total * share // 100)

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings
        self._uid_cap = self.uid_connection_cap()

    def _forget(self, conn: Conn) -> None:
        state = self._conns.pop(conn, None)
        if state is not None:
            uid = state.sender.uid
            left = self._uid_conns[uid] - 1
            if left > 0:
                self._uid_conns[uid] = left
            else:
                del self._uid_conns[uid]

    def closed(self, conn: Conn) -> None:
        """The peer connected and closed without sending anything: nothing to answer."""
        self._forget(conn)

    def failed(self, conn: Conn, sender: Sender, reason: str, now: float) -> Reply:
        """A frame that cannot be read (malformed, cut short, connection failed)."""
        return self._refuse(conn, sender, AckStatus.INVALID, reason, now)

    def _refuse(self, conn: Conn, sender: Sender, status: AckStatus, reason: str, now: float) -> Reply:
        self.counters.add("received")
        self.counters.add(f"rejected:{status.value}")
        self._quiet_flush = now + QUIET_FLUSH
        self.refusals_log.log(now, logging.WARNING, "refused a record from uid %d pid %d: %s: %s",
                              sender.uid, sender.pid, status.value, reason)
        self._forget(conn)
        return Reply(conn, Ack(status, reason))

    # --- frames -------------------------------------------------------------------------

    def frame(self, conn: Conn, frame: Frame, *, sender: Sender, record_id: str, wall: float, now: float,
              opted_in: bool, machine_id: str) -> Reply | Measure | None:
        """A complete frame: refused (Reply), held for the next commit (None), or MEASURE
        first when it seems not to fit the spool and the size known is old."""
        peer = self._conns.get(conn)
        ctx = Context(record_id=record_id, sender=sender, received_at=wall, now=now, opted_in=opted_in,
                      machine_id=machine_id, queued_bytes=self.queued(),
                      peer_uid=None if peer is None else peer.sender.uid, uid_queued_bytes=self.queued_by(sender.uid))
        verdict = self.admission.judge(frame, ctx)
        if isinstance(verdict, Refuse):
            if (verdict.status is AckStatus.NO_SPACE
                    and ctx.now - self._measured_at >= MEASURE_MIN_INTERVAL):
                self._measured_at = ctx.now
                return MEASURE
            if verdict.status is AckStatus.NO_SPACE and len(self._dropped) < DROPPED_JOURNAL_MAX:
                self._dropped.append(Dropped(ctx.record_id, verdict.record, verdict.reason, ctx.received_at))
            return self._refuse(conn, ctx.sender, verdict.status, verdict.reason, ctx.now)
        if self.settings.policy.active:
            self._limiter_dirty = True
        self.counters.add("received")
        self._forget(conn)
        if not self._pending:
            self._pending_since = ctx.now
        record = verdict.record
        size = record.size
        self._pending.append(_Held(record, conn, verdict.booking, verdict.deferred, verdict.severity, size))
        self._pending_bytes += size
        self._uid_pending[record.sender.uid] += size
        return None

    def measured(self, size: int | None, now: float, by_uid: dict[int, int] | None = None) -> None:
        """The queue's size as read now (telempostd removes rows), in all and per sending
        uid; None: it could not be read."""
        self._measured_at = now
        if size is not None:
            self._measured, self._committed_since_measure = size, 0
            self._uid_measured, self._uid_committed = dict(by_uid or {}), collections.Counter()

    def measure_due(self, now: float) -> bool:
        """Whether the loop should read the queue's size now (start, spool quota changed)."""
        return self.admission.spool_max_bytes >= 0 and self._measured_at == -math.inf

    def queued(self) -> int:
        if self.admission.spool_max_bytes < 0:
            return 0
        return self._measured + self._committed_since_measure + self._pending_bytes

    def queued_by(self, uid: int) -> int:
        if self.admission.uid_spool_max_bytes < 0:
            return 0
        return self._uid_measured.get(uid, 0) + self._uid_committed[uid] + self._uid_pending[uid]

    # --- committing ---------------------------------------------------------------------

    def commit_possible(self, now: float) -> bool:
        """Records wait and nothing holds them back: the loop reads what is ready, then asks
        `commit_due`."""
        return bool(self._pending) and self._committing is None and now >= self._retry_at

    def commit_due(self, now: float, wall: float, *, force: bool = False) -> Commit | None:
        """The batch to commit now, if it is time (the loop has read every frame ready)."""
        if self._committing is not None or not self._pending or (now < self._retry_at and not force):
            return None
        s = self.settings
        threshold = s.sync_severity
        sync = s.sync_interval <= 0 or any(h.severity >= threshold for h in self._pending)
        # A batch answered after a sync goes at once when the disk is idle: its sync then
        # runs while the senders still on their way are read, and they go in the next.
        complete = (force or self.stopping or len(self._pending) >= self._last_batch
                    or now - self._pending_since >= COALESCE_MAX or (sync and self._syncing is None))
        if not complete:
            return None
        self._committing = self._pending
        counters, meta = self._due_extras(now, wall)
        self._commit_extras = (counters, meta)
        self._commit_sync = sync
        return Commit([h.record for h in self._pending], counters, meta, sync)

    def committed(self, now: float) -> list[Reply]:
        """The batch is committed: acknowledge every record in it, or, for a batch that
        asked for a sync, hold the replies for the next sync (`sync_done`)."""
        items = self._take_batch()
        self._busy_since = None
        self._retry_at = 0.0
        uid_committed = self._uid_committed
        for h in items:
            self._committed_since_measure += h.size
            uid_committed[h.record.sender.uid] += h.size
        self._last_batch = len(items)
        if self._unsynced_since is None:
            self._unsynced_since = now
        if self._commit_sync:
            self._awaiting_sync += items
            replies = []
        else:
            replies = _acks(items, Durability.IN_WAL)
        deferred = sum(h.deferred for h in items)
        self._wake_pending = True
        self.counters.add("staged", len(items))
        if deferred:
            self.counters.add("deferred", deferred)
        self._quiet_flush = now + QUIET_FLUSH
        return replies

    def commit_failed(self, error: StageError, now: float) -> list[Reply]:
        """The batch is not durable: try again shortly (a lock), or tell its senders why."""
        counters, meta = self._commit_extras
        self.counters.give_back(counters)
        self._meta = {**meta, **self._meta}
        items = self._committing or []
        self._committing = None
        if error.retry:
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since < BUSY_GIVE_UP and not self.stopping:
                self._retry_at = now + BUSY_RETRY
                return []  # still pending, in the same order
        self.failures_log.log(now, logging.ERROR, "could not stage %d records: %s", len(items), error.detail)
        self._pending = self._pending[len(items):]
        self._pending_bytes = sum(h.size for h in self._pending)
        self._uid_pending = self._pending_by_uid()
        self._busy_since = None
        self._retry_at = 0.0
        for h in items:
            self.admission.limiter.release(h.booking)
        self.counters.add(f"rejected:{error.status.value}", len(items))
        if self.settings.policy.active:
            self._limiter_dirty = True
        return [Reply(h.conn, Ack(error.status, error.detail)) for h in items]

    def wake_postd_due(self, now: float) -> bool:
        """Records were committed since telempostd was last woken and it may be woken now
        (then `woke_postd`); when stopping, at once."""
        return self._wake_pending and (now >= self._last_wake + WAKE_POSTD_INTERVAL or self.stopping)

    def woke_postd(self, now: float) -> None:
        self._wake_pending = False
        self._last_wake = now

    def sync_due(self, now: float) -> bool:
        """Commits older than sync_interval are not synced yet (or it is time to stop)."""
        since = self._unsynced_since
        return since is not None and (now >= since + self.settings.sync_interval or self.stopping)

    def sync_start_due(self, now: float) -> bool:
        """Whether the loop should start a sync now (then `sync_started`): no sync runs, and
        replies wait for one or a commit is older than sync_interval."""
        return self._syncing is None and (bool(self._awaiting_sync) or self.sync_due(now))

    def sync_started(self, now: float) -> None:
        """A sync of every commit so far started."""
        self._syncing, self._awaiting_sync = self._awaiting_sync, []
        self._unsynced_since = None

    def sync_done(self, now: float, ok: bool) -> list[Reply]:
        """The sync ended: on disk (`ok`), or the disk refused, and then the records it
        covered are acknowledged as in the WAL only, and synced again a sync_interval later
        (not when stopping: they are committed, which is what must not be lost)."""
        items, self._syncing = self._syncing or [], None
        if not ok and not self.stopping and self._unsynced_since is None:
            self._unsynced_since = now
        return _acks(items, Durability.ON_DISK if ok else Durability.IN_WAL)

    def _awaiting_count(self) -> int:
        return len(self._awaiting_sync) + len(self._syncing or ())

    def _take_batch(self) -> list[_Held]:
        items = self._committing or []
        self._committing = None
        self._pending = self._pending[len(items):]
        self._pending_bytes = sum(h.size for h in self._pending) if self._pending else 0
        self._uid_pending = self._pending_by_uid()
        return items

    def _pending_by_uid(self) -> collections.Counter[int]:
        pending: collections.Counter[int] = collections.Counter()
        for h in self._pending:
            pending[h.record.sender.uid] += h.size
        return pending

    def _due_extras(self, now: float, wall: float, force: bool = False) -> tuple[dict[str, int], dict[str, str]]:
        """Counters and limiter state to write with this commit: once a second at most."""
        if not force and now < self._next_flush:
            return {}, {}
        self._next_flush = now + FLUSH_INTERVAL
        self._quiet_flush = math.inf
        if self._limiter_dirty:
            self._limiter_dirty = False
            snapshot = self.admission.limiter.snapshot(now)
            self._meta[LIMITER_META_KEY] = limiter_meta(snapshot, boot_id=self.boot_id, mono=now, wall=wall)
        meta, self._meta = self._meta, {}
        return self.counters.take(), meta

    def flush_due(self, now: float, wall: float, *, final: bool = False) -> Commit | None:
        """Counters and limiter state to write on their own, when no records carry them."""
        if self._pending or self._committing is not None:
            return None
        due = final or now >= min(self._next_flush, self._quiet_flush)
        if not due:
            return None
        counters, meta = self._due_extras(now, wall, force=True)
        if not (counters or meta):
            return None
        self._commit_extras = (counters, meta)
        return Commit([], counters, meta)

    def flush_failed(self, error: StageError, *, final: bool) -> None:
        counters, meta = self._commit_extras
        self.counters.give_back(counters)
        self._meta = {**meta, **self._meta}
        log.log(logging.ERROR if final else logging.DEBUG, "cannot write counters: %s", error.detail)

    def dropped_due(self, now: float, *, final: bool = False) -> list[Dropped]:
        """Records refused for lack of space, to journal now (a batch a second)."""
        if not self._dropped or (not final and now < self._next_journal):
            return []
        self._next_journal = now + FLUSH_INTERVAL
        dropped, self._dropped = self._dropped, []
        return dropped

    # --- time, settings, stopping -------------------------------------------------------

    def tick(self, now: float) -> Housekeeping:
        """What time passing asks for: see `Housekeeping`."""
        self._next_tick = now + TICK
        expired = [c for c, st in self._conns.items() if now >= st.deadline]
        replies: list[Reply] = []
        status = None
        report = now >= self._next_status
        if report:
            self._status_seen = self.counters.changes
            text = self.counters.status()
            if text != self._last_status:
                status = self._last_status = text
            self._next_status = now + STATUS_INTERVAL
        stop = False
        if self.stopping:
            if now >= self._stop_deadline:
                for conn, state in list(self._conns.items()):
                    if conn not in expired:
                        replies.append(self._refuse(conn, state.sender, AckStatus.BUSY,
                                                    "telemprobd is shutting down; try again", now))
        elif (self.idle_exit and self.settings.recycling and self.drained() and not self.unsynced
              and now - self._last_activity >= self.settings.idle_after):
            log.info("Daemon exiting for recycling")
            self.stop(now)
            stop = True
        return Housekeeping(expired, replies, status, stop, report)

    def timed_out(self, conn: Conn, buffered: int, now: float) -> Reply | None:
        """A connection past its deadline (from `tick`), with what had arrived of its frame."""
        state = self._conns.get(conn)
        if state is None:
            return None
        got = f" ({buffered} bytes received)" if buffered else " (nothing received)"
        reason = f"frame not complete within {self.settings.connection_timeout:g} s{got}"
        return self._refuse(conn, state.sender, AckStatus.INVALID, reason, now)

    def stop(self, now: float) -> None:
        """SIGTERM: take no new connection, finish what is in flight."""
        if not self.stopping:
            self.stopping = True
            self._stop_deadline = now + SHUTDOWN_GRACE

    def drained(self) -> bool:
        """No connection waits for anything (a reply held for a sync included)."""
        return not (self._conns or self._pending or self._awaiting_sync or self._syncing)

    @property
    def unsynced(self) -> bool:
        """Commits wait for their sync to disk (done before exiting), or a sync runs."""
        return self._unsynced_since is not None or self._syncing is not None

    def apply(self, settings: Settings, now: float) -> None:
        """New settings (SIGHUP).  A changed spool directory is the loop's: it commits what
        was admitted to the old one first."""
        old = self.settings
        self.settings = settings
        if settings.policy != old.policy:
            self.admission.limiter = RateLimiter.restore(
                settings.policy, self.admission.limiter.snapshot(now), now, 0.0)
            self._limiter_dirty = True
        self.admission.reserved = settings.reserved
        if settings.spool_max_bytes != old.spool_max_bytes or settings.policy.uid_share != old.policy.uid_share:
            self.admission.spool_max_bytes = settings.spool_max_bytes
            self._measured_at = -math.inf
        if settings.spool_dir != old.spool_dir:
            self._measured, self._committed_since_measure = 0, 0
            self._uid_measured, self._uid_committed = {}, collections.Counter()
            self._measured_at = -math.inf

    def wake_at(self, now: float) -> float:
        """When the loop must call back without I/O happening (commit, tick or a timer)."""
        wake = self._wake_at(now)
        if self._unsynced_since is not None and self._syncing is None:
            wake = min(wake, self._unsynced_since + self._settings.sync_interval)
        if self._wake_pending:
            wake = min(wake, self._last_wake + WAKE_POSTD_INTERVAL)
        return wake

    def _wake_at(self, now: float) -> float:
        if self._pending:
            return min(max(self._retry_at, self._pending_since + COALESCE_MAX), self._next_tick)
        if self._conns or self.stopping:
            return self._next_tick
        wake = now + MAX_POLL
        if self.counters.unflushed or self._limiter_dirty or self._meta:
            wake = min(wake, self._next_flush, self._quiet_flush)
        if self._dropped:
            wake = min(wake, self._next_journal)
        if self.counters.changes != self._status_seen:  # not status(): it is made on every wake-up
            wake = min(wake, self._next_status)
        if self.idle_exit and self.settings.recycling:
            wake = min(wake, self._last_activity + self.settings.idle_after)
        self._next_tick = min(self._next_tick, wake)
        return wake

    def tick_due(self, now: float) -> bool:
        return now >= self._next_tick

    def describe(self) -> str:
        s = self.settings
        p = s.policy
        if p.active:
            parts = [f"{lim.amount} {what} per {lim.window / 60:g} min"
                     for lim, what in ((p.records, "records"), (p.bytes, "bytes")) if lim.enabled]
            limits = (", ".join(parts) + f", {p.uid_share}% per uid, strategy "
                      + ("spool" if p.spool else "drop"))
        else:
            limits = "off"
        quota = "none" if s.spool_max_bytes < 0 else f"{s.spool_max_bytes} bytes"
        return (f"spool {s.spool_dir}, rate limits {limits}, spool quota {quota}, "
                f"max {s.max_connections} connections, timeout {s.connection_timeout:g} s")
