"""The one place the daemons speak SQLite: opening a database, its PRAGMAs, what an error
means, and what happens to a damaged file.

`Database` is one of our files (the queue or the journal) as its `Layout` describes it:
schema, schema version, durability.  Callers never see `sqlite3` errors: every failure
is a `StoreError` whose `fault` says what kind it is (`sqlite_errorcode`, never the
message text): the disk is full, another process holds the lock, the file cannot be
written, or it is damaged.

A damaged file is not emptied in place and not given up: every row that can still be
read is copied into a new file (`salvage`), the damaged one is renamed
`<name>.corrupt-<time>-<pid>` (with its WAL) so the damage can be examined, and the new
file takes its name in one rename, so the other daemon never sees the name missing.  The
recovering process holds an exclusive lock on the directory (flock) and the damaged
database's write lock while it copies, so no record can be written into the damaged file
after the copy was taken; a process that meets the damage after another has recovered
sees that the file was replaced and simply opens the new one.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from telemetry.errors import TelemetryError

log = logging.getLogger(__name__)
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
# With background checkpoints: the writer's own checkpoint (wal_autocheckpoint, in pages)
# and how often the thread copies the WAL into the database while commits come.
BACKSTOP_PAGES = 32768
CHECKPOINT_INTERVAL = 0.2
RESTART_FRAMES = 8192  # a WAL this long (32 MiB at 4 KiB pages) is made to start over
# Before that RESTART, which holds writers back while it copies what came since the last
# copy, passive copies catch up until one copied at most this many frames (what arrives
# during so short a copy is little), or CATCH_UP_ROUNDS were made.
RESTART_TAIL = 256
CATCH_UP_ROUNDS = 4
SALVAGE_CHUNK = 256  # rows read at once where the file reads well
PROBE_WITHOUT_BOUND = 65536  # keys looked up one by one past the last row found in damage
_ROWID_MIN = -(2**63)


class Fault(enum.Enum):
    """What kind of failure an SQLite error is, for the caller to decide what to do."""

    CORRUPT = "corrupt"  # the file is damaged (or is no database)
    FULL = "full"  # no space on the file system
    BUSY = "busy"  # another process holds the lock longer than we wait
    DENIED = "denied"  # the file cannot be opened or written (permissions, read-only)
    OTHER = "other"


_FAULTS = {
    sqlite3.SQLITE_CORRUPT: Fault.CORRUPT,
    sqlite3.SQLITE_NOTADB: Fault.CORRUPT,
    sqlite3.SQLITE_FULL: Fault.FULL,
    sqlite3.SQLITE_BUSY: Fault.BUSY,
    sqlite3.SQLITE_LOCKED: Fault.BUSY,
    sqlite3.SQLITE_READONLY: Fault.DENIED,
    sqlite3.SQLITE_PERM: Fault.DENIED,
    sqlite3.SQLITE_CANTOPEN: Fault.DENIED,
    sqlite3.SQLITE_AUTH: Fault.DENIED,
}


def fault_of(error: sqlite3.Error) -> Fault:
    """By the primary result code SQLite gave (Python 3.11's `sqlite_errorcode`)."""
    code = getattr(error, "sqlite_errorcode", None)
    return Fault.OTHER if code is None else _FAULTS.get(code & 0xFF, Fault.OTHER)


class StoreError(TelemetryError):
    """A database could not be used; the message names the file and the cause."""

    def __init__(self, message: str, fault: Fault = Fault.OTHER):
        super().__init__(message)
        self.fault = fault


@dataclass(frozen=True)
class Table:
    """A table whose rows a salvage copies, key columns included."""

    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """What a database file holds and how it is opened: each store's own."""
    what: str  # "queue", "journal": how messages name the file
    schema: str
    schema_version: int
    synchronous: str  # FULL: every commit is on disk; NORMAL: WAL, synced at checkpoints
    tables: tuple[Table, ...]  # what a salvage copies, in this order
    error: type[StoreError] = StoreError
    # (version, SQL): what brings a file of the version before up to this one, in order.
    migrations: tuple[tuple[int, str], ...] = ()
    # (name, CREATE INDEX IF NOT EXISTS): indexes made when missing, on any version: adding
    # one needs no new schema version, so older programs keep opening the file (SQLite keeps
    # it up).
    indexes: tuple[tuple[str, str], ...] = ()


Identity = tuple[int, int]


def _identity(path: str) -> Identity | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def _directory_lock(path: str, exclusive: bool) -> Iterator[None]:
    """flock on the database's directory: shared to open, exclusive to recover."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SyncPlan:
    """The files to fsync for one sync of a database (`Database.sync_plan`)."""

    paths: tuple[str, ...]
    identity: Identity | None  # the database file they belong to

    def run(self) -> None:
        """fsync each file that exists (no WAL: every commit is in the database file);
        OSError when the disk refuses.  Touches nothing but the files: safe on any thread."""
        for path in self.paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _immediate(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work` in one write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back if it fails."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
        return result
    except BaseException:
        # SQLite may already have rolled back (disk full, I/O error): keep its error.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class Database:
    """A connection to one of our files, kept usable: reopened when the file was replaced,
    recovered when it is damaged."""

    def __init__(self, path: str, layout: Layout, *, readonly: bool = False,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS, cache_kib: int | None = None,
                 synchronous: str | None = None, background_checkpoints: bool = False,
                 secure_delete: str | None = None):
        self.path = path
        self.secure_delete = secure_delete
        self.layout = layout
        self.synchronous = synchronous or layout.synchronous
        self.readonly = readonly
        self.busy_timeout_ms = busy_timeout_ms
        self.cache_kib = cache_kib
        self.identity: Identity | None = None
        self._synced_file: Identity | None = None
        self.checkpointer = Checkpointer(path) if background_checkpoints and not readonly else None
        self.db = self._open()

    # --- opening ------------------------------------------------------------------------

    def _connect(self, path: str, *, readonly: bool = False) -> sqlite3.Connection:
        if readonly:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        else:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        if self.cache_kib is not None:
            db.execute(f"PRAGMA cache_size = -{self.cache_kib}")
        if self.checkpointer is not None:
            db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
        if self.secure_delete is not None:
            db.execute(f"PRAGMA secure_delete = {self.secure_delete}")
        return db

    def _prepare(self, db: sqlite3.Connection, *, create: bool) -> None:
        if create:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
            present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {t.name for t in self.layout.tables} <= present:
                # One transaction: a reader sees every table or none.
                db.executescript(f"BEGIN IMMEDIATE;\n{self.layout.schema}\n"
                                 "INSERT OR IGNORE INTO meta (key, value) VALUES "
                                 f"('schema_version', '{self.layout.schema_version}');\nCOMMIT;")
        elif not _has_table(db, "meta"):
            return  # a reader early: the writer has not created the schema yet
        version = self._version(db)
        if version is not None and version > self.layout.schema_version:
            raise self.layout.error(f"{self.path}: schema version {version} is newer than this program's")
        if create and version is not None and version < self.layout.schema_version:
            self._migrate(db)
        if create and self.layout.indexes:
            self._index(db)

    def _version(self, db: sqlite3.Connection) -> int | None:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = None if row is None else str(row[0])
        if version is not None and not version.isdecimal():
            raise self.layout.error(f"{self.path}: schema version {version[:40]!r} is not a number")
        return None if version is None else int(version)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring an older file up to this program's schema, in one transaction (the other
        daemon may be doing the same: whoever comes second finds it done).  Old rows stay
        as they are; what they lack, readers take as absent."""
        def migrate(db: sqlite3.Connection) -> int:
            version = self._version(db) or 0
            for target, sql in self.layout.migrations:
                if target > version:
                    db.execute(sql)
                    version = target
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
            return version

        version = _immediate(db, migrate)
        log.info("%s %s brought up to schema version %d", self.layout.what, self.path, version)

    def _index(self, db: sqlite3.Connection) -> None:
        present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        for name, sql in self.layout.indexes:
            if name not in present:
                self._make_index(db, name, sql)

    def _make_index(self, db: sqlite3.Connection, name: str, sql: str) -> None:
        started = time.monotonic()
        _immediate(db, lambda c: c.execute(sql))
        log.info("%s %s: index %s made in %.1f s", self.layout.what, self.path, name, time.monotonic() - started)

    def _open_once(self) -> sqlite3.Connection:
        db = self._connect(self.path, readonly=self.readonly)
        try:
            self._prepare(db, create=not self.readonly)
        except BaseException:
            db.close()
            raise
        self.identity = _identity(self.path)
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                return self._open_once()
            with _directory_lock(self.path, exclusive=False):
                return self._open_once()
        except sqlite3.Error as e:
            if self.readonly or fault_of(e) is not Fault.CORRUPT:
                raise self._error(e) from None
            damaged, reason = _identity(self.path), str(e)
        self._recover(damaged, reason)
        try:
            with _directory_lock(self.path, exclusive=False):
                return self._open_once()
        except sqlite3.Error as e2:
            raise self._error(e2) from None

    def _error(self, e: sqlite3.Error) -> StoreError:
        return self.layout.error(f"{self.path}: {e}", fault_of(e))

    def close(self) -> None:
        self.identity = None
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    def set_busy_timeout(self, ms: int) -> None:
        """How long statements wait for another process's lock from now on (this connection
        and those it is reopened as)."""
        self.busy_timeout_ms = ms
        with contextlib.suppress(sqlite3.Error):
            self.db.execute(f"PRAGMA busy_timeout = {int(ms)}")

    def shutdown(self) -> None:
        """close(), and the checkpoint thread's end (waited for, briefly)."""
        self.close()
        if self.checkpointer is not None:
            self.checkpointer.stop()

    def committed(self) -> None:
        """A write transaction of this connection committed (the checkpoints follow): said
        by `write`, and by a caller whose single statement committed through `run`."""
        if self.checkpointer is not None:
            self.checkpointer.committed()

    def reopen(self) -> None:
        self.close()
        self.db = self._open()

    def is_current(self) -> bool:
        """Whether the file at our path is the one open (one stat)."""
        now = _identity(self.path)
        return now is not None and now == self.identity

    def follow(self) -> None:
        """Reopen if the file at our path is no longer the one open (replaced after a
        recovery by the other daemon, or removed with its directory), or if the last
        attempt to open it failed."""
        now = _identity(self.path)
        if now is not None and now == self.identity:
            return
        if self.identity is not None:
            if now is None:
                log.warning("%s %s disappeared; starting a new one", self.layout.what, self.path)
            else:
                log.warning("%s %s was replaced; opening the new file", self.layout.what, self.path)
        self.reopen()

    def sync(self) -> None:
        """Make every transaction committed so far survive a power cut (OSError when the
        disk refuses): `sync_plan` and `SyncPlan.run` in one."""
        plan = self.sync_plan()
        plan.run()
        self.synced(plan)

    def sync_plan(self) -> SyncPlan:
        """What to fsync so that every transaction committed so far survives a power cut:
        the WAL (what synchronous=FULL does at each commit); the first time for this file,
        also the directories naming it, so that a new file is found again.  Its `run` may be
        called on another thread while this connection goes on committing; then `synced`.

        Never the database file itself: closing a descriptor of it would drop the POSIX
        locks SQLite holds on it, and another process would then take this connection's
        WAL for an orphan and delete it.  It needs none: SQLite syncs it when it creates it
        (its header) and at every checkpoint, before the WAL is reused."""
        paths = [self.path + "-wal"]
        if self._synced_file != self.identity:
            directory = os.path.dirname(os.path.abspath(self.path))
            paths += [directory, os.path.dirname(directory)]
        return SyncPlan(tuple(paths), self.identity)

    def synced(self, plan: SyncPlan) -> None:
        """`plan` ran without error: its directories need no sync again for this file."""
        self._synced_file = plan.identity

    def has_table(self, name: str) -> bool:
        return self.run(lambda db: _has_table(db, name))

    # --- running statements ---------------------------------------------------------------

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)`; a damaged file is recovered and `work` run once more on the
        new one.  Any failure is a StoreError."""
        try:
            return work(self.db)
        except sqlite3.Error as e:
            if self.readonly or fault_of(e) is not Fault.CORRUPT:
                raise self._error(e) from None
            damaged = self.identity
            self.close()
            self._recover(damaged, str(e))
            self.db = self._open()
        try:
            return work(self.db)
        except sqlite3.Error as e:
            raise self._error(e) from None

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one write transaction (BEGIN IMMEDIATE ... COMMIT), with `run`'s recovery."""

        result = self.run(lambda db: _immediate(db, work))
        self.committed()
        return result

    # --- damage -------------------------------------------------------------------------

    def _recover(self, damaged: Identity | None, reason: str) -> None:
        """Replace the damaged file by a new one holding every row that can be read."""
        with _directory_lock(self.path, exclusive=True):
            if damaged is None or _identity(self.path) != damaged:
                return  # gone, or another process has already recovered it
            temp = f"{self.path}.salvage-{os.getpid()}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp + suffix)
            copied = 0
            with contextlib.ExitStack() as held:
                source = self._salvage_source(held)
                new = self._connect(temp)
                try:
                    self._prepare(new, create=True)
                    if source is not None:
                        copied = salvage(source, new, self.layout.tables)
                finally:
                    new.close()  # the only connection: its WAL is checkpointed and removed
                target = move_aside(self.path)
                os.rename(temp, self.path)
            log.error("%s %s is damaged (%s); moved aside to %s and starting a new one with the %d "
                      "rows that could still be read", self.layout.what, self.path, reason, target, copied)

    def _salvage_source(self, held: contextlib.ExitStack) -> sqlite3.Connection | None:
        """A read-only connection to the damaged file, and its write lock held by another
        connection until the copy has replaced it, so no writer adds a row the copy misses.
        The read-only connection closes last: it never writes the damaged file."""
        try:
            source = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error:
            return None
        held.callback(source.close)
        try:
            # First, before anything reads the schema: a file shorter than its header says
            # (truncated) is then read as far as it goes.
            source.execute("PRAGMA writable_schema = ON")
            source.execute("SELECT name FROM sqlite_master").fetchall()
        except sqlite3.Error:
            return None  # not even the list of tables can be read: nothing to copy
        try:
            locker = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
        except sqlite3.Error:
            return source
        held.callback(locker.close)
        try:
            locker.execute("BEGIN IMMEDIATE")
            held.callback(lambda: locker.in_transaction and locker.execute("ROLLBACK"))
        except sqlite3.Error:
            pass  # too damaged to lock is too damaged to write
        return source


class Checkpointer:
    """Checkpoints kept off the writer's path.

    SQLite checkpoints a WAL database from inside the commit that takes the WAL past
    wal_autocheckpoint pages: it copies megabytes into the database file and syncs both
    files, milliseconds in which a writer serving senders answers nobody.  Here a thread
    with its own connection does that copy every `CHECKPOINT_INTERVAL` while commits come,
    and the writer goes on (sqlite3 leaves the interpreter lock while SQLite works).  SQLite
    starts the WAL over only after a checkpoint that copied every frame, which one racing a
    busy writer never completes; so once the WAL is `RESTART_FRAMES` long, the thread copies
    again what came during its copy until a copy is short (`RESTART_TAIL`), then the little
    left holding writers back (a RESTART checkpoint: that copy and a sync of the database
    file), and the next commit starts the WAL over.  Once commits pause for an
    interval, the WAL is truncated, so a burst leaves no large file behind.  The writer's
    own checkpoint stays at `BACKSTOP_PAGES`, for when the thread cannot keep up or fails
    (failures are logged at debug level: they are not the writer's concern)."""

    def __init__(self, path: str, interval: float = CHECKPOINT_INTERVAL):
        self.path = path
        self.interval = interval
        self.rounds = 0
        self.restarts = 0  # RESTART checkpoints run (a WAL past RESTART_FRAMES)
        self.catch_ups = 0  # passive copies made before a RESTART
        self._commits = 0  # written by the writer's thread only
        self._seen = 0
        self._idle = True
        self._stopping = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        self._commits += 1
        if self._idle and not self._stopping:
            self._idle = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
                self._thread.start()
            self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        opened: Identity | None = None
        try:
            while not self._stopping:
                self._wake.wait(None if self._idle else self.interval)
                self._wake.clear()
                if self._stopping:
                    break
                commits = self._commits
                try:
                    if db is None or _identity(self.path) != opened:
                        if db is not None:
                            db.close()
                        db, opened = None, _identity(self.path)
                        # mode=rw: a file that is gone is not created here; the writer recreates it.
                        db = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, isolation_level=None)
                        db.execute("PRAGMA busy_timeout = 0")
                    if commits != self._seen:
                        self._seen = commits
                        _busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if frames >= RESTART_FRAMES:
                            # What came during that copy is copied again without holding
                            # anyone back (each round is shorter), then the little left is
                            # copied holding writers back, so that the next commit starts
                            # the WAL over; busy (a reader, another checkpoint): next round.
                            for _ in range(CATCH_UP_ROUNDS):
                                before = copied
                                busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                                self.catch_ups += 1
                                if busy or copied - before <= RESTART_TAIL:
                                    break  # what comes during a copy this short is little
                            db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                            self.restarts += 1
                    else:  # quiet for an interval: copy the rest and give the space back
                        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                        self._idle = True
                        if self._commits != self._seen:  # a commit came in between
                            self._idle = False
                    self.rounds += 1
                except sqlite3.Error as e:
                    log.debug("checkpoint of %s: %s", self.path, e)
                    if db is not None:
                        db.close()
                    db = None
                    self._seen, self._idle = commits, True
        finally:
            if db is not None:
                db.close()


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def move_aside(path: str) -> str:
    """Rename a damaged database and its WAL and shared memory out of the way; the new name."""
    target = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + suffix, target + suffix)
    return target


def salvage(source: sqlite3.Connection, target: sqlite3.Connection, tables: Sequence[Table]) -> int:
    """Copy every row of `tables` that `source` can still read into `target`, keys kept;
    returns how many rows were copied."""
    copied = 0
    target.execute("BEGIN IMMEDIATE")
    for table in tables:
        table = _present(source, table)
        columns = ", ".join(table.columns)
        insert = f"INSERT OR IGNORE INTO {table.name} ({columns}) VALUES ({', '.join('?' * len(table.columns))})"
        for row in readable_rows(source, table):
            try:
                copied += target.execute(insert, row).rowcount
            except sqlite3.Error:
                pass  # a value the new file cannot take is as lost as an unreadable one
        _keep_sequence(source, target, table.name)
    target.execute("COMMIT")
    return copied


def _present(source: sqlite3.Connection, table: Table) -> Table:
    """`table` with only the columns the damaged file has (it may be of an older schema)."""
    try:
        have = {r[1] for r in source.execute(f"PRAGMA table_info({table.name})")}
    except sqlite3.Error:
        return table
    if not have:
        return table
    return Table(table.name, tuple(c for c in table.columns if c in have))


def _keep_sequence(source: sqlite3.Connection, target: sqlite3.Connection, table: str) -> None:
    """New rows continue above every key the damaged file ever gave out (AUTOINCREMENT)."""
    try:
        row = source.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        if row is not None:
            seq = int(row[0])
            if not target.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?", (seq, table)).rowcount:
                target.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, seq))
    except (sqlite3.Error, TypeError, ValueError):
        pass


def readable_rows(db: sqlite3.Connection, table: Table) -> Iterator[tuple]:
    """The rows of `table` that can be read, in key order.

    Where the file reads well, rows come a chunk at a time.  Where a read fails, the keys
    after the last good row are looked up one by one, with a range read every chunk's
    length to see whether the damage has been passed, up to the highest key the file
    knows of and never more than PROBE_WITHOUT_BOUND keys past the last row found.
    """
    columns = ", ".join(table.columns)
    chunk = f"SELECT rowid, {columns} FROM {table.name} WHERE rowid > ? ORDER BY rowid LIMIT {SALVAGE_CHUNK}"
    one = f"SELECT rowid, {columns} FROM {table.name} WHERE rowid = ?"
    after = _ROWID_MIN
    bound: int | None = None
    while True:
        try:
            rows = db.execute(chunk, (after,)).fetchall()
        except sqlite3.DatabaseError:
            rows = None
        if rows is not None and (not rows or rows[-1][0] > after):
            if not rows:
                return
            for r in rows:
                yield tuple(r[1:])
            after = rows[-1][0]
            continue
        if bound is None:
            bound = _highest_key(db, table.name, after)
        key = max(after, 0)  # our keys start at 1
        # The highest key can itself be damaged: look no further than a bounded distance
        # past the last row found.
        stop = min(bound, key + PROBE_WITHOUT_BOUND)
        while True:
            key += 1
            if key > stop:
                return
            try:
                r = db.execute(one, (key,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if r is not None:
                yield tuple(r[1:])
                after = key
                break
            if (key - after) % SALVAGE_CHUNK == 0 and _reads_from(db, chunk, key):
                after = key
                break


def _reads_from(db: sqlite3.Connection, chunk: str, key: int) -> bool:
    try:
        db.execute(chunk, (key,)).fetchall()
        return True
    except sqlite3.DatabaseError:
        return False


def _highest_key(db: sqlite3.Connection, table: str, after: int) -> int:
    for sql, args in (("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)),
                      (f"SELECT MAX(rowid) FROM {table}", ())):
        try:
            row = db.execute(sql, args).fetchone()
            if row is not None and row[0] is not None:
                return int(row[0])
        except (sqlite3.Error, TypeError, ValueError):
            pass
    return max(after, 0) + PROBE_WITHOUT_BOUND
