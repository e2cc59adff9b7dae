"""The store's SQLite handling on real files: what an error means, and what becomes of a
damaged queue or journal (every row that can still be read survives, the damaged file is
kept aside untouched)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from telemetry.daemons.store import journal as J
from telemetry.daemons.store.database import Fault, StoreError, fault_of
from telemetry.daemons.store.queue import (
    QUEUE_DB,
    QUEUE_SUBDIR,
    NewRecord,
    Queue,
    QueueError,
    Sender,
)

PAGE = 4096


def rows(n: int, start: int = 0) -> list[NewRecord]:
    return [NewRecord(f"{i:032x}", 1_700_000_000.0 + i, Sender(1, 1, 1), b"h" * 600, f"payload {i}".encode() * 40)
            for i in range(start, start + n)]


def filled_queue(spool: Path, n: int) -> list[str]:
    """A queue holding `n` acknowledged records, everything checkpointed into queue.db."""
    q = Queue(str(spool))
    batch = rows(n)
    q.insert_many(batch)
    q.close()
    db = sqlite3.connect(spool / "queue" / QUEUE_DB)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return [r.record_id for r in batch]


def readable_ids(path: Path, n: int) -> set[str]:
    """Which records a careful reader can still get out of a damaged file, one by one."""
    copy = path.with_name("oracle.db")
    shutil.copyfile(path, copy)
    db = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    db.execute("PRAGMA writable_schema = ON")
    found = set()
    for seq in range(1, n + 1):
        try:
            row = db.execute("SELECT record_id FROM records WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            found.add(row[0])
    db.close()
    copy.unlink()
    return found


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def aside_files(spool: Path) -> list[str]:
    return [str(p) for p in (spool / "queue").glob(QUEUE_DB + ".corrupt-*") if not str(p).endswith(("-wal", "-shm"))]


def test_a_truncated_queue_keeps_every_readable_acknowledged_record(tmp_path, caplog):
    spool = tmp_path / "spool"
    ids = filled_queue(spool, 300)
    path = spool / "queue" / QUEUE_DB
    os.truncate(path, os.path.getsize(path) // 2)
    readable = readable_ids(path, len(ids))
    damaged = digest(str(path))
    assert 0 < len(readable) < len(ids)

    q = Queue(str(spool))
    survived = [r.record_id for r in q.all(10_000)]
    q.close()
    assert readable <= set(survived)
    known = [i for i in survived if i in set(ids)]  # a row cut by the truncation may read as garbage
    assert known == [i for i in ids if i in set(survived)]  # queue order kept
    [aside] = aside_files(spool)
    assert digest(aside) == damaged  # kept as it was found
    assert f"starting a new one with the {len(survived)}" in caplog.text


def test_a_damaged_page_in_the_middle_loses_only_its_rows(tmp_path):
    spool = tmp_path / "spool"
    ids = filled_queue(spool, 200)
    path = spool / "queue" / QUEUE_DB
    pages = os.path.getsize(path) // PAGE
    with open(path, "r+b") as f:
        f.seek((pages // 2) * PAGE)
        f.write(b"\xde\xad\xbe\xef" * (PAGE // 4))
    readable = readable_ids(path, len(ids))
    q = Queue(str(spool))
    survived = {r.record_id for r in q.all(10_000)}
    q.close()
    assert readable <= survived
    assert ids[0] in survived and ids[-1] in survived  # on both sides of the damage


def test_new_rows_after_a_salvage_come_after_the_old_ones(tmp_path):
    spool = tmp_path / "spool"
    ids = filled_queue(spool, 100)
    path = spool / "queue" / QUEUE_DB
    os.truncate(path, os.path.getsize(path) * 3 // 4)
    q = Queue(str(spool))
    q.stage(rows(1, start=1000))
    seqs = [(r.seq, r.record_id) for r in q.all(10_000)]
    q.close()
    assert seqs[-1][1] == f"{1000:032x}" and seqs[-1][0] > 100
    kept = [i for _, i in seqs[:-1] if i in set(ids)]
    assert kept == [i for i in ids if i in set(kept)]


def test_the_other_daemon_follows_the_recovered_file(tmp_path, caplog):
    """Two handles on one queue, as telemprobd and telempostd: the one that meets the damage
    recovers, the other opens the new file instead of recovering again."""
    spool = tmp_path / "spool"
    ids = filled_queue(spool, 50)
    writer = Queue(str(spool))
    reader = Queue(str(spool))
    path = spool / "queue" / QUEUE_DB
    with open(path, "r+b") as f:
        f.seek(PAGE * 2)
        f.write(b"\0" * PAGE * 3)
    survived = {r.record_id for r in reader.all(10_000)}  # meets the damage, recovers
    writer.follow()
    writer.stage(rows(1, start=500))
    after = {r.record_id for r in reader.all(10_000)}
    writer.close()
    reader.close()
    assert after == survived | {f"{500:032x}"}
    assert len(aside_files(spool)) == 1
    assert "was replaced" in caplog.text
    assert survived <= set(ids)


def test_garbage_is_moved_aside_untouched(tmp_path):
    spool = tmp_path / "spool"
    (spool / "queue").mkdir(parents=True)
    garbage = b"this is not an SQLite database\n" * 200
    (spool / "queue" / QUEUE_DB).write_bytes(garbage)
    q = Queue(str(spool))
    q.stage(rows(2))
    assert len(q.all()) == 2
    q.close()
    [aside] = aside_files(spool)
    assert Path(aside).read_bytes() == garbage


def test_a_read_only_reader_never_recovers(tmp_path):
    spool = tmp_path / "spool"
    (spool / "queue").mkdir(parents=True)
    (spool / "queue" / QUEUE_DB).write_bytes(b"garbage" * 1000)
    with pytest.raises(QueueError) as info:
        Queue(str(spool), readonly=True)
    assert info.value.fault is Fault.CORRUPT
    assert aside_files(spool) == []


def test_errors_are_classified_by_their_sqlite_code(tmp_path):
    spool = tmp_path / "spool"
    filled_queue(spool, 1)
    q = Queue(str(spool), busy_timeout_ms=0)
    holder = sqlite3.connect(spool / "queue" / QUEUE_DB, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(QueueError) as info:
            q.stage(rows(1, start=10))
        assert info.value.fault is Fault.BUSY and str(spool) in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        q.close()
    notadb = sqlite3.connect(tmp_path / "x.db")
    (tmp_path / "x.db").write_bytes(b"x" * 4096)
    with pytest.raises(sqlite3.DatabaseError) as raw:
        notadb.execute("SELECT * FROM sqlite_master").fetchall()
    assert fault_of(raw.value) is Fault.CORRUPT
    assert fault_of(sqlite3.ProgrammingError("no code")) is Fault.OTHER


def test_an_unusable_spool_directory_is_a_queue_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QueueError, match="Not a directory") as info:
        Queue(str(blocker / "spool"))
    assert info.value.fault is Fault.DENIED and isinstance(info.value, StoreError)


def test_a_damaged_journal_keeps_its_readable_entries(tmp_path, caplog):
    jd = tmp_path / "journal"
    j = J.Journal(str(jd), boot_id="b")
    entries = [J.JournalEntry(f"{i:032x}", float(i), "a/b/c", "e" * 32, "b", J.Outcome.DELIVERED, 201, "x" * 300)
               for i in range(200)]
    j.add(entries)
    j.close()
    db = sqlite3.connect(jd / J.JOURNAL_DB)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path = jd / J.JOURNAL_DB
    os.truncate(path, os.path.getsize(path) // 2)
    j = J.Journal(str(jd), boot_id="b")
    j.add([J.JournalEntry("f" * 32, time.time(), "a/b/c", "e" * 32, "b", J.Outcome.EXPIRED)])
    kept = j.query()
    j.close()
    assert 1 < len(kept) < 201 and kept[-1].record_id == "f" * 32
    assert kept[0].record_id == entries[0].record_id
    assert "journal" in caplog.text and "moved aside" in caplog.text


def test_a_damaged_attempt_count_can_still_be_counted_up(tmp_path):
    spool = tmp_path / "spool"
    [rid] = filled_queue(spool, 1)
    db = sqlite3.connect(spool / "queue" / QUEUE_DB)
    db.execute("UPDATE records SET attempts = ?", (2**63 - 1,))
    db.commit()
    db.close()
    q = Queue(str(spool))
    [row] = q.all()
    q.reschedule(rid, row.attempts + 1, 0.0, "HTTP 503")
    assert q.all()[0].attempts == row.attempts  # stored one more, read back at the limit again
    q.close()


def test_a_salvage_ends_when_the_damaged_file_claims_keys_far_beyond_its_rows(tmp_path):
    """The highest key a damaged file names can itself be damaged: the search for rows past
    the damage gives up a bounded distance after the last row found."""
    spool = tmp_path / "spool"
    ids = filled_queue(spool, 200)
    path = spool / "queue" / QUEUE_DB
    db = sqlite3.connect(path)
    db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'records'", (2**62,))
    db.commit()
    db.close()
    pages = os.path.getsize(path) // PAGE
    with open(path, "r+b") as f:
        f.seek((pages - 1) * PAGE)
        f.write(b"\xde\xad\xbe\xef" * (PAGE // 4))
    readable = readable_ids(path, len(ids))
    q = Queue(str(spool))
    survived = {r.record_id for r in q.all(10_000)}
    q.close()
    assert readable <= survived


V1_RECORDS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL UNIQUE, received_at REAL NOT NULL,
    sender_uid INTEGER NOT NULL, sender_gid INTEGER NOT NULL, sender_pid INTEGER NOT NULL, cfg_path TEXT,
    headers BLOB NOT NULL, payload BLOB NOT NULL, size INTEGER NOT NULL, deferred_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE counters (daemon TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (daemon, name));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO records (record_id, received_at, sender_uid, sender_gid, sender_pid, headers, payload, size)
    VALUES ('0123456789abcdef0123456789abcdef', 1700000000.0, 1, 1, 1, X'68', X'70', 2);
"""


def v1_queue(spool: Path) -> None:
    """A queue as the first schema made it, holding one record."""
    (spool / QUEUE_SUBDIR).mkdir()
    db = sqlite3.connect(spool / QUEUE_SUBDIR / QUEUE_DB)
    db.executescript(V1_RECORDS)
    db.close()


def test_a_queue_of_schema_1_is_brought_up_to_date_and_keeps_its_rows(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    v1_queue(tmp_path)
    q = Queue(str(tmp_path))
    (old,) = q.all()
    assert old.record_id == "0123456789abcdef0123456789abcdef" and old.request_headers is None
    q.insert_many([NewRecord("f" * 32, 1.0, Sender(1, 1, 1), b"h", b"p", request_headers=b"A: b")])
    assert [r.request_headers for r in q.all()] == [None, b"A: b"]
    assert q.get_meta("schema_version") == "2"
    q.close()
    assert "brought up to schema version 2" in caplog.text
    Queue(str(tmp_path)).close()  # and opened again: nothing left to do


def test_a_queue_made_before_the_view_index_gets_it_and_keeps_its_schema_version(tmp_path, caplog):
    """Older programs keep opening the file: an index needs no new schema version."""
    caplog.set_level(logging.INFO)
    v1_queue(tmp_path)
    Queue(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / QUEUE_SUBDIR / QUEUE_DB)
    assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'records_view'").fetchone() == (1,)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    assert db.execute("SELECT record_id FROM records").fetchall() == [("0123456789abcdef0123456789abcdef",)]
    db.close()
    assert "index records_view made" in caplog.text


def test_what_telempostd_and_telemctl_ask_of_the_whole_queue_reads_the_index_not_every_row(tmp_path):
    """Each pass of telempostd asks how many rows, the next due, the oldest and the
    expired; a status asks for the breakdown.  Read from the table, each of these read
    every queued record's page: the query plans say they do not."""
    q = Queue(str(tmp_path))
    q.insert_many(rows(50))
    statements: list[str] = []
    q._db.db.set_trace_callback(statements.append)
    assert q.overview() == (50, 0.0, 1_700_000_000.0)
    assert q.stats()[0] == 50
    assert q.received_before(1_700_000_010.0, 64)[0].received_at == 1_700_000_000.0
    q.breakdown(1_700_000_100.0)
    q._db.db.set_trace_callback(None)
    plain = sqlite3.connect(tmp_path / QUEUE_SUBDIR / QUEUE_DB)
    asked = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    assert len(asked) == 4
    for sql in asked:
        plan = " ".join(row[3] for row in plain.execute("EXPLAIN QUERY PLAN " + sql))
        assert "INDEX records_view" in plan, (sql, plan)
    plain.close()
    q.close()


def test_a_damaged_queue_of_schema_1_is_salvaged_into_the_new_schema(tmp_path):
    db = sqlite3.connect(tmp_path / QUEUE_DB)
    db.executescript(V1_RECORDS)
    db.close()
    from telemetry.daemons.store.database import salvage
    from telemetry.daemons.store.queue import LAYOUT

    source = sqlite3.connect(tmp_path / QUEUE_DB)
    target = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    target.executescript(LAYOUT.schema)
    assert salvage(source, target, LAYOUT.tables) == 2  # the row and the schema version
    assert target.execute("SELECT record_id, request_headers FROM records").fetchall() == [
        ("0123456789abcdef0123456789abcdef", None)]


# --- the queue's place: <spool_dir>/queue, moved there from spool_dir ----------------------------

def to_legacy_layout(spool: Path) -> None:
    for p in (spool / "queue").iterdir():
        p.rename(spool / p.name)
    (spool / "queue").rmdir()


def test_a_queue_in_the_spool_directory_is_moved_in_with_its_rows_and_state(tmp_path):
    spool = tmp_path / "spool"
    ids = filled_queue(spool, 5)
    q = Queue(str(spool))
    q.stage([], {("telemprobd", "received"): 5}, {"telemprobd.ratelimit": "{}"})
    q.touch_wakeup()
    q.close()
    to_legacy_layout(spool)
    (spool / (QUEUE_DB + ".corrupt-20260101T000000-1")).write_bytes(b"kept")
    reader = Queue(str(spool), readonly=True)
    assert reader.stats()[0] == 5  # read in the old place meanwhile
    reader.close()
    q = Queue(str(spool))
    try:
        assert [r.record_id for r in q.all()] == ids
        assert q.counters()[("telemprobd", "received")] == 5 and q.get_meta("telemprobd.ratelimit") == "{}"
    finally:
        q.close()
    assert sorted(os.listdir(spool)) == ["queue"]
    assert (spool / "queue" / (QUEUE_DB + ".corrupt-20260101T000000-1")).read_bytes() == b"kept"


def test_a_queue_in_both_places_is_merged_once(tmp_path):
    spool = tmp_path / "spool"
    filled_queue(spool, 4)
    to_legacy_layout(spool)
    q = Queue(str(tmp_path / "other"))
    q.insert_many(rows(3, start=2))  # two of them are in the old queue too
    q.close()
    shutil.copytree(tmp_path / "other" / "queue", spool / "queue")
    for _ in range(2):
        q = Queue(str(spool))
        try:
            assert sorted(r.record_id for r in q.all()) == [f"{i:032x}" for i in range(5)]
        finally:
            q.close()
    assert sorted(os.listdir(spool)) == ["queue"]


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_background_checkpoints_copy_the_wal_and_give_its_space_back_when_writes_pause(tmp_path):
    """telemprobd's commits never copy the WAL themselves below the backstop; a thread
    does, and once commits pause the WAL is truncated with every row in queue.db."""
    import threading

    from telemetry.daemons.store.database import BACKSTOP_PAGES

    q = Queue(str(tmp_path), sync_commits=False, background_checkpoints=True)
    wal = tmp_path / "queue" / (QUEUE_DB + "-wal")
    db = sqlite3.connect(tmp_path / "queue" / QUEUE_DB)
    assert q._db.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
    for i in range(40):
        q.insert_many(rows(25, start=i * 25))
    assert _wait_for(lambda: wal.exists() and wal.stat().st_size == 0), "the WAL was not truncated"
    assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1000
    assert q._db.checkpointer is not None and q._db.checkpointer.rounds >= 2
    # More writes after the pause wake the thread again.
    q.insert_many(rows(25, start=5000))
    assert _wait_for(lambda: wal.stat().st_size == 0)
    q.close()
    assert not [t for t in threading.enumerate() if t.name == "checkpoint"], "the thread outlived close()"
    assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1025
    db.close()


def test_queues_without_background_checkpoints_start_no_thread(tmp_path):
    import threading

    q = Queue(str(tmp_path))
    q.insert_many(rows(5))
    assert q._db.checkpointer is None
    assert not [t for t in threading.enumerate() if t.name == "checkpoint"]
    q.close()


def test_background_checkpoints_start_a_long_wal_over(tmp_path, monkeypatch):
    """A WAL of RESTART_FRAMES frames or more is checkpointed holding writers back for the
    little that came during the copy, so that it starts over (under writes that never
    pause, a checkpoint that lets them go on never completes: bench/probd_ingest.py)."""
    from telemetry.daemons.store import database

    q = Queue(str(tmp_path), sync_commits=False, background_checkpoints=True)
    q.insert_many(rows(40))  # about 15 WAL frames
    assert _wait_for(lambda: q._db.checkpointer.rounds >= 2)
    assert q._db.checkpointer.restarts == 0  # short: no writer held back
    monkeypatch.setattr(database, "RESTART_FRAMES", 32)
    q.insert_many(rows(200, start=100))  # about 60
    assert _wait_for(lambda: q._db.checkpointer.restarts >= 1)
    q.close()


def test_before_holding_writers_back_the_checkpoint_thread_catches_up_with_them(tmp_path, monkeypatch):
    """While a writer goes on, what came during the long copy is copied again without
    holding it back; the RESTART that does hold it back is left only the last little."""
    from telemetry.daemons.store import database

    monkeypatch.setattr(database, "RESTART_FRAMES", 32)
    monkeypatch.setattr(database, "RESTART_TAIL", -1)  # every copy is "long": catch up every round
    q = Queue(str(tmp_path), sync_commits=False, background_checkpoints=True)
    written: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        start = 0
        while not stop.is_set():
            batch = rows(20, start=start)
            q.insert_many(batch)
            written.extend(r.record_id for r in batch)
            start += 20

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert _wait_for(lambda: q._db.checkpointer.restarts >= 1 and q._db.checkpointer.catch_ups >= 1)
    finally:
        stop.set()
        t.join()
    assert [r.record_id for r in q.all(len(written) + 1)] == written
    q.close()


def test_background_checkpoints_follow_every_write_not_only_telemprobds_inserts(tmp_path):
    """telempostd's settles (deletes in a write transaction) are commits too: with its
    writer's own checkpoint moved to the backstop, the thread must copy and truncate them."""
    writer = Queue(str(tmp_path))
    batch = rows(200)
    writer.insert_many(batch)
    writer.close()
    q = Queue(str(tmp_path), sync_commits=False, background_checkpoints=True)
    wal = tmp_path / "queue" / (QUEUE_DB + "-wal")
    q.delete([r.record_id for r in batch])
    assert _wait_for(lambda: q._db.checkpointer.rounds >= 2 and wal.stat().st_size == 0), \
        "a settle was never checkpointed"
    q.close()
