"""Records in SQLite (WAL) or PostgreSQL (psycopg 3), behind one small interface.

A `Store` is one connection and is used by one thread at a time: the writer thread has
its own, readers have theirs.  SQLite runs in WAL mode with synchronous=FULL by default, so
a record answered 201 survives a power cut, and readers never wait for the writer.  SQL is written
once with ``?`` placeholders; PostgreSQL gets ``%s``.

`Durability.RELAXED` trades the last moments before a power cut for throughput where
fsync is slow: SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off.  Either way a
committed record survives a crash of the collector itself.  Every database error becomes a
`StoreError` naming the database (never its password) and what failed.

De-duplication is the database's: `record_id` is UNIQUE, an insert that conflicts becomes
an increment of the stored row's `duplicates` and returns that row.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import operator
import os
import sqlite3
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from telemetry.errors import TelemetryError

from .credentials import Credential, Kind, Scope
from .dburl import Backend, DatabaseURL
from .model import COLUMNS, NewRecord, StoredRecord, record_from_row
from .purge import PurgePolicy, derived_statements, purge_statements
from .query import RecordQuery
from .schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 10.0  # seconds
CONNECT_TIMEOUT = 10  # seconds
_MIGRATION_LOCK = 0x74656C65  # PostgreSQL advisory lock key for migrations
SHARD_MARK = "#"  # counters: name#shard, one row per writer (see add_counters)

_SELECT = f"SELECT id, duplicates, {', '.join(COLUMNS)} FROM records"
_INSERT = (
    f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (record_id) DO NOTHING RETURNING id"
)
_VALUES = operator.attrgetter(*COLUMNS)  # a NewRecord's values in _INSERT's order
_REPEAT = (
    "UPDATE records SET duplicates = duplicates + 1 WHERE record_id = ? "
    f"RETURNING id, duplicates, {', '.join(COLUMNS)}"
)
_ADD_COUNTER = (
    "INSERT INTO counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
)


class StoreError(TelemetryError):
    pass


class CredentialExists(StoreError):
    pass


def _credential(row: tuple) -> Credential | None:
    """A credentials row; None for one this version cannot read (written by a newer one)."""
    try:
        return Credential(name=row[0], kind=Kind(row[1]), scope=Scope(row[2]), created=int(row[3]))
    except ValueError:
        return None


def one_line(error: BaseException) -> str:
    """Driver messages span lines and may quote the connection string; keep neither."""
    return " ".join(str(error).split())[:500]


class Durability(enum.Enum):
    FULL = "full"  # the commit is on disk before the answer
    RELAXED = "relaxed"  # survives a collector crash; a power cut can lose the last moments


@dataclass(frozen=True)
class Stored:
    record: StoredRecord
    duplicate: bool  # True: the record id was stored before; nothing new was written


def open_store(url: DatabaseURL, *, migrate: bool = True, durability: Durability = Durability.FULL) -> Store:
    cls = SQLiteStore if url.backend is Backend.SQLITE else PostgresStore
    store = cls(url, durability)
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store


class Store:
    backend: Backend

    def __init__(self, url: DatabaseURL, durability: Durability = Durability.FULL):
        self.url = url
        self.durability = durability
        self._conn = self._connect()

    # --- dialect ------------------------------------------------------------------
    def _connect(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _errors(self) -> tuple[type[BaseException], ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _sql(self, sql: str) -> str:
        return sql

    def _lock_for_migration(self) -> None:
        pass

    # --- shared -------------------------------------------------------------------
    def _execute(self, sql: str, params: tuple | list = ()):
        return self._conn.execute(self._sql(sql), params)

    @contextlib.contextmanager
    def _reporting(self, what: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except self._errors() as e:
            raise StoreError(f"{self.url.redacted()}: {what} failed: {one_line(e)}") from e

    def migrate(self) -> int:
        """Apply the missing migrations; returns the schema version now in force."""
        with self._reporting("schema migration"), self.transaction():
            self._lock_for_migration()
            self._execute(VERSION_TABLE)
            row = self._execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.url.redacted()}: the database has schema version {current}, newer than "
                    f"this collector's {SCHEMA_VERSION}; upgrade telemetry-collector"
                )
            for m in MIGRATIONS:
                if m.version > current:
                    log.info("database %s: applying migration %d (%s)", self.url.redacted(), m.version, m.what)
                    for statement in m.sql(self.backend):
                        self._execute(statement)
                    self._execute("INSERT INTO schema_version (version) VALUES (?)", (m.version,))
        return max(current, SCHEMA_VERSION)

    def schema_version(self) -> int:
        with self._reporting("reading the schema version"):
            return self._execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0

    def insert(self, rec: NewRecord) -> Stored:
        """Store `rec` (inside the caller's transaction), or count a repeat of its record id."""
        with self._reporting("storing a record"):
            row = self._execute(_INSERT, _VALUES(rec)).fetchone()
            if row is not None:
                return Stored(StoredRecord(id=int(row[0]), record=rec), duplicate=False)
        return self._repeat(rec)

    def _repeat(self, rec: NewRecord) -> Stored:
        with self._reporting("storing a record"):
            repeat = self._execute(_REPEAT, (rec.record_id,)).fetchone()
            if repeat is None:  # pragma: no cover - the conflict names an existing row
                raise StoreError(f"{self.url.redacted()}: record {rec.record_id} conflicts but cannot be read")
            return Stored(record_from_row(repeat), duplicate=True)

    def insert_many(self, recs: list[NewRecord]) -> list[Stored]:
        """`insert` for each, in order (inside the caller's transaction)."""
        return [self.insert(rec) for rec in recs]

    def add_counters(self, deltas: Mapping[str, int], shard: int = 0) -> None:
        """Add to the counters (inside the caller's transaction).  Each writer adds to rows of
        its own `shard` (``name#shard``): writers of several workers updating one row would
        wait for each other's commit, one fsync after the other."""
        with self._reporting("updating counters"):
            for name, delta in sorted(deltas.items()):
                if delta:
                    self._execute(_ADD_COUNTER, (f"{name}{SHARD_MARK}{shard}" if shard else name, delta))

    def counters(self) -> dict[str, int]:
        """Every counter, its shards added up."""
        totals: dict[str, int] = {}
        with self._reporting("reading counters"):
            for name, value in self._execute("SELECT name, value FROM counters").fetchall():
                base = name.split(SHARD_MARK, 1)[0]
                totals[base] = totals.get(base, 0) + int(value)
        return totals

    def count_records(self) -> int:
        with self._reporting("counting records"):
            return int(self._execute("SELECT count(*) FROM records").fetchone()[0])

    # --- reads ----------------------------------------------------------------------
    _PAYLOAD_SIZE = "length(payload)"

    def _where(self, q: RecordQuery, now: int) -> tuple[str, list[object]]:
        clauses = ["ts_reception > ?"]
        params: list[object] = [now - q.window]
        for column, value, op in (
            ("severity", q.severity, "="),
            ("classification", q.classification, "="),
            ("build", q.build, "="),
            ("machine_id", q.machine_id, "="),
            ("id", q.from_id, ">="),
            ("id", q.before_id, "<"),
            ("ts_capture", q.ts_capture, ">"),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        return " AND ".join(clauses), params

    def query(self, q: RecordQuery, now: int) -> list[StoredRecord]:
        where, params = self._where(q, now)
        sql = f"{_SELECT} WHERE {where} ORDER BY id DESC LIMIT ?"
        params.append(q.limit)
        # One statement reads one snapshot; no transaction, which on SQLite would take the
        # write lock (BEGIN IMMEDIATE) and make the writer wait for this read.
        with self._reporting("querying records"):
            return [record_from_row(r) for r in self._execute(sql, params).fetchall()]

    def query_sizes(self, q: RecordQuery, now: int) -> list[tuple[int, int]]:
        """(id, payload size) of the records `q` selects, highest id first: what a streamed
        answer reads in bounded groups (`reading`)."""
        where, params = self._where(q, now)
        sql = f"SELECT id, {self._PAYLOAD_SIZE} FROM records WHERE {where} ORDER BY id DESC LIMIT ?"
        params.append(q.limit)
        with self._reporting("querying records"):
            return [(int(i), int(n or 0)) for i, n in self._execute(sql, params).fetchall()]

    def records_by_id(self, ids: list[int]) -> list[StoredRecord]:
        """Those of `ids` still stored, highest id first."""
        if not ids:
            return []
        sql = f"{_SELECT} WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY id DESC"
        with self._reporting("reading records"):
            return [record_from_row(r) for r in self._execute(sql, ids).fetchall()]

    # --- read credentials -------------------------------------------------------------
    def add_credential(self, credential: Credential, secret_hash: str | None) -> None:
        """A new credential; `CredentialExists` if its name is taken."""
        with self._reporting("adding a credential"), self.transaction():
            taken = self._execute("SELECT 1 FROM credentials WHERE name = ?", (credential.name,)).fetchone()
            if taken:
                raise CredentialExists(f"a credential named {credential.name!r} exists; revoke it first "
                                       "or choose another name")
            self._execute("INSERT INTO credentials (name, kind, scope, secret_hash, created) VALUES (?, ?, ?, ?, ?)",
                          (credential.name, credential.kind.value, credential.scope.value, secret_hash,
                           credential.created))

    def credentials(self) -> list[Credential]:
        with self._reporting("listing credentials"):
            rows = self._execute("SELECT name, kind, scope, created FROM credentials ORDER BY name").fetchall()
        return [c for c in map(_credential, rows) if c is not None]

    def revoke_credential(self, name: str) -> bool:
        """False if there was no credential of that name."""
        with self._reporting("revoking a credential"), self.transaction():
            return self._execute("DELETE FROM credentials WHERE name = ?", (name,)).rowcount > 0

    def credential_for_secret(self, secret_hash: str) -> Credential | None:
        with self._reporting("checking a credential"):
            row = self._execute("SELECT name, kind, scope, created FROM credentials WHERE secret_hash = ? "
                                "AND kind = ?", (secret_hash, Kind.TOKEN.value)).fetchone()
        return _credential(row) if row else None

    def certificate_reader(self, common_name: str) -> Credential | None:
        with self._reporting("checking a credential"):
            row = self._execute("SELECT name, kind, scope, created FROM credentials WHERE name = ? AND kind = ?",
                                (common_name, Kind.CERTIFICATE.value)).fetchone()
        return _credential(row) if row else None

    def purge(self, policy: PurgePolicy, now: int) -> int:
        """Delete what the retention policy says is too old; returns how many records."""
        deleted = 0
        with self._reporting("purging records"), self.transaction():
            for sql, params in purge_statements(policy, now):
                deleted += max(self._execute(sql, params).rowcount, 0)
            for sql, params in derived_statements(policy, now):
                self._execute(sql, params)
        return deleted

    # --- statements of the derived tables and the views (derive/tables.py, views/reads.py) --
    # SQL with ``?`` placeholders; `least`/`greatest` and `share_lock` are the dialect's.
    least = "min"
    greatest = "max"
    share_lock = ""  # appended to a SELECT: hold the rows read until the transaction ends

    def rows(self, sql: str, params: Sequence[object] = (), what: str = "reading") -> list[tuple]:
        with self._reporting(what):
            return self._execute(sql, list(params)).fetchall()

    def run(self, sql: str, params: Sequence[object] = (), what: str = "writing") -> int:
        """Rows changed."""
        with self._reporting(what):
            return self._execute(sql, list(params)).rowcount

    def run_many(self, sql: str, params: Sequence[Sequence[object]], what: str = "writing") -> None:
        if params:
            with self._reporting(what):
                self._conn.cursor().executemany(self._sql(sql), [list(p) for p in params])

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:  # pragma: no cover - abstract
        """Inside a transaction: undo only what the block wrote if it raises."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


def _create_private(path: str) -> None:
    """Create the database file private to its owner (records describe machines), and refuse
    a symbolic link.  An existing file is only looked at, never opened here: closing any
    descriptor of a file drops every POSIX lock this process holds on it, including those
    of its open SQLite connections, and another process could then take the file for
    unused and checkpoint away the WAL under them."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            _create_private(path)
        return
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


class SQLiteStore(Store):
    backend = Backend.SQLITE

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _connect(self) -> sqlite3.Connection:
        path = self.url.target
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            _create_private(path)
        except OSError as e:
            hint = "; it is a symbolic link" if e.errno == errno.ELOOP else ""
            raise StoreError(f"cannot open SQLite database {path}: {e.strerror}{hint}") from None
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"SQLite database {path}: cannot use WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durability is Durability.FULL else 'NORMAL'}")
            conn.execute("PRAGMA case_sensitive_like=ON")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite database {path}: {one_line(e)}") from None
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self._conn.execute("SAVEPOINT derived")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK TO SAVEPOINT derived")
                self._conn.execute("RELEASE SAVEPOINT derived")
            raise
        self._conn.execute("RELEASE SAVEPOINT derived")


class PostgresStore(Store):
    backend = Backend.POSTGRESQL

    def _errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def _connect(self):
        try:
            import psycopg
        except ImportError:
            from .dependencies import hint

            raise StoreError(f"PostgreSQL needs psycopg 3: {hint('psycopg')}") from None
        try:
            conn = psycopg.connect(self.url.target, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            conn.execute(f"SET synchronous_commit = {'on' if self.durability is Durability.FULL else 'off'}")
            return conn
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to {self.url.redacted()}: {one_line(e)}") from None

    # The size from the value's header: no need to fetch a TOASTed payload to learn it.
    _PAYLOAD_SIZE = "octet_length(payload)"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def insert_many(self, recs: list[NewRecord]) -> list[Stored]:
        """One multi-row INSERT for the batch: one round trip to the server instead of one per
        record.  Rows it skipped (a record id stored before, or twice in the batch) are
        repeats, counted on the stored row as `insert` does."""
        if len(recs) < 2 or any(r.record_id is None for r in recs):
            return super().insert_many(recs)
        row = f"({', '.join(['%s'] * len(COLUMNS))})"
        sql = (f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES {', '.join([row] * len(recs))} "
               "ON CONFLICT (record_id) DO NOTHING RETURNING id, record_id")
        params = [v for rec in recs for v in _VALUES(rec)]
        with self._reporting("storing records"):
            ids = dict((rid, int(i)) for i, rid in self._conn.execute(sql, params).fetchall())
        out: list[Stored] = []
        for rec in recs:
            new_id = ids.pop(rec.record_id, None)
            out.append(Stored(StoredRecord(id=new_id, record=rec), duplicate=False) if new_id is not None
                       else self._repeat(rec))
        return out

    def _lock_for_migration(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._conn.transaction():
            yield

    least = "LEAST"
    greatest = "GREATEST"
    share_lock = " FOR SHARE"

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        with self._conn.transaction():  # nested: a savepoint
            yield
