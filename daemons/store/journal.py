"""The journal: what happened to every record, and retained copies of the last payloads.

One SQLite database, `journal.db` in Paths.journal_dir, in WAL mode so `telemctl journal`
reads while the daemons write. Each record gets one entry when its fate is decided
(delivered, rejected by the collector, rejected locally, expired, dropped, set aside),
keyed by its record id (the id sent as X-Telemetry-Record-Id): a record processed twice
after a crash keeps a single, latest entry.

What the original's text journal answered stays answerable (record id, processing time,
classification, event id, boot id; filters -r -e -c -b, `-c a/*` as a prefix, only the
last 100 entries by default), plus the outcome, HTTP status, a detail and the record's
own creation time. Bounds: the last `ENTRIES_MAX` entries, the payloads of the last
`RETAINED_MAX` records (when record_retention_enabled), and the raw bytes of the last
`SET_ASIDE_MAX` queue rows that held no readable record.

Writers: telempostd for everything it decides, telemprobd for records it refuses for
lack of spool space (`Journal.dropped`).
"""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from telemetry.daemons.store.queue import is_corruption
from telemetry.errors import TelemetryError
from telemetry.fsutil import ensure_dir
from telemetry.record import Record

log = logging.getLogger(__name__)

JOURNAL_DB = "journal.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
ENTRIES_MAX = 10_000
RETAINED_MAX = 100
SET_ASIDE_MAX = 100
# The original's readers look at the last 100 entries only.
READER_WINDOW = 100
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
BOOT_ID_LEN = 36
DETAIL_MAX = 500
# Writers append and prune: a small page cache is enough and keeps the daemons small.
CACHE_KIB = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id          TEXT NOT NULL UNIQUE,
    timestamp          REAL NOT NULL,   -- unix time the record's fate was decided
    classification     TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    boot_id            TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    http_status        INTEGER,
    detail             TEXT NOT NULL DEFAULT '',
    creation_timestamp INTEGER
);
CREATE INDEX IF NOT EXISTS entries_event ON entries (event_id);
CREATE TABLE IF NOT EXISTS retained (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    payload   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS set_aside (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    at        REAL NOT NULL,
    reason    TEXT NOT NULL,
    headers   BLOB NOT NULL,
    payload   BLOB NOT NULL
);
"""


class JournalError(TelemetryError):
    """The journal cannot be opened or read; the message names the file and the cause."""


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"  # by the collector, for good (4xx)
    REJECTED_LOCAL = "rejected-local"  # the collector could never accept it; not sent
    EXPIRED = "expired"  # older than record_expiry
    DROPPED = "dropped"  # no spool space, or delivery disabled (kept locally only)
    SET_ASIDE = "set-aside"  # the queue row held no readable record


class Counter(enum.Enum):
    """telempostd's counters in the queue's counters table: one per outcome it journals
    (the same names), and the records it kept for another attempt. Here, beside Outcome,
    so that `telemctl status` lists them without loading telempostd (and libcurl)."""

    DELIVERED = Outcome.DELIVERED.value
    REJECTED = Outcome.REJECTED.value
    REJECTED_LOCAL = Outcome.REJECTED_LOCAL.value
    EXPIRED = Outcome.EXPIRED.value
    DROPPED = Outcome.DROPPED.value
    SET_ASIDE = Outcome.SET_ASIDE.value
    RETRIED = "retried"  # a retryable failure: kept, tried again after a backoff
    CONFIG_ERROR = "config-error"  # refused for a configuration error: kept, delivery paused


@dataclass(frozen=True)
class JournalEntry:
    record_id: str
    timestamp: float
    classification: str
    event_id: str
    boot_id: str
    outcome: Outcome
    http_status: int | None = None
    detail: str = ""
    creation_timestamp: int | None = None


@dataclass(frozen=True)
class SetAside:
    record_id: str
    at: float
    reason: str
    headers: bytes
    payload: bytes


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(BOOT_ID_LEN).decode("ascii", errors="replace").strip()
    except OSError:
        return ""


def entry_for(
    record_id: str,
    record: Record | None,
    outcome: Outcome,
    *,
    timestamp: float,
    boot_id: str,
    http_status: int | None = None,
    detail: str = "",
    classification: str = "",
    event_id: str = "",
) -> JournalEntry:
    """An entry from a record; `classification`/`event_id` are used when there is none."""
    return JournalEntry(
        record_id=record_id,
        timestamp=timestamp,
        classification=record.classification if record else classification,
        event_id=record.event_id if record else event_id,
        boot_id=boot_id,
        outcome=outcome,
        http_status=http_status,
        detail=detail[:DETAIL_MAX],
        creation_timestamp=record.creation_timestamp if record else None,
    )


_ENTRY_COLUMNS = (
    "record_id, timestamp, classification, event_id, boot_id, outcome, http_status, detail, creation_timestamp"
)


def _entry(row: Sequence) -> JournalEntry:
    try:
        outcome = Outcome(row[5])
    except ValueError:  # written by a newer program
        outcome = Outcome.DROPPED
    return JournalEntry(row[0], row[1], row[2], row[3], row[4], outcome, row[6], row[7], row[8])


def _not_created_yet(e: sqlite3.Error) -> bool:
    """A reader that opened the file between its creation and its schema."""
    return isinstance(e, sqlite3.OperationalError) and str(e).startswith("no such table")


class Journal:
    def __init__(self, journal_dir: str, *, readonly: bool = False, boot_id: str | None = None):
        self.journal_dir = journal_dir
        self.path = os.path.join(journal_dir, JOURNAL_DB)
        self.readonly = readonly
        self.boot_id = read_boot_id() if boot_id is None else boot_id
        if not readonly:
            try:
                ensure_dir(journal_dir, 0o750)
            except OSError as e:
                raise JournalError(f"{journal_dir}: {e.strerror or e}") from None
        self.db = self._open()

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)
        else:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return db

    def _init(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            if not self.readonly:
                self._init(db)
            return db
        except sqlite3.DatabaseError as e:
            if self.readonly or not is_corruption(e):
                raise JournalError(f"{self.path}: {e}") from None
            self._move_aside(str(e))
            try:
                db = self._connect()
                self._init(db)
                return db
            except sqlite3.Error as e2:
                raise JournalError(f"{self.path}: {e2}") from None

    def _move_aside(self, reason: str) -> None:
        target = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        log.error("journal %s is damaged (%s); moved aside to %s and starting a new one", self.path, reason, target)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.rename(self.path + suffix, target + suffix)
            except FileNotFoundError:
                pass

    def recover(self, error: sqlite3.Error) -> None:
        """After a write failed: start afresh if the file is damaged, else re-raise as JournalError."""
        if not is_corruption(error) or self.readonly:
            raise JournalError(f"{self.path}: {error}") from None
        try:
            self.db.close()
        except sqlite3.Error:
            pass
        self._move_aside(str(error))
        self.db = self._open()

    def close(self) -> None:
        self.db.close()

    # --- writing ------------------------------------------------------------------------

    def add(
        self,
        entries: Sequence[JournalEntry],
        retained: Iterable[tuple[str, bytes]] = (),
        set_aside: Iterable[SetAside] = (),
    ) -> None:
        """One transaction: the entries, the payload copies and the set-aside rows, then
        everything beyond the bounds is pruned. A damaged file is moved aside, a new one
        started and the write tried once more."""
        retained = list(retained)
        set_aside = list(set_aside)
        try:
            self._write(entries, retained, set_aside)
            return
        except sqlite3.Error as e:
            self.recover(e)
        try:
            self._write(entries, retained, set_aside)
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: {e}; these entries were not written") from None

    def _write(self, entries: Sequence[JournalEntry], retained: list[tuple[str, bytes]],
               set_aside: list[SetAside]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                f"INSERT OR REPLACE INTO entries ({_ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                [(e.record_id, e.timestamp, e.classification, e.event_id, e.boot_id, e.outcome.value,
                  e.http_status, e.detail, e.creation_timestamp) for e in entries],
            )
            if entries:
                db.execute("DELETE FROM entries WHERE id <= (SELECT MAX(id) FROM entries) - ?", (ENTRIES_MAX,))
            if retained:
                db.executemany("INSERT OR REPLACE INTO retained (record_id, payload) VALUES (?, ?)", retained)
                db.execute(
                    "DELETE FROM retained WHERE seq NOT IN (SELECT seq FROM retained ORDER BY seq DESC LIMIT ?)",
                    (RETAINED_MAX,),
                )
            if set_aside:
                db.executemany(
                    "INSERT OR REPLACE INTO set_aside (record_id, at, reason, headers, payload) VALUES (?,?,?,?,?)",
                    [(s.record_id, s.at, s.reason[:DETAIL_MAX], s.headers, s.payload) for s in set_aside],
                )
                db.execute(
                    "DELETE FROM set_aside WHERE seq NOT IN (SELECT seq FROM set_aside ORDER BY seq DESC LIMIT ?)",
                    (SET_ASIDE_MAX,),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def dropped(
        self,
        record_id: str,
        record: Record | None,
        reason: str,
        *,
        now: float | None = None,
        classification: str = "",
        event_id: str = "",
    ) -> None:
        """Journal a record that was refused for lack of spool space (telemprobd's admission)."""
        self.add([
            entry_for(record_id, record, Outcome.DROPPED, timestamp=time.time() if now is None else now,
                      boot_id=self.boot_id, detail=reason, classification=classification, event_id=event_id)
        ])

    # --- reading ------------------------------------------------------------------------

    def query(
        self,
        *,
        record_id: str | None = None,
        event_id: str | None = None,
        classification: str | None = None,
        boot_id: str | None = None,
        outcome: Outcome | None = None,
        window: int | None = None,
        limit: int | None = None,
    ) -> list[JournalEntry]:
        """Matching entries, oldest first.

        The filters are ANDed; `classification` is exact, or a prefix match when it ends
        in "/*" (`org.clearlinux/*`). `window` looks only at the newest N entries (the
        original's readers use READER_WINDOW); `limit` returns at most the newest N matches.
        """
        where: list[str] = []
        args: list[object] = []
        for column, value in (("record_id", record_id), ("event_id", event_id), ("boot_id", boot_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if outcome is not None:
            where.append("outcome = ?")
            args.append(outcome.value)
        if classification is not None:
            if classification.endswith("/*"):
                prefix = classification[:-1]
                where.append("substr(classification, 1, ?) = ?")
                args.extend([len(prefix), prefix])
            else:
                where.append("classification = ?")
                args.append(classification)
        source = "entries"
        if window is not None:
            source = "(SELECT * FROM entries ORDER BY id DESC LIMIT ?)"
            args.insert(0, max(window, 0))
        sql = f"SELECT {_ENTRY_COLUMNS} FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(limit, 0))
        try:
            rows = self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            if _not_created_yet(e):
                return []
            raise JournalError(f"{self.path}: {e}") from None
        return [_entry(r) for r in reversed(rows)]

    def retained_payload(self, record_id: str) -> bytes | None:
        try:
            row = self.db.execute("SELECT payload FROM retained WHERE record_id = ?", (record_id,)).fetchone()
        except sqlite3.Error as e:
            if _not_created_yet(e):
                return None
            raise JournalError(f"{self.path}: {e}") from None
        return bytes(row[0]) if row else None

    def set_aside_rows(self) -> list[SetAside]:
        rows = self.db.execute("SELECT record_id, at, reason, headers, payload FROM set_aside ORDER BY seq").fetchall()
        return [SetAside(r[0], r[1], r[2], bytes(r[3]), bytes(r[4])) for r in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def open_for_reading(journal_dir: str) -> Journal | None:
    """The journal in `journal_dir`, read-only; None while no daemon has written one."""
    if not os.path.exists(os.path.join(journal_dir, JOURNAL_DB)):
        return None
    return Journal(journal_dir, readonly=True, boot_id="")


def query(journal_dir: str, **filters) -> list[JournalEntry]:
    """`Journal.query` on the journal in `journal_dir`, read-only; no journal yet: []."""
    journal = open_for_reading(journal_dir)
    if journal is None:
        return []
    try:
        return journal.query(**filters)
    finally:
        journal.close()


def retained_payload(journal_dir: str, record_id: str) -> bytes | None:
    """The retained payload of `record_id`, or None (retention off, pruned, or unknown)."""
    journal = open_for_reading(journal_dir)
    if journal is None:
        return None
    try:
        return journal.retained_payload(record_id)
    finally:
        journal.close()
