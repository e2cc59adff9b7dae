"""The journal database: entries, filters, bounds, retention, readers."""

from __future__ import annotations

import os
import sqlite3

import pytest

from telemetry.bootid import BOOT_ID_PATH, read_boot_id
from telemetry.daemons.store import journal as J
from telemetry.daemons.store.journal import Journal, JournalEntry, Outcome, SetAside, entry_for
from telemetry.metadata import Metadata
from telemetry.record import create_record

BOOT = "60c014cd-4693-40f1-b334-548cd932949b"
MD = Metadata("x86_64", "h", "1", "6.1.0", "debian", "b", "c", "v")


def entry(i: int, classification: str = "org.clearlinux/hello/world", boot: str = BOOT,
          outcome: Outcome = Outcome.DELIVERED) -> JournalEntry:
    return JournalEntry(f"{i:032x}", 1_522_691_281.0 + i, classification, f"{i + 1000:032x}", boot, outcome,
                        201, "HTTP 201", 1_522_691_000 + i)


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path / "journal"), boot_id=BOOT)
    yield j
    j.close()


def test_entries_read_back_oldest_first(journal):
    journal.add([entry(i) for i in range(5)])
    got = journal.query()
    assert got == [entry(i) for i in range(5)]


def test_filters_are_anded_and_classification_takes_a_prefix(journal):
    journal.add([
        entry(1, "org.clearlinux/hello/world"),
        entry(2, "org.clearlinux/crash/clr"),
        entry(3, "org.example/hello/world", boot="other-boot"),
    ])
    assert [e.record_id for e in journal.query(classification="org.clearlinux/*")] == [entry(1).record_id,
                                                                                       entry(2).record_id]
    assert [e.record_id for e in journal.query(classification="org.clearlinux/hello/world")] == [entry(1).record_id]
    assert journal.query(classification="org.clearlinux/hello") == []
    assert [e.record_id for e in journal.query(boot_id="other-boot")] == [entry(3).record_id]
    assert [e.record_id for e in journal.query(event_id=entry(2).event_id)] == [entry(2).record_id]
    assert [e.record_id for e in journal.query(record_id=entry(3).record_id, boot_id=BOOT)] == []
    assert journal.query(classification="org.clearlinux/*", outcome=Outcome.EXPIRED) == []


def test_percent_and_underscore_are_not_wildcards(journal):
    journal.add([entry(1, "org.clear_linux/a/b"), entry(2, "org.clearXlinux/a/b")])
    assert [e.record_id for e in journal.query(classification="org.clear_linux/*")] == [entry(1).record_id]
    assert journal.query(classification="org.clear%/*") == []


def test_window_is_the_last_n_entries_and_limit_the_last_n_matches(journal):
    journal.add([entry(i, "a/b/c" if i % 2 else "x/y/z") for i in range(300)])
    window = journal.query(window=J.READER_WINDOW)
    assert [e.record_id for e in window] == [entry(i).record_id for i in range(200, 300)]
    assert len(journal.query(window=100, classification="a/b/c")) == 50
    assert [e.record_id for e in journal.query(limit=2, classification="a/b/c")] == [entry(297).record_id,
                                                                                   entry(299).record_id]


def test_one_entry_per_record_the_latest_wins(journal):
    journal.add([entry(1)])
    journal.add([entry(2)])
    journal.add([JournalEntry(entry(1).record_id, 5.0, "a/b/c", "e" * 32, BOOT, Outcome.EXPIRED)])
    got = journal.query()
    assert [e.record_id for e in got] == [entry(2).record_id, entry(1).record_id]
    assert got[-1].outcome is Outcome.EXPIRED


def test_entries_are_bounded(journal, monkeypatch):
    monkeypatch.setattr(J, "ENTRIES_MAX", 50)
    for start in range(0, 200, 20):
        journal.add([entry(i) for i in range(start, start + 20)])
    assert journal.count() <= 50
    assert journal.query(limit=1)[0].record_id == entry(199).record_id


def test_the_oldest_entries_go_a_batch_at_a_time(journal, monkeypatch):
    monkeypatch.setattr(J, "ENTRIES_MAX", 50)
    monkeypatch.setattr(J, "PRUNE_BATCH", 10)
    counts = []
    for i in range(120):
        journal.add([entry(i)])
        counts.append(journal.count())
    assert max(counts) == 50 and min(counts[60:]) == 40  # never more than the bound, the last 40 always
    assert [e.record_id for e in journal.query(limit=40)] == [entry(i).record_id for i in range(80, 120)]


def test_retention_keeps_the_last_100(journal):
    for i in range(130):
        journal.add([entry(i)], retained=[(entry(i).record_id, f"payload {i}".encode())])
    assert journal.retained_payload(entry(29).record_id) is None
    assert journal.retained_payload(entry(30).record_id) == b"payload 30"
    assert journal.retained_payload(entry(129).record_id) == b"payload 129"
    db = sqlite3.connect(journal.path)
    assert db.execute("SELECT COUNT(*) FROM retained").fetchone()[0] == 100
    db.close()


def test_set_aside_rows_are_kept_for_examination(journal):
    journal.add([entry(1, outcome=Outcome.SET_ASIDE)], set_aside=[SetAside(entry(1).record_id, 1.0, "bad",
                                                                           b"garbage\n", b"\xff")])
    [row] = journal.set_aside_rows()
    assert row.headers == b"garbage\n" and row.payload == b"\xff" and row.reason == "bad"


def test_dropped_is_for_telemprobds_refusals(journal):
    r = create_record("org.example/x/y", 1, "p", metadata=MD, now=1000, event_id="a" * 32)
    journal.dropped("f" * 32, r, "spool full (spool_max_size 5120 KiB)", now=2000.0)
    [e] = journal.query(outcome=Outcome.DROPPED)
    assert (e.record_id, e.classification, e.event_id, e.creation_timestamp, e.timestamp) == (
        "f" * 32, "org.example/x/y", "a" * 32, 1000, 2000.0)
    assert e.boot_id == BOOT and "spool full" in e.detail


def test_entry_for_a_row_without_a_record():
    e = entry_for("r" * 32, None, Outcome.SET_ASIDE, timestamp=1.0, boot_id=BOOT, detail="x" * 900,
                  classification="a/b/c", event_id="")
    assert e.classification == "a/b/c" and e.creation_timestamp is None and len(e.detail) == J.DETAIL_MAX


def test_module_readers(tmp_path):
    jd = str(tmp_path / "j")
    assert J.query(jd) == [] and J.retained_payload(jd, "x") is None  # nothing written yet
    with_j = Journal(jd, boot_id=BOOT)
    with_j.add([entry(1)], retained=[(entry(1).record_id, b"p")])
    with_j.close()
    assert J.query(jd, record_id=entry(1).record_id)[0].http_status == 201
    assert J.retained_payload(jd, entry(1).record_id) == b"p"


def test_reader_while_a_writer_holds_a_transaction(tmp_path):
    jd = str(tmp_path / "j")
    w = Journal(jd, boot_id=BOOT)
    w.add([entry(1)])
    other = sqlite3.connect(w.path, isolation_level=None)  # a second writer, mid-transaction
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO entries (record_id, timestamp, classification, event_id, boot_id, outcome)"
                  " VALUES ('z', 1, 'a/b/c', 'e', 'b', 'delivered')")
    assert [e.record_id for e in J.query(jd)] == [entry(1).record_id]  # WAL: not blocked
    other.execute("COMMIT")
    other.close()
    w.close()


def test_damaged_file_is_moved_aside(tmp_path, caplog):
    jd = tmp_path / "j"
    jd.mkdir()
    (jd / J.JOURNAL_DB).write_bytes(b"\x00not sqlite" * 500)
    j = Journal(str(jd), boot_id=BOOT)
    j.add([entry(1)])
    j.close()
    assert any(n.startswith(J.JOURNAL_DB + ".corrupt-") for n in os.listdir(jd))
    assert "moved aside" in caplog.text
    assert len(J.query(str(jd))) == 1


def test_boot_id_is_the_first_36_characters(tmp_path):
    p = tmp_path / "boot_id"
    p.write_text("60c014cd-4693-40f1-b334-548cd932949b\n")
    assert read_boot_id(str(p)) == BOOT
    assert read_boot_id(str(tmp_path / "missing")) == ""
    if os.path.exists(BOOT_ID_PATH):
        assert len(read_boot_id()) == 36


def test_wal_mode(journal):
    assert sqlite3.connect(journal.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db = sqlite3.connect(journal.path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(J.SCHEMA_VERSION)
    db.close()


def test_boot_id_as_journald_writes_it(tmp_path):
    p = tmp_path / "boot_id"
    p.write_text("60c014cd-4693-40f1-b334-548cd932949b\n")
    assert read_boot_id(str(p), dashes=False) == "60c014cd469340f1b334548cd932949b"


def test_a_journal_of_schema_1_loses_its_event_id_index_and_keeps_its_entries(tmp_path):
    """Version 2 dropped the index on event_id (a random key: a page write per entry);
    an older file is brought up to date in place and still answers by event id."""
    j = Journal(str(tmp_path / "journal"), boot_id=BOOT)
    j.add([entry(i) for i in range(3)])
    path = j.path
    j.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE INDEX entries_event ON entries (event_id)")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    j = Journal(str(tmp_path / "journal"), boot_id=BOOT)
    assert j.query(event_id=f"{1001:032x}") == [entry(1)]
    j.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'entries_event'").fetchall() == []
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(J.SCHEMA_VERSION)
    db.close()
