"""The record queue shared by telemprobd (writer) and telempostd (reader, deleter).

One SQLite database, `queue.db`, in WAL mode in the `queue` subdirectory of the spool
directory (design.md, "Why the queue is a database").  Not in the spool directory itself:
a C telempostd on the same config unlinks every entry there that is not one of its record
files, and `unlink()` fails on a directory, so what lives in the subdirectory survives it.
A queue an earlier version left in the spool directory is moved in when a daemon opens it
(`migrate_legacy`).  telemprobd inserts the records of every waiting sender in one
transaction (group commit) and only then acknowledges them, each commit in the WAL
(synchronous=NORMAL: no process crash loses it) and synced to disk (`sync`) before the
acknowledgement or within `sync_interval` after it, as its durability classes say;
telempostd reads oldest first and deletes a row only once its fate is decided.  Neither
daemon holds a write transaction across network or socket I/O.

After every commit that adds rows, telemprobd rewrites the small file `queue.changed`
beside the database: telempostd's inotify watch (IN_CLOSE_WRITE) and systemd's
telempostd.path (PathModified=) both watch that file, so delivery starts when something
is queued, including while telempostd is not running.

SQLite itself is `database.Database`'s: a damaged queue is replaced by a new one holding
every row that can still be read, the damaged file kept aside; failures arrive as
`QueueError` with a `Fault`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from telemetry.daemons.store.database import (
    BUSY_TIMEOUT_MS,
    Database,
    Fault,
    Layout,
    StoreError,
    SyncPlan,
    Table,
)
from telemetry.fsutil import ensure_dir, fsync_dir

log = logging.getLogger(__name__)

QUEUE_DB = "queue.db"
WAKEUP_FILE = "queue.changed"
QUEUE_SUBDIR = "queue"  # in spool_dir; the queue's files live only there
SCHEMA_VERSION = 2  # 2: request_headers

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT, -- queue order
    record_id       TEXT NOT NULL UNIQUE,   -- 32 hex; sent as X-Telemetry-Record-Id
    received_at     REAL NOT NULL,          -- unix time telemprobd read the frame
    sender_uid      INTEGER NOT NULL,       -- SO_PEERCRED of the sending process
    sender_gid      INTEGER NOT NULL,
    sender_pid      INTEGER NOT NULL,
    cfg_path        TEXT,                   -- CFG: field of the frame (recorded, never used)
    headers         BLOB NOT NULL,          -- the 15 header lines, machine_id replaced
    payload         BLOB NOT NULL,
    size            INTEGER NOT NULL,       -- bytes counted against spool_max_size
    deferred_until  REAL NOT NULL DEFAULT 0,-- rate limited with strategy spool: not before
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error      TEXT,
    request_headers BLOB                    -- the record's HTTP header lines, one per line, made
                                            -- once at admission (NULL: queued before version 2)
);
CREATE TABLE IF NOT EXISTS counters (
    daemon TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (daemon, name)
);
"""


# What telempostd and telemctl ask of the whole queue (how many rows and bytes, the next
# due, the oldest, the expired, the status breakdown) read from this index alone, a
# fortieth of the table: without it every pass of telempostd read every row's page, 70 ms
# for 100,000 queued records, 20 times a second while telemprobd keeps waking it.
# received_at first: the expired rows are a range of it.  Queues made before it get it
# when a daemon opens them (`Layout.indexes`).
VIEW_INDEX = ("records_view", "CREATE INDEX IF NOT EXISTS records_view ON records "
              "(received_at, next_attempt_at, deferred_until, size, attempts, sender_uid)")
SCHEMA += VIEW_INDEX[1] + ";\n"


class QueueError(StoreError):
    """The queue cannot be used; the message names the file and the cause, `fault` the kind."""


@dataclass(frozen=True)
class Sender:
    """Who sent a record (the socket's peer credentials), kept with it."""
    uid: int
    gid: int
    pid: int


@dataclass(slots=True)
class NewRecord:
    """What telemprobd stages for one accepted frame.

    Not frozen (never changed once made): telemprobd makes one for every record it keeps,
    and a frozen dataclass's __init__, an object.__setattr__ per field, costs three times
    as much."""

    record_id: str
    received_at: float
    sender: Sender
    headers: bytes
    payload: bytes
    cfg_path: str | None = None
    deferred_until: float = 0.0
    request_headers: bytes | None = None  # contract.request_header_block of the record

    @property
    def size(self) -> int:
        return len(self.headers) + len(self.payload)


@dataclass(frozen=True)
class QueuedRecord:
    """A queued record as telempostd reads it."""
    seq: int
    record_id: str
    received_at: float
    sender: Sender
    cfg_path: str | None
    headers: bytes
    payload: bytes
    size: int
    deferred_until: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    request_headers: bytes | None = None


# Times beyond this are clamped (an infinity would not survive int()).
_TIME_LIMIT = 1e15
# So is a damaged attempt count: one more must still fit SQLite's 64-bit integer.
_ATTEMPTS_LIMIT = 2**31


def _time_column(name: str) -> str:
    return f"MIN(MAX(IFNULL(CAST({name} AS REAL), 0.0), {-_TIME_LIMIT:.0f}.0), {_TIME_LIMIT:.0f}.0)"


# SQLite stores any type in any column: every value is read as the type the code uses,
# missing and out-of-range values made usable by SQLite itself (text as bytes, decoded
# here), so a damaged or foreign row cannot raise while it is read, and a row costs
# Python one constructor call and its text decodings.
_COLUMNS = (
    f"seq, CAST(record_id AS BLOB), {_time_column('received_at')}, CAST(sender_uid AS INTEGER), "
    "CAST(sender_gid AS INTEGER), CAST(sender_pid AS INTEGER), CAST(cfg_path AS BLOB), "
    "IFNULL(CAST(headers AS BLOB), X''), IFNULL(CAST(payload AS BLOB), X''), IFNULL(CAST(size AS INTEGER), 0), "
    f"{_time_column('deferred_until')}, MIN(MAX(IFNULL(CAST(attempts AS INTEGER), 0), 0), {_ATTEMPTS_LIMIT}), "
    f"{_time_column('next_attempt_at')}, CAST(last_error AS BLOB), CAST(request_headers AS BLOB)"
)


def _text(value: bytes | None) -> str | None:
    return None if value is None else bytes(value).decode("utf-8", errors="replace")


def _time(value: float | None) -> float:
    if value is None or value != value:
        return 0.0
    return min(max(value, -_TIME_LIMIT), _TIME_LIMIT)


def _row(r: Sequence) -> QueuedRecord:
    return QueuedRecord(
        r[0], r[1].decode("utf-8", "replace") if r[1] is not None else "", r[2], Sender(r[3], r[4], r[5]),
        None if r[6] is None else r[6].decode("utf-8", "replace"), r[7], r[8], r[9], r[10], r[11], r[12],
        None if r[13] is None else r[13].decode("utf-8", "replace"), r[14],
    )


_INSERT_COLUMNS = (
    "record_id, received_at, sender_uid, sender_gid, sender_pid, cfg_path, headers, payload, size, deferred_until, "
    "request_headers"
)
_MULTI_ROW_MAX = 256  # 11 parameters a row, well under SQLite's 32766


@functools.lru_cache(maxsize=64)
def _insert_sql(n: int) -> str:
    return f"INSERT INTO records ({_INSERT_COLUMNS}) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?,?)"] * n)


_RECORD_COLUMNS = (
    "seq", "record_id", "received_at", "sender_uid", "sender_gid", "sender_pid", "cfg_path", "headers", "payload",
    "size", "deferred_until", "attempts", "next_attempt_at", "last_error", "request_headers",
)
LAYOUT = Layout(
    what="queue",
    schema=SCHEMA,
    schema_version=SCHEMA_VERSION,
    synchronous="FULL",
    tables=(Table("records", _RECORD_COLUMNS), Table("counters", ("daemon", "name", "value")),
            Table("meta", ("key", "value"))),
    error=QueueError,
    migrations=((2, "ALTER TABLE records ADD COLUMN request_headers BLOB"),),
    indexes=(VIEW_INDEX,),
)

# Rows never tried are "staged", rows tried at least once "spooled".  After a failure
# telempostd holds every row back until the collector may be tried again, so when some
# row has failed, its next attempt is the next retry of the whole queue.
_BREAKDOWN = """
SELECT COUNT(*), COALESCE(SUM(size), 0),
       COALESCE(SUM(attempts = 0), 0), COALESCE(SUM(CASE WHEN attempts = 0 THEN size END), 0),
       COALESCE(SUM(deferred_until > ?), 0),
       MIN(MAX(next_attempt_at, deferred_until)),
       MIN(CASE WHEN attempts > 0 THEN MAX(next_attempt_at, deferred_until) END)
FROM records
"""


@dataclass(frozen=True)
class Breakdown:
    """The queue's figures for `telemctl status`."""

    rows: int
    bytes: int
    staged_rows: int
    staged_bytes: int
    deferred_rows: int
    next_due: float | None  # the next retry when a row has failed, else the first due


def _bump(db: sqlite3.Connection, counters: dict[tuple[str, str], int]) -> None:
    db.executemany(
        "INSERT INTO counters (daemon, name, value) VALUES (?, ?, ?)"
        " ON CONFLICT (daemon, name) DO UPDATE SET value = value + excluded.value",
        [(d, n, v) for (d, n), v in counters.items() if v],
    )


class Queue:
    """`busy_timeout_ms`: how long one statement waits for the other daemon's lock;
    `cache_kib`: SQLite's page cache (a reader going through rows once needs little);
    `sync_commits` False: a commit survives the process at once and reaches the disk with
    the next synced commit or checkpoint, for writes whose loss in a power cut only
    repeats work (telempostd's settles: a delivered record sent again, never one lost);
    `background_checkpoints`: the WAL is copied into the database by a thread, not by the
    commits of a writer that must answer quickly (`database.Checkpointer`); `secure_delete`:
    SQLite's pragma of that name for this connection (None: the library's default)."""

    def __init__(self, spool_dir: str, *, create: bool = True, readonly: bool = False,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS, cache_kib: int | None = None, sync_commits: bool = True,
                 background_checkpoints: bool = False, secure_delete: str | None = None):
        self.spool_dir = spool_dir
        self.dir = queue_dir(spool_dir)
        self.path = os.path.join(self.dir, QUEUE_DB)
        self.wakeup_path = os.path.join(self.dir, WAKEUP_FILE)
        self._create = create and not readonly
        self._ensure_dir()
        if self._create:
            migrate_legacy(spool_dir, busy_timeout_ms)
        elif readonly and not os.path.exists(self.path) and os.path.exists(legacy_path(spool_dir)):
            self.path = legacy_path(spool_dir)  # read where it is until a daemon moves it
        self._db = Database(self.path, LAYOUT, readonly=readonly, busy_timeout_ms=busy_timeout_ms,
                            cache_kib=cache_kib, synchronous=None if sync_commits else "NORMAL",
                            background_checkpoints=background_checkpoints, secure_delete=secure_delete)

    def _ensure_dir(self) -> None:
        if self._create:
            try:
                ensure_dir(self.spool_dir, 0o750)
                ensure_dir(self.dir, 0o750)
            except OSError as e:  # not a directory, permission denied, no space
                fault = Fault.FULL if e.errno in (errno.ENOSPC, errno.EDQUOT) else Fault.DENIED
                raise QueueError(f"{self.spool_dir}: {e.strerror or e}", fault) from None

    def follow(self) -> None:
        """Open the queue file now at our path if it is not the one open (a recovery by the
        other daemon replaced it, or the spool directory was removed)."""
        if self._db.is_current():  # the usual case, once per commit: one stat
            return
        self._ensure_dir()
        self._db.follow()

    def close(self) -> None:
        self._db.shutdown()

    def set_busy_timeout(self, ms: int) -> None:
        self._db.set_busy_timeout(ms)

    # --- writing (telemprobd) ---------------------------------------------------------

    def insert_many(self, records: Iterable[NewRecord], counters: dict[tuple[str, str], int] | None = None) -> None:
        """One durable transaction for the whole batch (the group commit)."""
        self.stage(records, counters)

    def stage(
        self,
        records: Iterable[NewRecord],
        counters: dict[tuple[str, str], int] | None = None,
        meta: dict[str, str] | None = None,
    ) -> None:
        """insert_many, plus `meta` rows (a daemon's own state, e.g. telemprobd's rate-limit
        bookings) written in the same durable transaction."""
        rows = [
            (r.record_id, r.received_at, r.sender.uid, r.sender.gid, r.sender.pid, r.cfg_path, r.headers,
             r.payload, r.size, r.deferred_until, r.request_headers)
            for r in records
        ]
        if rows and not counters and not meta and len(rows) <= _MULTI_ROW_MAX:
            # One statement is one transaction: no BEGIN/COMMIT round trips (~10% of a commit).
            params = [v for row in rows for v in row]
            self._db.run(lambda db: db.execute(_insert_sql(len(rows)), params))
            self._db.committed()
            return

        def write(db: sqlite3.Connection) -> None:
            db.executemany(_insert_sql(1), rows)
            if counters:
                _bump(db, counters)
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))

        self._db.write(write)

    def sync(self) -> None:
        """Every commit so far survives a power cut once this returns (OSError if not)."""
        self._db.sync()

    def sync_plan(self) -> SyncPlan:
        """The same sync in parts, its fsyncs run on another thread (`Database.sync_plan`)."""
        return self._db.sync_plan()

    def synced(self, plan: SyncPlan) -> None:
        self._db.synced(plan)

    def get_meta(self, key: str) -> str | None:
        row = self._db.run(lambda db: db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        return None if row is None else str(row[0])

    def meta_with_prefix(self, prefix: str) -> dict[str, str]:
        rows = self._db.run(lambda db: db.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)).fetchall())
        return {str(k): str(v) for k, v in rows}

    def delete_meta(self, keys: Iterable[str]) -> None:
        rows = [(k,) for k in keys]
        if rows:
            self._db.write(lambda db: db.executemany("DELETE FROM meta WHERE key = ?", rows))

    def contents(self, page: int = 512) -> Iterator[tuple[bytes, bytes]]:
        """(headers, payload) of every queued row, read a page at a time."""
        sql = ("SELECT seq, CAST(headers AS BLOB), CAST(payload AS BLOB) FROM records WHERE seq > ?"
               " ORDER BY seq LIMIT ?")
        def page_after(after: int) -> list:
            return self._db.run(lambda db: db.execute(sql, (after, page)).fetchall())

        after = 0
        while True:
            rows = page_after(after)
            if not rows:
                return
            for seq, headers, payload in rows:
                after = seq
                yield bytes(headers or b""), bytes(payload or b"")

    def touch_wakeup(self) -> None:
        # Rewritten in place with a fixed-width line: O_TRUNC would make ext4 flush the
        # file on close (auto_da_alloc), about 0.5 ms on every commit.
        fd = os.open(self.wakeup_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.pwrite(fd, f"{time.time():20.6f}\n".encode(), 0)
        finally:
            os.close(fd)

    # --- reading and deciding (telempostd) --------------------------------------------

    def _rows(self, sql: str, args: Sequence[object]) -> list[QueuedRecord]:
        return [_row(r) for r in self._db.run(lambda db: db.execute(sql, args).fetchall())]

    def due_after(self, now: float, after_seq: int, limit: int = 64) -> list[QueuedRecord]:
        """Records whose next attempt is due, oldest first, after queue position `after_seq`
        (one pass walks the queue once)."""
        return self._rows(
            f"SELECT {_COLUMNS} FROM records WHERE seq > ? AND next_attempt_at <= ? AND deferred_until <= ?"
            " ORDER BY seq LIMIT ?",
            (after_seq, now, now, limit),
        )

    def after(self, after_seq: int, limit: int = 64) -> list[QueuedRecord]:
        """Every row after queue position `after_seq`, due or not, oldest first."""
        return self._rows(f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))

    def first_sendable(self, now: float) -> QueuedRecord | None:
        """The oldest row not held by the rate limit, however long its retry is away: what
        telempostd sends to learn whether the collector answers again."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM records WHERE deferred_until <= ? ORDER BY seq LIMIT 1", (now,))
        return rows[0] if rows else None

    def release_retries(self, until: float | None = None) -> int:
        """Rows waiting for a retry at or before `until` (None: every one) become due now:
        the wait they got was for a collector or a configuration that is no longer there.
        Returns how many."""
        def write(db: sqlite3.Connection) -> int:
            if until is None:
                return db.execute("UPDATE records SET next_attempt_at = 0 WHERE next_attempt_at > 0").rowcount
            return db.execute("UPDATE records SET next_attempt_at = 0 WHERE next_attempt_at > 0"
                              " AND next_attempt_at <= ?", (until,)).rowcount

        return int(self._db.write(write) or 0)

    def received_before(self, cutoff: float, limit: int = 64) -> list[QueuedRecord]:
        """Rows received before `cutoff` (expiry candidates), earliest received first: a
        range of the view index, however long the queue."""
        return self._rows(f"SELECT {_COLUMNS} FROM records WHERE received_at < ? ORDER BY received_at LIMIT ?",
                          (cutoff, limit))

    def settle(
        self,
        delete: Iterable[str] = (),
        reschedule: Iterable[tuple[str, int, float, str]] = (),
        counters: dict[tuple[str, str], int] | None = None,
        delete_seqs: Iterable[int] = (),
    ) -> None:
        """Record the fate of a batch in one durable transaction: rows whose fate is decided
        are deleted (by record id, or by queue position: a damaged row's id may not even be
        text), rows to try again get (record_id, attempts, next_attempt_at, last_error)."""
        by_id = [(i,) for i in delete]
        by_seq = [(n,) for n in delete_seqs]
        retry = [(a, t, e[:500], i) for i, a, t, e in reschedule]

        def write(db: sqlite3.Connection) -> None:
            # Only the statements there is something for: a settle of a few rows at a time
            # (the window of requests in flight) pays for every statement it runs.
            if by_id:
                db.executemany("DELETE FROM records WHERE record_id = ?", by_id)
            if by_seq:
                db.executemany("DELETE FROM records WHERE seq = ?", by_seq)
            if retry:
                db.executemany(
                    "UPDATE records SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE record_id = ?", retry)
            if counters:
                _bump(db, counters)

        self._db.write(write)

    def overview(self) -> tuple[int, float | None, float | None]:
        """(rows, next due time, oldest received_at) in one read of the view index."""
        n, due, oldest = self._db.run(lambda db: db.execute(
            "SELECT COUNT(*), MIN(MAX(CAST(next_attempt_at AS REAL), CAST(deferred_until AS REAL))),"
            " MIN(CAST(received_at AS REAL)) FROM records").fetchone())
        return int(n), None if due is None else _time(due), None if oldest is None else _time(oldest)

    def get(self, record_id: str) -> QueuedRecord | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM records WHERE record_id = ?", (record_id,))
        return rows[0] if rows else None

    def all(self, limit: int = 1000) -> list[QueuedRecord]:
        return self._rows(f"SELECT {_COLUMNS} FROM records ORDER BY seq LIMIT ?", (limit,))

    def delete(self, record_ids: Iterable[str], counters: dict[tuple[str, str], int] | None = None) -> None:
        self.settle(record_ids, counters=counters)

    def reschedule(self, record_id: str, attempts: int, next_attempt_at: float, last_error: str) -> None:
        self.settle(reschedule=[(record_id, attempts, next_attempt_at, last_error)])

    def stats(self) -> tuple[int, int]:
        """(rows, bytes) currently queued."""
        # TOTAL, not SUM: a damaged size must not overflow the sum into an error.
        n, size = self._db.run(lambda db: db.execute("SELECT COUNT(*), TOTAL(size) FROM records").fetchone())
        return int(n), int(min(max(size, -(2**63)), 2**63 - 1))

    def bytes_by_uid(self) -> dict[int, int]:
        """Bytes queued per sending uid (the per-uid share of spool_max_size)."""
        rows = self._db.run(lambda db: db.execute(
            "SELECT CAST(sender_uid AS INTEGER), TOTAL(size) FROM records GROUP BY 1").fetchall())
        return {int(uid or 0): int(min(max(size, 0), 2**62)) for uid, size in rows}

    def breakdown(self, now: float) -> Breakdown:
        rows, size, staged, staged_size, deferred, first_due, first_retry = self._db.run(
            lambda db: db.execute(_BREAKDOWN, (now,)).fetchone())
        return Breakdown(rows, size, staged, staged_size, deferred, first_retry if first_retry is not None else first_due)

    # --- counters -----------------------------------------------------------------------

    def bump(self, counters: dict[tuple[str, str], int]) -> None:
        """Add to the counters, in a transaction of their own."""
        self._db.write(lambda db: _bump(db, counters))

    def counters(self) -> dict[tuple[str, str], int]:
        rows = self._db.run(lambda db: db.execute("SELECT daemon, name, value FROM counters").fetchall())
        return {(d, n): v for d, n, v in rows}


# --- where the queue lives ----------------------------------------------------------------

def queue_dir(spool_dir: str) -> str:
    return os.path.join(spool_dir, QUEUE_SUBDIR)


def legacy_path(spool_dir: str) -> str:
    """Where versions before the `queue` subdirectory kept the queue."""
    return os.path.join(spool_dir, QUEUE_DB)


_SIDE_FILES = ("-wal", "-shm", "")  # the database itself last: its presence means "not moved yet"


def migrate_legacy(spool_dir: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> bool:
    """Move a queue left in the spool directory into the subdirectory; True if one was.

    Kill-safe: the WAL is checkpointed into the database first, then the files are renamed
    (same file system), the database last, so until it is moved the move is simply done
    again.  When both places hold a queue (an older version ran after a newer one), the old
    rows are copied into the new queue (a row's record id is unique: copying twice adds
    nothing) and the old files removed.  Kept damaged copies are moved along."""
    old = legacy_path(spool_dir)
    target = queue_dir(spool_dir)
    if not os.path.exists(old) and not glob.glob(glob.escape(old) + ".corrupt-*"):
        _remove_legacy_wakeup(spool_dir)
        return False
    fd = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for kept in glob.glob(glob.escape(old) + ".corrupt-*"):
            os.rename(kept, os.path.join(target, os.path.basename(kept)))
        moved = os.path.exists(old)
        if moved:
            new = os.path.join(target, QUEUE_DB)
            if os.path.exists(new):
                _merge_into(old, new, busy_timeout_ms)
                for suffix in _SIDE_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(old + suffix)
            else:
                _checkpoint(old, busy_timeout_ms)
                for suffix in _SIDE_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(old + suffix, new + suffix)
            fsync_dir(target)
            fsync_dir(spool_dir)
            log.info("moved the queue from %s to %s", old, new)
        _remove_legacy_wakeup(spool_dir)
        return moved
    except OSError as e:
        raise QueueError(f"cannot move the queue {old} into {target}: {e.strerror or e}", Fault.DENIED) from None
    finally:
        os.close(fd)


def _remove_legacy_wakeup(spool_dir: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(spool_dir, WAKEUP_FILE))


def _checkpoint(path: str, busy_timeout_ms: int) -> None:
    """Everything in the WAL written into the database; a damaged file is moved as it is."""
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    except sqlite3.Error:
        return
    try:
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.Error:
        return
    finally:
        db.close()
    if busy:
        raise QueueError(f"{path}: another process has the queue open; it is moved when that one has stopped",
                         Fault.BUSY)


def _merge_into(old: str, new: str, busy_timeout_ms: int) -> None:
    columns = ", ".join(c for c in _RECORD_COLUMNS if c != "seq")
    db = sqlite3.connect(new, uri=True, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        db.execute("ATTACH DATABASE ? AS legacy", (f"file:{old}?mode=ro",))
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"INSERT OR IGNORE INTO records ({columns}) SELECT {columns} FROM legacy.records ORDER BY seq")
        db.execute("COMMIT")
    except sqlite3.Error as e:
        aside = os.path.join(os.path.dirname(new), f"{QUEUE_DB}.legacy-{time.strftime('%Y%m%dT%H%M%S')}")
        log.error("cannot copy the rows of %s into %s (%s); kept as %s", old, new, e, aside)
        if db.in_transaction:
            db.execute("ROLLBACK")
        for suffix in _SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.rename(old + suffix, aside + suffix)
    finally:
        db.close()
