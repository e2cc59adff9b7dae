"""Group commit: how telemprobd writes the queue.

The event loop reads and judges every frame that is ready, then commits all the records
it admitted in one transaction and only then acknowledges them.  A commit is in the WAL
when COMMIT returns (synchronous=NORMAL: the kill of any process cannot lose it); it is
synced to disk (`sync_plan`: an fsync of the WAL, run by `syncer.Syncer` beside the loop)
before the acknowledgement when the batch holds a record at or above `sync_severity` or
`sync_interval` is 0, else within `sync_interval` (the core schedules it; one fsync
covers every commit before it).  Commits stay on the loop: measured on 2 cores, a writer
thread lost more to passing the interpreter lock back and forth than it overlapped.

A lock held by another process is not waited for on the loop: an attempt that finds the
queue locked (telempostd settling its answers) fails at once, the batch stays pending and
the loop serves the senders meanwhile, trying again every `core.BUSY_RETRY` until
`BUSY_GIVE_UP` (then its senders are told "busy").  SQLite's own wait sleeps 1 ms and more
per try, which the pipeline met on one commit in twenty.  WAL checkpoints are done by a thread of their own
(`database.Checkpointer`): a checkpoint inside a commit held every sender of the batch
for milliseconds, most of the slowest acknowledgements.

Counters and the rate-limit bookings ride along with a group commit at most once a
second (and at exit), so they cost no extra fsync; a crash can lose at most a second of
counts, never a record.  A failed commit becomes the reason the senders are told
(`classify_failure`).  A damaged database is replaced and the batch committed into the new
one (the store salvages every readable row into it); a queue file
that disappeared (spool directory removed) is recreated.  Nothing here stops the daemon.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from telemetry.ack import Ack, AckStatus
from telemetry.daemons.probd.cimport import ImportReport, import_c_spool
from telemetry.daemons.store.database import Fault, StoreError, SyncPlan
from telemetry.daemons.store.journal import Journal, Outcome, entry_for
from telemetry.daemons.store.queue import NewRecord, Queue
from telemetry.errors import TelemetryError
from telemetry.record import Record

log = logging.getLogger(__name__)

LOCK_WAIT_MS = 0  # a commit's wait for another process's lock: none, see above
# Opening the queue, reading the state it keeps and importing the C spool at start are not
# answering anyone yet: they wait for a lock as long as this, rather than give up.
SETUP_LOCK_WAIT_MS = 2000
BUSY_GIVE_UP = 1.5  # then "busy"; well under the library's 5 s acknowledgement wait
LIMITER_META_KEY = "telemprobd.ratelimit"
FLUSH_INTERVAL = 1.0  # counters and limiter state are written at most this often
_ID_TIME_MASK = (1 << 48) - 1


class _RandomPool:
    """os.urandom read 4000 bytes at a time: one getrandom() per 400 record ids, not per id."""

    SIZE = 4000

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def hex(self, nbytes: int) -> str:
        end = self._pos + 2 * nbytes
        if end > len(self._hex):
            self._hex, self._pos, end = os.urandom(self.SIZE).hex(), 0, 2 * nbytes
        out = self._hex[self._pos:end]
        self._pos = end
        return out


_random = _RandomPool()


def new_record_id(now: float) -> str:
    """32 lowercase hex like an event id, but led by the time in milliseconds (48 bits)
    and then 80 random bits: unique, and appended at the end of the queue's record_id
    index instead of touching a random page of it on every insert."""
    return f"{int(now * 1000) & _ID_TIME_MASK:012x}{_random.hex(10)}"


@dataclass(frozen=True)
class Dropped:
    """A record refused for lack of spool space, to be journaled."""

    record_id: str
    record: Record | None
    reason: str
    at: float


class StageError(TelemetryError):
    """A commit failed; `status` and the message are what the senders are told."""

    def __init__(self, status: AckStatus, detail: str, *, retry: bool = False):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry = retry  # a lock: worth trying again shortly


def classify_failure(error: BaseException) -> StageError:
    """The reply a sender gets when its batch could not be committed."""
    if isinstance(error, StageError):
        return error
    if isinstance(error, StoreError):
        if error.fault is Fault.FULL:
            return StageError(AckStatus.NO_SPACE, "no space left on the spool file system")
        if error.fault is Fault.BUSY:
            return StageError(AckStatus.BUSY, "the queue database is locked by another process; try again",
                              retry=True)
        if error.fault is Fault.DENIED:
            return StageError(AckStatus.ERROR, f"cannot write the queue database: {error}")
        return StageError(AckStatus.ERROR, f"queue database error: {error}")
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return StageError(AckStatus.NO_SPACE, "no space left on the spool file system")
        return StageError(AckStatus.ERROR, f"cannot write the spool: {error.strerror or error}")
    if isinstance(error, TelemetryError):
        return StageError(AckStatus.ERROR, str(error))
    return StageError(AckStatus.ERROR, f"internal error: {type(error).__name__}: {error}")


_REPLY_FLAGS = int(socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)  # or-ed once, not per reply


def reply(sock: _socket.socket, ack: Ack) -> None:
    """Write the acknowledgement and close; a sender that did not wait costs nothing."""
    try:
        sock.send(ack.encode(), _REPLY_FLAGS)
    except OSError:
        pass
    sock.close()


class Stager:
    """Owns the queue: commits batches, measures the queue, journals refusals."""

    def __init__(self, spool_dir: str, journal_dir: str, daemon: str = "telemprobd"):
        self.spool_dir = spool_dir
        self.journal_dir = journal_dir
        self.daemon = daemon
        self.commits = 0
        self.staged = 0
        self.commit_seconds = 0.0
        self.syncs = 0
        self._queue: Queue | None = None
        self._journal: Journal | None = None
        try:
            self._ensure_queue()
        except Exception as e:  # keep serving: every batch retries and replies the reason
            log.error("cannot open the queue in %s: %s", spool_dir, classify_failure(e).detail)

    def read_meta(self, key: str) -> str | None:
        """A meta value of the queue, None if there is none or no queue."""
        try:
            with self._setup_lock_wait():
                return self._queue.get_meta(key) if self._queue else None
        except StoreError as e:
            log.warning("cannot read %s from the queue: %s", key, e)
            return None

    def switch_spool(self, spool_dir: str) -> None:
        if spool_dir != self.spool_dir:
            log.info("spool directory changed to %s", spool_dir)
            self._close_queue()
            self.spool_dir = spool_dir

    def commit(self, records: list[NewRecord], counters: dict[str, int], meta: dict[str, str]) -> None:
        """One transaction; raises StageError with the reason to tell the senders."""
        started = time.perf_counter()
        rows = {(self.daemon, name): n for name, n in counters.items() if n}
        try:
            q = self._ensure_queue()
            q.stage(records, rows, meta)
        except Exception as e:
            raise classify_failure(e) from None
        if records:
            self.commits += 1
            self.staged += len(records)
            self.commit_seconds += time.perf_counter() - started

    def wake_postd(self) -> None:
        """Touch the queue's wake-up file (telempostd's inotify watch, its .path unit)."""
        try:
            self._ensure_queue().touch_wakeup()
        except Exception as e:  # the records are safe; only the wake-up is late
            log.error("cannot touch the wake-up file in %s: %s", self.spool_dir, getattr(e, "strerror", None) or e)

    def sync_plan(self) -> SyncPlan | None:
        """What to fsync so that every commit so far is on disk; None: no queue is open
        (nothing committed to sync)."""
        return None if self._queue is None else self._queue.sync_plan()

    def synced(self, plan: SyncPlan | None, error: OSError | None) -> bool:
        """A sync ended; False (logged) when the disk refused: the records stay committed,
        their acknowledgement says they are not synced yet."""
        if error is not None:
            log.error("cannot sync the queue in %s to disk: %s", self.spool_dir, error.strerror or error)
            return False
        if plan is not None and self._queue is not None:
            self._queue.synced(plan)
        self.syncs += 1
        return True

    def measure(self) -> int | None:
        """Bytes queued now (telempostd may have removed some), or None if unknown."""
        try:
            return self._ensure_queue().stats()[1]
        except Exception as e:  # the next commit meets the same failure and replies it
            log.debug("cannot measure the queue: %s", e)
            return None

    def measure_by_uid(self) -> dict[int, int] | None:
        """Bytes queued now per sending uid, or None if unknown."""
        try:
            return self._ensure_queue().bytes_by_uid()
        except Exception as e:  # the next commit meets the same failure and replies it
            log.debug("cannot measure the queue: %s", e)
            return None

    def import_c_spool(self) -> ImportReport | None:
        """Take over the record files a C telemprobd left in the spool directory; None when
        the queue cannot be used now (the files stay for the next start)."""
        try:
            queue = self._ensure_queue()
            with self._setup_lock_wait():
                return import_c_spool(self.spool_dir, queue, self._open_journal, daemon=self.daemon,
                                      new_id=new_record_id)
        except Exception as e:
            log.error("cannot import the C spool files in %s now: %s; they stay for the next start",
                      self.spool_dir, classify_failure(e).detail)
            return None

    def _open_journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.journal_dir)
        return self._journal

    def journal_dropped(self, dropped: list[Dropped]) -> None:
        if not dropped:
            return
        try:
            journal = self._open_journal()
            journal.add([
                entry_for(d.record_id, d.record, Outcome.DROPPED, timestamp=d.at, boot_id=journal.boot_id,
                          detail=d.reason)
                for d in dropped
            ])
        except Exception as e:
            log.error("cannot journal %d records refused for lack of spool space: %s", len(dropped), e)

    def close(self) -> None:
        self._close_queue()
        if self._journal is not None:
            self._journal.close()

    def describe(self) -> str:
        if not self.commits:
            return "no records staged"
        return (f"{self.staged} records staged in {self.commits} commits "
                f"({self.staged / self.commits:.1f} per commit, {self.commit_seconds / self.commits * 1000:.2f} ms each)")

    def _ensure_queue(self) -> Queue:
        """The open queue, following its file if it was removed or replaced under us."""
        if self._queue is not None:
            self._queue.follow()
            return self._queue
        queue = Queue(self.spool_dir, busy_timeout_ms=SETUP_LOCK_WAIT_MS, sync_commits=False,
                      background_checkpoints=True)
        queue.set_busy_timeout(LOCK_WAIT_MS)
        self._queue = queue
        return queue

    @contextlib.contextmanager
    def _setup_lock_wait(self) -> Iterator[None]:
        if self._queue is not None:
            self._queue.set_busy_timeout(SETUP_LOCK_WAIT_MS)
        try:
            yield
        finally:
            if self._queue is not None:
                self._queue.set_busy_timeout(LOCK_WAIT_MS)

    def _close_queue(self) -> None:
        if self._queue is not None:
            self._queue.close()
        self._queue = None


def limiter_meta(snapshot: str, *, boot_id: str, mono: float, wall: float) -> str:
    """The meta value saving the limiter: its bookings plus when (both clocks) they were saved."""
    return f'{{"boot_id":{json.dumps(boot_id)},"mono":{mono:.3f},"wall":{wall:.3f},"limits":{snapshot}}}'


def elapsed_since(saved: dict, *, boot_id: str, mono: float, wall: float) -> float:
    """Seconds since a limiter save: the monotonic clock within a boot, the wall clock across."""
    try:
        if saved.get("boot_id") == boot_id and boot_id:
            return max(0.0, mono - float(saved["mono"]))
        return max(0.0, wall - float(saved["wall"]))
    except (KeyError, TypeError, ValueError):
        return 0.0
