"""One end-to-end run: a user-mode installation, its daemons (services.py), a collector,
senders using the library, the ledger of what they were told, and the checks.

"Acknowledged" is what the library says: `Client.send` returned an Ack with kept=True.
Every sender gives every record an event id of its own and writes down the record id
and event id of each acknowledged one; afterwards each must be in the collector exactly
once once duplicates are folded on the record id (X-Telemetry-Record-Id), and the
duplicates the collector folded are counted.
"""

from __future__ import annotations

import collections
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from services import POSTD, PROBD, Exit, ServiceManager
from support import METADATA, short_tempdir, wait_until

from telemetry.ack import AckStatus
from telemetry.client import Client, DaemonUnavailable, RecordRejected, SendError
from telemetry.record import Record, create_record

MB = 1024 * 1024


# --- what the senders were told ---------------------------------------------------------

@dataclass
class Ledger:
    """Every send and its answer; filled by several sender threads."""
    sent: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # record id -> event id
    legacy: int = 0  # kept=True without a reply: an original telemprobd, never ours
    refused: collections.Counter = field(default_factory=collections.Counter)  # AckStatus value -> n
    errors: collections.Counter = field(default_factory=collections.Counter)  # first words -> n
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sending(self) -> None:
        with self.lock:
            self.sent += 1

    def kept(self, record_id: str | None, event_id: str, legacy: bool) -> None:
        with self.lock:
            if legacy or record_id is None:
                self.legacy += 1
                return
            self.acked[record_id] = event_id

    def refusal(self, status: AckStatus) -> None:
        with self.lock:
            self.refused[status.value] += 1

    def error(self, e: SendError) -> None:
        with self.lock:
            self.errors[" ".join(str(e).split()[:4])] += 1

    @property
    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


def event_id(sender: int, n: int) -> str:
    return f"{sender & 0xFFFF:04x}{os.getpid() & 0xFFFF:04x}{n:024x}"


def make_record(sender: int, n: int, payload_size: int, classification: str = "org.example/e2e/chaos") -> Record:
    body = f"sender {sender} record {n} ".encode()
    body = (body * (payload_size // len(body) + 1))[:payload_size]
    return create_record(classification, 2, body, event_id=event_id(sender, n), metadata=METADATA)


class Senders:
    """Threads sending records through the library until stopped (or `total` are sent),
    at `rate` records/s over all of them (None: as fast as acknowledgements come)."""

    def __init__(self, client: Client, ledger: Ledger, *, threads: int = 3, rate: float | None = None,
                 total: int | None = None, payload_size: int = 200, first_sender: int = 0,
                 classification: str = "org.example/e2e/chaos"):
        self.client = client
        self.ledger = ledger
        self.threads = threads
        self.interval = threads / rate if rate else 0.0
        self.total = total
        self.payload_size = payload_size
        self.first_sender = first_sender
        self.classification = classification
        self.stop_event = threading.Event()
        self._taken = 0
        self._take_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _take(self) -> bool:
        with self._take_lock:
            if self.total is not None and self._taken >= self.total:
                return False
            self._taken += 1
            return True

    def _run(self, sender: int) -> None:
        n = 0
        next_at = time.monotonic()
        while not self.stop_event.is_set() and self._take():
            if self.interval:
                delay = next_at - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    return
                next_at = max(next_at + self.interval, time.monotonic() - self.interval)
            record = make_record(sender, n, self.payload_size, self.classification)
            n += 1
            self.ledger.sending()
            try:
                ack = self.client.send(record)
            except RecordRejected as e:
                self.ledger.refusal(e.ack.status)
                continue
            except DaemonUnavailable as e:
                self.ledger.error(e)
                self.stop_event.wait(0.05)  # nothing listens: a probe would give up here
                continue
            except SendError as e:
                self.ledger.error(e)
                continue
            self.ledger.kept(ack.record_id, record.event_id, ack.legacy)

    def start(self) -> Senders:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(self.first_sender + i,), daemon=True, name=f"sender-{i}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.join()

    def join(self, timeout: float = 60.0) -> None:
        for t in self._threads:
            t.join(timeout)


# --- the collectors ---------------------------------------------------------------------

@dataclass(frozen=True)
class Stored:
    id: int
    event_id: str
    duplicates: int


class ReferenceCollector:
    """The reference collector (`python -m telemetry_collector.main serve`) with a SQLite
    database; it can be stopped and started again on the same port (an outage)."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.db_path = workdir / "collector.db"
        self.log_path = workdir / "collector.log"
        self.env = env
        self.port = 0
        self._running = None

    def start(self) -> ReferenceCollector:
        from telemetry_collector.launch import start_collector

        # The pipeline is measured here, not the collector's rate limits: every record comes
        # from one address and one machine id.
        args = ("--machine-rate", "0", "--address-rate", "0")
        if self.port:
            args += ("--listen", f"127.0.0.1:{self.port}")
        self._running = start_collector(f"sqlite:///{self.db_path}", args=args, env=self.env,
                                        log_path=str(self.log_path))
        self.port = int(self._running.url.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self._running is not None:
            self._running.stop()
            self._running = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/collector"

    def stats(self) -> dict:
        assert self._running is not None, "the collector is stopped"
        return self._running.stats()

    def rows(self) -> dict[str, Stored]:
        """Stored records by record id (read from its database, read-only)."""
        if not self.db_path.exists():
            return {}
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            return {rid: Stored(i, ev, dup) for i, rid, ev, dup in
                    db.execute("SELECT id, record_id, event_id, duplicates FROM records")}
        finally:
            db.close()

    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.rows().values())

    def __enter__(self) -> ReferenceCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the queue and the journal, read as telemctl reads them --------------------------------

def _read(path: str, sql: str, params: tuple = ()) -> list[tuple]:
    if not os.path.exists(path):
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def queue_stats(spool_dir: str) -> tuple[int, int]:
    """(rows, bytes) in the queue; (-1, -1) while the file is damaged (until a daemon
    notices and moves it aside)."""
    try:
        rows = _read(os.path.join(spool_dir, "queue", "queue.db"), "SELECT COUNT(*), TOTAL(size) FROM records")
    except sqlite3.DatabaseError:
        return -1, -1
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def queue_order(spool_dir: str) -> list[str]:
    return [r[0] for r in _read(os.path.join(spool_dir, "queue", "queue.db"), "SELECT record_id FROM records ORDER BY seq")]


def journal_outcomes(journal_dir: str) -> dict[str, str]:
    """record id -> outcome of every journal entry still kept."""
    return dict(_read(os.path.join(journal_dir, "journal.db"), "SELECT record_id, outcome FROM entries"))


class JournalWatch:
    """Journal outcomes gathered while a run goes on: the journal keeps only its last
    10,000 entries, a long run decides more."""

    def __init__(self, journal_dir: str, interval: float = 1.0):
        self.journal_dir = journal_dir
        self.outcomes: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._read()

    def _read(self) -> None:
        try:
            self.outcomes.update(journal_outcomes(self.journal_dir))
        except sqlite3.Error:
            pass  # being created, or moved aside: the next read gets it

    def stop(self) -> dict[str, str]:
        self._stop.set()
        self._thread.join(30)
        self._read()
        return self.outcomes


def integrity(path: str) -> str:
    """SQLite's own verdict on a database file ("ok" when sound)."""
    rows = _read(path, "PRAGMA integrity_check")
    return "; ".join(r[0] for r in rows) if rows else "missing"


# --- the pipeline ----------------------------------------------------------------------------

def _configured(config: str, key: str) -> str | None:
    for line in config.splitlines():
        name, eq, value = line.partition("=")
        if eq and name.strip() == key:
            return value.strip()
    return None


class Pipeline:
    """Config, opt-in and the service manager for one installation (`inst`: the tests'
    UserInstall, or one made by bench/chaos.py)."""

    def __init__(self, inst, server: str, config: str = "", *, postd: bool = True,
                 socket_activation: bool = True, socket_dir: str | None = None, log_name: str = "logs"):
        self.inst = inst
        self.socket_dir = socket_dir or short_tempdir("e2e-")
        self._own_socket_dir = socket_dir is None
        self.socket_path = os.path.join(self.socket_dir, "telem-0")
        self.spool_dir = _configured(config, "spool_dir") or inst.paths.spool_dir
        self.journal_dir = inst.paths.journal_dir
        self.config_text = (f"socket_path={self.socket_path}\nserver={server}\nlog_level=info\n"
                            f"retry_max_delay=1\n{config}\n")
        inst.write_config(self.config_text)
        inst.opt_in()
        os.makedirs(self.spool_dir, exist_ok=True)
        self.manager = ServiceManager(inst.env, self.socket_path, self.spool_dir,
                                      Path(inst.root) / log_name, socket_activation=socket_activation,
                                      postd=postd)

    def client(self) -> Client:
        return Client(self.inst.paths)

    def start(self) -> Pipeline:
        self.manager.start()
        for name in self.manager.services:
            self.manager.wait_ready(name)
        return self

    def stop(self) -> dict[str, int | None]:
        try:
            return self.manager.stop()
        finally:
            if self._own_socket_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        except AssertionError:
            if exc[0] is None:
                raise

    def queued(self) -> tuple[int, int]:
        return queue_stats(self.spool_dir)

    def wait_drained(self, timeout: float) -> None:
        wait_until(lambda: self.queued()[0] == 0, timeout, "the queue emptied")

    def peak_rss_mb(self, names: Iterable[str] = (PROBD, POSTD)) -> float:
        return max((self.manager.usage(n).peak_rss for n in names if n in self.manager.services), default=0) / MB


class Unavailable(Exception):
    """The scenario cannot run here (the message says why): the tests skip, the bench says so."""


@dataclass(frozen=True)
class Health:
    """How the daemons fared: unexpected exits and tracebacks in their logs."""
    crashes: tuple[Exit, ...]
    tracebacks: tuple[str, ...]  # daemon names

    @property
    def ok(self) -> bool:
        return not self.crashes and not self.tracebacks


def health(pipe: Pipeline) -> Health:
    return Health(tuple(pipe.manager.crashes()), tuple(sorted(pipe.manager.tracebacks())))


# --- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    scenario: str
    sent: int
    acked: int
    delivered: int  # acknowledged records found in the collector (once each)
    lost: int  # acknowledged, due for delivery, and not there
    duplicates: int  # repeated POSTs of a stored record (folded on the record id)
    max_rss_mb: float  # highest peak RSS of telemprobd / telempostd during the run
    note: str = ""


COLUMNS = ("scenario", "sent", "acked", "delivered", "lost", "duplicates", "max RSS MB")


def table(results: Iterable[Result]) -> str:
    rows = [COLUMNS] + [
        (r.scenario, str(r.sent), str(r.acked), str(r.delivered), str(r.lost), str(r.duplicates),
         f"{r.max_rss_mb:.1f}" if r.max_rss_mb else "-") for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def notes(results: Iterable[Result]) -> str:
    return "\n".join(f"{r.scenario}: {r.note}" for r in results if r.note)


def compare(acked: dict[str, str], stored: dict[str, Stored]) -> tuple[int, list[str], list[str]]:
    """(delivered, lost record ids, record ids stored under another event id)."""
    lost = [rid for rid in acked if rid not in stored]
    wrong = [rid for rid, ev in acked.items() if rid in stored and stored[rid].event_id != ev]
    return len(acked) - len(lost), lost, wrong
