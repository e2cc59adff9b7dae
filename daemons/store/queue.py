"""The record queue shared by telemprobd (writer) and telempostd (reader, deleter).

One SQLite database, `queue.db`, in WAL mode with synchronous=FULL in the spool
directory (design.md, "Why the queue is a database").  telemprobd inserts the records of
every waiting sender in one transaction (group commit) and only then acknowledges them;
telempostd reads oldest first and deletes a row only once its fate is decided.  Neither
daemon holds a write transaction across network or socket I/O.

After every commit that adds rows, telemprobd rewrites the small file `queue.changed`
beside the database: telempostd's inotify watch (IN_CLOSE_WRITE) and systemd's
telempostd.path (PathModified=) both watch that file, so delivery starts when something
is queued, including while telempostd is not running.

A database that SQLite reports as corrupt is renamed to `queue.db.corrupt-<time>` (never
emptied in place) and a new one is started, so the damage can be examined.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from telemetry.errors import TelemetryError
from telemetry.fsutil import ensure_dir

log = logging.getLogger(__name__)

QUEUE_DB = "queue.db"
WAKEUP_FILE = "queue.changed"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000

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
    last_error      TEXT
);
CREATE TABLE IF NOT EXISTS counters (
    daemon TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (daemon, name)
);
"""


class QueueError(TelemetryError):
    """The queue cannot be used; the message names the file and the cause."""


@dataclass(frozen=True)
class Sender:
    uid: int
    gid: int
    pid: int


@dataclass(frozen=True)
class NewRecord:
    """What telemprobd stages for one accepted frame."""

    record_id: str
    received_at: float
    sender: Sender
    headers: bytes
    payload: bytes
    cfg_path: str | None = None
    deferred_until: float = 0.0

    @property
    def size(self) -> int:
        return len(self.headers) + len(self.payload)


@dataclass(frozen=True)
class QueuedRecord:
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


# SQLite stores any type in any column: every value is read as the type the code uses
# (text as bytes, decoded here), so a damaged or foreign row cannot raise while it is read.
_COLUMNS = (
    "seq, CAST(record_id AS BLOB), CAST(received_at AS REAL), CAST(sender_uid AS INTEGER), "
    "CAST(sender_gid AS INTEGER), CAST(sender_pid AS INTEGER), CAST(cfg_path AS BLOB), CAST(headers AS BLOB), "
    "CAST(payload AS BLOB), CAST(size AS INTEGER), CAST(deferred_until AS REAL), CAST(attempts AS INTEGER), "
    "CAST(next_attempt_at AS REAL), CAST(last_error AS BLOB)"
)
# Times beyond this are clamped (an infinity would not survive int()).
_TIME_LIMIT = 1e15


def _text(value: bytes | None) -> str | None:
    return None if value is None else bytes(value).decode("utf-8", errors="replace")


def _time(value: float | None) -> float:
    if value is None or value != value:
        return 0.0
    return min(max(value, -_TIME_LIMIT), _TIME_LIMIT)


def _row(r: Sequence) -> QueuedRecord:
    return QueuedRecord(
        seq=r[0], record_id=_text(r[1]) or "", received_at=_time(r[2]), sender=Sender(r[3], r[4], r[5]),
        cfg_path=_text(r[6]), headers=bytes(r[7] or b""), payload=bytes(r[8] or b""), size=r[9] or 0,
        deferred_until=_time(r[10]), attempts=r[11] or 0, next_attempt_at=_time(r[12]), last_error=_text(r[13]),
    )


def is_corruption(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(e) or (
        "not a database" in str(e)
    )


def move_aside(path: str, what: str, reason: str) -> str:
    """Rename a damaged database (and its WAL and shared memory) out of the way, so the
    damage can be examined; returns the new name."""
    target = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    log.error("%s %s is damaged (%s); moved aside to %s and starting a new one", what, path, reason, target)
    for suffix in ("", "-wal", "-shm"):
        try:
            os.rename(path + suffix, target + suffix)
        except FileNotFoundError:
            pass
    return target


_INSERT_COLUMNS = (
    "record_id, received_at, sender_uid, sender_gid, sender_pid, cfg_path, headers, payload, size, deferred_until"
)
_MULTI_ROW_MAX = 256  # 10 parameters a row, well under SQLite's 32766


@functools.lru_cache(maxsize=64)
def _insert_sql(n: int) -> str:
    return f"INSERT INTO records ({_INSERT_COLUMNS}) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * n)


class Queue:
    def __init__(self, spool_dir: str, *, create: bool = True, readonly: bool = False):
        self.spool_dir = spool_dir
        self.path = os.path.join(spool_dir, QUEUE_DB)
        self.wakeup_path = os.path.join(spool_dir, WAKEUP_FILE)
        self._readonly = readonly
        if create and not readonly:
            ensure_dir(spool_dir, 0o750)
        self.db = self._open()

    # --- opening and recovery ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._readonly:
            uri = f"file:{self.path}?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return db

    @staticmethod
    def _init(db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            if not self._readonly:
                self._init(db)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = None if row is None else str(row[0])
            if version is not None and not version.isdecimal():
                raise QueueError(f"{self.path}: schema version {version[:40]!r} is not a number")
            if version is not None and int(version) > SCHEMA_VERSION:
                raise QueueError(f"{self.path}: schema version {version} is newer than this program's")
            return db
        except sqlite3.DatabaseError as e:
            if self._readonly or not is_corruption(e):
                raise QueueError(f"{self.path}: {e}") from None
            move_aside(self.path, "queue", str(e))
            try:
                db = self._connect()
                self._init(db)
                return db
            except sqlite3.Error as e2:
                raise QueueError(f"{self.path}: {e2}") from None

    def reopen_after_corruption(self, error: sqlite3.Error) -> None:
        """Called by a daemon that hits corruption mid-run: move aside, start afresh."""
        try:
            self.db.close()
        except sqlite3.Error:
            pass
        move_aside(self.path, "queue", str(error))
        self.db = self._open()

    def close(self) -> None:
        self.db.close()

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
             r.payload, r.size, r.deferred_until)
            for r in records
        ]
        db = self.db
        if rows and not counters and not meta and len(rows) <= _MULTI_ROW_MAX:
            # One statement is one transaction: no BEGIN/COMMIT round trips (~10% of a commit).
            db.execute(_insert_sql(len(rows)), [v for row in rows for v in row])
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_insert_sql(1), rows)
            if counters:
                self.bump(counters)
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (disk full, I/O error): keep its error.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def touch_wakeup(self) -> None:
        # Rewritten in place with a fixed-width line: O_TRUNC would make ext4 flush the
        # file on close (auto_da_alloc), about 0.5 ms on every commit.
        fd = os.open(self.wakeup_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.pwrite(fd, f"{time.time():20.6f}\n".encode(), 0)
        finally:
            os.close(fd)

    # --- reading and deciding (telempostd) --------------------------------------------

    def due_after(self, now: float, after_seq: int, limit: int = 64) -> list[QueuedRecord]:
        """Records whose next attempt is due, oldest first, after queue position `after_seq`
        (one pass walks the queue once)."""
        cur = self.db.execute(
            f"SELECT {_COLUMNS} FROM records WHERE seq > ? AND next_attempt_at <= ? AND deferred_until <= ?"
            " ORDER BY seq LIMIT ?",
            (after_seq, now, now, limit),
        )
        return [_row(r) for r in cur.fetchall()]

    def after(self, after_seq: int, limit: int = 64) -> list[QueuedRecord]:
        """Every row after queue position `after_seq`, due or not, oldest first."""
        cur = self.db.execute(f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))
        return [_row(r) for r in cur.fetchall()]

    def received_before(self, cutoff: float, limit: int = 64) -> list[QueuedRecord]:
        """Rows received before `cutoff` (expiry candidates), oldest first."""
        cur = self.db.execute(
            f"SELECT {_COLUMNS} FROM records WHERE received_at < ? ORDER BY seq LIMIT ?", (cutoff, limit)
        )
        return [_row(r) for r in cur.fetchall()]

    def oldest_received_at(self) -> float | None:
        row = self.db.execute("SELECT MIN(CAST(received_at AS REAL)) FROM records").fetchone()
        return None if row is None or row[0] is None else _time(row[0])

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
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM records WHERE record_id = ?", [(i,) for i in delete])
            db.executemany("DELETE FROM records WHERE seq = ?", [(n,) for n in delete_seqs])
            db.executemany(
                "UPDATE records SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE record_id = ?",
                [(a, t, e[:500], i) for i, a, t, e in reschedule],
            )
            if counters:
                self.bump(counters)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def next_due_time(self) -> float | None:
        row = self.db.execute(
            "SELECT MIN(MAX(CAST(next_attempt_at AS REAL), CAST(deferred_until AS REAL))) FROM records"
        ).fetchone()
        return None if row is None or row[0] is None else _time(row[0])

    def get(self, record_id: str) -> QueuedRecord | None:
        r = self.db.execute(f"SELECT {_COLUMNS} FROM records WHERE record_id = ?", (record_id,)).fetchone()
        return _row(r) if r else None

    def all(self, limit: int = 1000) -> list[QueuedRecord]:
        return [_row(r) for r in self.db.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq LIMIT ?", (limit,))]

    def delete(self, record_ids: Iterable[str], counters: dict[tuple[str, str], int] | None = None) -> None:
        self.settle(record_ids, counters=counters)

    def reschedule(self, record_id: str, attempts: int, next_attempt_at: float, last_error: str) -> None:
        self.settle(reschedule=[(record_id, attempts, next_attempt_at, last_error)])

    def stats(self) -> tuple[int, int]:
        """(rows, bytes) currently queued."""
        # TOTAL, not SUM: a damaged size must not overflow the sum into an error.
        n, size = self.db.execute("SELECT COUNT(*), TOTAL(size) FROM records").fetchone()
        return int(n), int(min(max(size, -(2**63)), 2**63 - 1))

    # --- counters -----------------------------------------------------------------------

    def bump(self, counters: dict[tuple[str, str], int]) -> None:
        """Add to the counters (inside the caller's transaction, if one is open)."""
        self.db.executemany(
            "INSERT INTO counters (daemon, name, value) VALUES (?, ?, ?)"
            " ON CONFLICT (daemon, name) DO UPDATE SET value = value + excluded.value",
            [(d, n, v) for (d, n), v in counters.items() if v],
        )

    def counters(self) -> dict[tuple[str, str], int]:
        return {(d, n): v for d, n, v in self.db.execute("SELECT daemon, name, value FROM counters")}
