"""The journal: what happened to every record, and retained copies of the last payloads.

One SQLite database, `journal.db` in Paths.journal_dir, in WAL mode so `telemctl journal`
reads while the daemons write. Each record gets one entry when its fate is decided
(delivered, rejected by the collector, rejected locally, expired, dropped, set aside),
keyed by its record id (the id sent as X-Telemetry-Record-Id): a record processed twice
after a crash keeps a single, latest entry.

What the original's text journal answered stays answerable (record id, processing time,
classification, event id, boot id; filters -r -e -c -b, `-c a/*` as a prefix, only the
last 100 entries by default), plus the outcome, HTTP status, a detail and the record's
own creation time. Bounds: the last `ENTRIES_MAX` entries (the oldest go `PRUNE_BATCH`
at a time, so that the last ENTRIES_MAX - PRUNE_BATCH are always there), the payloads of
the last `RETAINED_MAX` records (when record_retention_enabled), and the raw bytes of the
last `SET_ASIDE_MAX` queue rows that held no readable record.

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

from telemetry.bootid import read_boot_id
from telemetry.daemons.store.database import Database, Fault, Layout, StoreError, Table
from telemetry.fsutil import ensure_dir
from telemetry.record import Record

log = logging.getLogger(__name__)

JOURNAL_DB = "journal.db"
SCHEMA_VERSION = 2
ENTRIES_MAX = 10_000
# Entries are pruned this many at once: removing the oldest with every write touched as
# many index pages as adding the new ones did; a batch shares most of those pages.
PRUNE_BATCH = 512
RETAINED_MAX = 100
SET_ASIDE_MAX = 100
# The original's readers look at the last 100 entries only.
READER_WINDOW = 100
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


class JournalError(StoreError):
    """The journal cannot be opened or read; the message names the file and the cause."""


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"  # by the collector, for good (4xx)
    REJECTED_LOCAL = "rejected-local"  # the collector could never accept it; not sent
    EXPIRED = "expired"  # older than record_expiry
    DROPPED = "dropped"  # no spool space, or delivery disabled (kept locally only)
    SET_ASIDE = "set-aside"  # the queue row held no readable record
    IMPORTED = "imported"  # carried over from the C client's journal (which says no outcome)


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
    """One line of the journal: what became of a record."""
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
    """A record kept out of the queue (damaged, or no space), for whoever looks into it."""
    record_id: str
    at: float
    reason: str
    headers: bytes
    payload: bytes


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from typing import Protocol

    class Summary(Protocol):
        """What an entry takes from a record (a Record, or telempostd's Brief of one)."""

        @property
        def classification(self) -> str: ...
        @property
        def event_id(self) -> str: ...
        @property
        def creation_timestamp(self) -> int | None: ...


def entry_for(
    record_id: str,
    record: Summary | None,
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


LAYOUT = Layout(
    what="journal",
    schema=SCHEMA,
    schema_version=SCHEMA_VERSION,
    synchronous="NORMAL",
    tables=(
        Table("entries", ("id", *_ENTRY_COLUMNS.split(", "))),
        Table("retained", ("seq", "record_id", "payload")),
        Table("set_aside", ("seq", "record_id", "at", "reason", "headers", "payload")),
        Table("meta", ("key", "value")),
    ),
    error=JournalError,
    # Version 2 drops the event id index: an event id is random, so the index took a page
    # write of its own for nearly every entry (a tenth of telempostd's CPU per record), and a
    # look-up by event id reads at most the 10,000 entries, a few milliseconds.
    migrations=((2, "DROP INDEX IF EXISTS entries_event"),),
)


def _prune_entries(db: sqlite3.Connection) -> None:
    """Keep at most ENTRIES_MAX: once the oldest is more than that behind the newest, keep
    the last ENTRIES_MAX - PRUNE_BATCH (two lookups on the rowid while nothing is due)."""
    oldest, newest = db.execute("SELECT (SELECT MIN(id) FROM entries), (SELECT MAX(id) FROM entries)").fetchone()
    if newest is not None and oldest <= newest - ENTRIES_MAX:
        keep = ENTRIES_MAX - min(PRUNE_BATCH, ENTRIES_MAX // 2)
        db.execute("DELETE FROM entries WHERE id <= ?", (newest - keep,))


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
                raise JournalError(f"{journal_dir}: {e.strerror or e}", Fault.DENIED) from None
        self._db = Database(self.path, LAYOUT, readonly=readonly, cache_kib=None if readonly else CACHE_KIB)

    def close(self) -> None:
        self._db.close()

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
            self._db.write(lambda db: self._write(db, entries, retained, set_aside))
        except JournalError as e:
            raise JournalError(f"{e}; these entries were not written", e.fault) from None

    @staticmethod
    def _write(db: sqlite3.Connection, entries: Sequence[JournalEntry], retained: list[tuple[str, bytes]],
               set_aside: list[SetAside]) -> None:
        db.executemany(
            f"INSERT OR REPLACE INTO entries ({_ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
            [(e.record_id, e.timestamp, e.classification, e.event_id, e.boot_id, e.outcome.value,
              e.http_status, e.detail, e.creation_timestamp) for e in entries],
        )
        if entries:
            _prune_entries(db)
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

    def import_once(self, key: str, fingerprint: str, entries: Sequence[JournalEntry]) -> bool:
        """Add entries taken from elsewhere unless `key` already names this `fingerprint`;
        one transaction with the mark, so an interrupted import is done again, whole, and a
        finished one never twice.  Entries already present (same record id) stay as they
        are.  True if they were added now."""

        def write(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None and str(row[0]) == fingerprint:
                return False
            db.executemany(
                f"INSERT OR IGNORE INTO entries ({_ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                [(e.record_id, e.timestamp, e.classification, e.event_id, e.boot_id, e.outcome.value,
                  e.http_status, e.detail, e.creation_timestamp) for e in entries],
            )
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, fingerprint))
            _prune_entries(db)
            return True

        return self._db.write(write)

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
        if not self._db.has_table("entries"):
            return []  # opened between the file's creation and its schema
        rows = self._db.run(lambda db: db.execute(sql, args).fetchall())
        return [_entry(r) for r in reversed(rows)]

    def retained_payload(self, record_id: str) -> bytes | None:
        if not self._db.has_table("retained"):
            return None
        row = self._db.run(
            lambda db: db.execute("SELECT payload FROM retained WHERE record_id = ?", (record_id,)).fetchone())
        return bytes(row[0]) if row else None

    def set_aside_rows(self) -> list[SetAside]:
        rows = self._db.run(lambda db: db.execute(
            "SELECT record_id, at, reason, headers, payload FROM set_aside ORDER BY seq").fetchall())
        return [SetAside(r[0], r[1], r[2], bytes(r[3]), bytes(r[4])) for r in rows]

    def count(self) -> int:
        return int(self._db.run(lambda db: db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]))


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
