"""The record store on real databases: SQLite files, and PostgreSQL when a server can be started."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from collector_support import NOW, new_record, temporary_postgres

from telemetry_collector.dburl import Backend, DatabaseURLError, parse_database_url
from telemetry_collector.purge import PurgePolicy, parse_filter
from telemetry_collector.query import DAY, RecordQuery
from telemetry_collector.schema import SCHEMA_VERSION
from telemetry_collector.store import Durability, StoreError, open_store


@pytest.fixture(scope="module")
def postgres_server():
    with temporary_postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, user_install):
    if request.param == "sqlite":
        return parse_database_url(f"sqlite:///{user_install.root}/store/records.db")
    pg = request.getfixturevalue("postgres_server")
    return parse_database_url(pg.create_database())


@pytest.fixture
def store(db_url):
    s = open_store(db_url)
    yield s
    s.close()


def add(store, *records):
    with store.transaction():
        return [store.insert(r) for r in records]


def test_migration_applies_once(db_url):
    s = open_store(db_url)
    assert s.schema_version() == SCHEMA_VERSION
    s.close()
    s = open_store(db_url)
    assert s.migrate() == SCHEMA_VERSION and s.schema_version() == SCHEMA_VERSION
    s.close()


def test_newer_schema_is_refused(db_url):
    s = open_store(db_url)
    with s.transaction():
        s._execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    s.close()
    with pytest.raises(StoreError, match="newer than this collector"):
        open_store(db_url)


def test_insert_assigns_ids_and_round_trips_every_field(store):
    rec = new_record(7, payload="caf\u00e9 \u00ff\ud7ff \U0001f600\n", external=True, host_type="h\tx")
    [stored] = add(store, rec)
    assert not stored.duplicate and stored.record.record == rec
    [found] = store.query(RecordQuery(), NOW)
    assert found.id == stored.record.id and found.record == rec and found.duplicates == 0


def test_large_payload(store):
    rec = new_record(payload="x" * (1 << 20))
    add(store, rec)
    assert store.query(RecordQuery(), NOW)[0].record.payload == rec.payload


def test_repeated_record_id_is_stored_once_and_counted(store):
    first = new_record(1, record_id="r1", payload="first")
    [a] = add(store, first)
    [b, c] = add(store, new_record(1, record_id="r1", payload="retry"), new_record(1, record_id="r1"))
    assert (a.duplicate, b.duplicate, c.duplicate) == (False, True, True)
    assert b.record.id == a.record.id and b.record.record.payload == "first"
    assert c.record.duplicates == 2
    add(store, new_record(2, record_id=None), new_record(2, record_id=None))
    assert store.count_records() == 3


def test_insert_many_is_insert_for_each(store):
    """A batch (one multi-row INSERT on PostgreSQL) stores what `insert` one by one would: new
    rows in order, a repeat of a stored id and a repeat inside the batch counted as repeats."""
    [before] = add(store, new_record(0, record_id="old", payload="kept"))
    batch = [new_record(1, record_id="a"), new_record(2, record_id="old"), new_record(3, record_id="b"),
             new_record(4, record_id="a", payload="second a")]
    with store.transaction():
        stored = store.insert_many(batch)
    assert [s.duplicate for s in stored] == [False, True, False, True]
    assert stored[1].record.id == before.record.id and stored[1].record.record.payload == "kept"
    assert stored[3].record.id == stored[0].record.id and stored[3].record.record.payload == "payload 1\n"
    assert stored[0].record.id < stored[2].record.id
    assert store.count_records() == 3
    with store.transaction():
        unkeyed = store.insert_many([new_record(5), new_record(6)])
    assert not any(s.duplicate for s in unkeyed) and store.count_records() == 5


def test_counters(store):
    with store.transaction():
        store.add_counters({"stored": 2, "rejected.tid": 1, "zero": 0})
    with store.transaction():
        store.add_counters({"stored": 3})
    assert store.counters() == {"stored": 5, "rejected.tid": 1}


def test_counter_shards_add_up(store):
    """Each worker's writer adds to its own rows; readers see the sums."""
    with store.transaction():
        store.add_counters({"stored": 2, "rejected.tid": 1})
    with store.transaction():
        store.add_counters({"stored": 3}, shard=1)
    with store.transaction():
        store.add_counters({"stored": 4, "rejected.tid": 1}, shard=2)
    assert store.counters() == {"stored": 9, "rejected.tid": 2}


def test_failed_transaction_stores_nothing(store):
    with pytest.raises(RuntimeError), store.transaction():
        store.insert(new_record(1))
        raise RuntimeError("boom")
    assert store.count_records() == 0


def test_query_filters_limit_and_order(store):
    records = [new_record(i, severity=1 + i % 4, build=str(i % 3), classification=f"a/b/{i % 2}",
                          ts_reception=NOW - i * 3600) for i in range(20)]
    add(store, *records)
    ids = lambda q: [r.id for r in store.query(q, NOW)]  # noqa: E731
    everything = ids(RecordQuery())
    assert everything == sorted(everything, reverse=True) and len(everything) == 20
    assert {r.record.severity for r in store.query(RecordQuery(severity=2), NOW)} == {2}
    assert len(ids(RecordQuery(classification="a/b/1"))) == 10
    assert {r.record.build for r in store.query(RecordQuery(build="2"), NOW)} == {"2"}
    assert len(ids(RecordQuery(machine_id=f"{3:032x}"))) == 1
    assert ids(RecordQuery(limit=3)) == everything[:3]
    assert ids(RecordQuery(from_id=everything[4])) == everything[:5]
    assert len(ids(RecordQuery(ts_capture=1_554_000_000 + 14))) == 5
    assert len(ids(RecordQuery(window=5 * 3600))) == 5  # received within the last 5 hours: i = 0..4
    assert ids(RecordQuery(window=0)) == []
    assert ids(RecordQuery(from_id=2**63 - 1, ts_capture=2**63 - 1)) == []
    assert ids(RecordQuery(classification="a/b/%")) == []


def test_purge_like_the_reference(store):
    old = NOW - 40 * DAY
    add(store,
        new_record(1, ts_reception=old),  # unfiltered, old: deleted
        new_record(2, ts_reception=NOW - DAY),  # unfiltered, recent: kept
        new_record(3, ts_reception=old, classification="org.clearlinux/mce/x"),  # kept forever by filter
        new_record(4, ts_reception=NOW - 6 * DAY, severity=1, classification="c/d/e"),  # severity 1: 5 days
        new_record(5, ts_reception=NOW - 4 * DAY, severity=1, classification="c/d/e"),  # younger: kept
        new_record(6, ts_reception=old, classification="org_clearlinux/mce/x"),  # '_' is literal: deleted
    )
    policy = PurgePolicy(35, (parse_filter("classification=org.clearlinux/mce/*:0"), parse_filter("severity=1:5")))
    assert store.purge(policy, NOW) == 3
    left = sorted(int(r.record.machine_id, 16) for r in store.query(RecordQuery(window=10**9), NOW))
    assert left == [2, 3, 5]
    assert store.purge(PurgePolicy(0, ()), NOW) == 0


def test_relaxed_durability_opens(db_url):
    s = open_store(db_url, durability=Durability.RELAXED)
    add(s, new_record(1))
    assert s.count_records() == 1
    s.close()


def test_sqlite_file_is_private_and_in_wal_mode(user_install):
    url = parse_database_url(f"sqlite:///{user_install.root}/private/x.db")
    open_store(url).close()
    assert stat.S_IMODE(os.stat(url.target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(url.target)).st_mode) == 0o700
    conn = sqlite3.connect(url.target)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_errors_name_the_file(user_install):
    target = user_install.root / "dir.db"
    target.mkdir()
    with pytest.raises(StoreError, match="cannot open SQLite database .*dir.db"):
        open_store(parse_database_url(str(target)))
    link = user_install.root / "link.db"
    link.symlink_to(user_install.root / "elsewhere.db")
    with pytest.raises(StoreError, match="symbolic link"):
        open_store(parse_database_url(str(link)))
    junk = user_install.root / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        open_store(parse_database_url(str(junk)))


def test_unreachable_postgresql_is_a_store_error(user_install):
    url = parse_database_url(f"postgresql:///x?host={user_install.root}&port=1&user=u&password=secret")
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert "cannot connect to" in str(info.value) and "secret" not in str(info.value)


# --- database URLs (pure) -------------------------------------------------------------

def test_database_urls(user_install, monkeypatch):
    monkeypatch.chdir(user_install.root)
    assert parse_database_url("sqlite:////abs/x.db").target == "/abs/x.db"
    assert parse_database_url("sqlite:///rel/x.db").target == str(user_install.root / "rel/x.db")
    assert parse_database_url("plain.db").target == str(user_install.root / "plain.db")
    default = parse_database_url(None)
    assert default.backend is Backend.SQLITE
    assert default.target == f"{user_install.env['XDG_STATE_HOME']}/telemetrics/collector/records.db"
    pg = parse_database_url("postgres://u:pw@db.example/telemetry")
    assert pg.backend is Backend.POSTGRESQL and pg.target == "postgresql://u:pw@db.example/telemetry"
    assert pg.redacted() == "postgresql://u:***@db.example/telemetry"
    assert parse_database_url("postgresql://u@h/d").redacted() == "postgresql://u@h/d"


@pytest.mark.parametrize("value", ["sqlite://x.db", "sqlite:///", "sqlite:///:memory:", "mysql://h/d", "sqlite:x"])
def test_bad_database_urls(value):
    with pytest.raises(DatabaseURLError):
        parse_database_url(value)


def test_sqlite_query_does_not_wait_for_the_writer(user_install, monkeypatch):
    """A GET reads the committed rows while the writer holds its transaction open, and never
    takes the write lock itself (WAL: readers and the one writer do not block each other)."""
    import telemetry_collector.store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.2)
    url = parse_database_url(f"sqlite:///{user_install.root}/concurrent.db")
    writer, reader = open_store(url), open_store(url, migrate=False)
    try:
        add(writer, new_record(1))
        with writer.transaction():
            writer.insert(new_record(2))
            assert [r.record.machine_id for r in reader.query(RecordQuery(), NOW)] == [f"{1:032x}"]
            assert reader.count_records() == 1
        add(writer, new_record(3))  # nor does the reader hold a lock after its query
        assert reader.count_records() == 3
    finally:
        writer.close()
        reader.close()
