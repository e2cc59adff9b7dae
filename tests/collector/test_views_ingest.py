"""The ingest hook on real databases (SQLite files, and PostgreSQL when a server can be
started): a parser's failure or a failed counter write never loses a record, a list edit
reaches every writer, the upgrade of an existing database fills the counters and
`telemetry-collector regroup` groups its crash records, purging removes what the views
knew of purged records, and the collector serves with the parsers off."""

from __future__ import annotations

import collections

import pytest
from collector_support import NOW, VALID, post_headers, record_fields, temporary_postgres
from views_dataset import PROGRAMS, crash_payload, oops_reports, record, store_records

from telemetry import headers as H
from telemetry_collector.dburl import parse_database_url
from telemetry_collector.derive import crashes, tables
from telemetry_collector.derive.counts import RECORD_SOURCE
from telemetry_collector.derive.guilty import NeverGuilty
from telemetry_collector.derive.hook import (
    DERIVE_ERRORS,
    PARSER_ERRORS_PREFIX,
    IngestHook,
)
from telemetry_collector.derive.parsers import Fact, load_entry_points
from telemetry_collector.derive.stacks import Domain, Stack
from telemetry_collector.launch import start_collector
from telemetry_collector.purge import PurgePolicy, parse_filter
from telemetry_collector.schema import MIGRATIONS, VERSION_TABLE
from telemetry_collector.store import open_store
from telemetry_collector.views import reads
from telemetry_collector.views.periods import Period

DAY = 86400
VIM = crash_payload("/usr/bin/vim", PROGRAMS["/usr/bin/vim"][0])
JOURNALD = crash_payload("/usr/lib/systemd/systemd-journald", PROGRAMS["/usr/lib/systemd/systemd-journald"][0])
ALL_TIME = Period(0, 10**6)


@pytest.fixture(scope="module")
def postgres_server():
    with temporary_postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, user_install):
    if request.param == "sqlite":
        return f"sqlite:///{user_install.root}/records.db"
    return request.getfixturevalue("postgres_server").create_database()


def crash(i: int, payload: str = VIM, *, day: int = 0, machine: str = "m1", build: str = "41000"):
    return record("org.clearlinux/crash/clr", payload, received=NOW + day * DAY + i, machine=machine, build=build,
                  severity=3)


def stored_in(url: str, records, hook: IngestHook) -> collections.Counter:
    store = open_store(parse_database_url(url))
    try:
        with store.transaction():
            stored = [store.insert(r).record for r in records]
            counters = hook.after_insert(store, stored)
        return counters
    finally:
        store.close()


def with_store(url: str, fn):
    store = open_store(parse_database_url(url))
    try:
        return fn(store)
    finally:
        store.close()


class Exploding:
    name = "exploding"
    classifications = ("org.clearlinux/crash/*",)

    def parse(self, record):
        yield Fact("seen", "1")
        raise RuntimeError("bug in a third party's parser")


class Malformed:
    name = "malformed"
    classifications = ("org.clearlinux/crash/*",)

    def parse(self, record):
        yield Stack("crash", "/bin/p", ())  # type: ignore[arg-type]  # a domain as text


class Counting:
    name = "counting"
    classifications = ("org.clearlinux/crash/clr",)

    def parse(self, record):
        yield Fact("program", crashes.crashing_thread(record.payload)[0])


def test_a_failing_parser_loses_only_its_own_output(url):
    hook = IngestHook([Exploding(), Malformed(), crashes.PARSER, Counting()])
    counters = stored_in(url, [crash(0), crash(1)], hook)
    assert counters == {PARSER_ERRORS_PREFIX + "exploding": 2, PARSER_ERRORS_PREFIX + "malformed": 2}
    summary = with_store(url, lambda s: reads.crash_groups(s, Domain.CRASH, ALL_TIME, 10))
    assert [(g.function, g.records) for g in summary.groups] == [("vim_free", 2)]
    assert with_store(url, lambda s: reads.tallies(s, "counting", "program", ALL_TIME))[0].records == 2
    assert with_store(url, lambda s: reads.tallies(s, "exploding", "seen", ALL_TIME)) == []


def test_a_failed_counter_write_keeps_the_records(url):
    with_store(url, lambda s: s.run("DROP TABLE machine_spans"))
    hook = IngestHook([crashes.PARSER])
    assert stored_in(url, [crash(0)], hook) == {DERIVE_ERRORS: 1}
    assert with_store(url, lambda s: s.count_records()) == 1  # committed, on PostgreSQL too (a savepoint)
    assert with_store(url, lambda s: s.rows("SELECT count(*) FROM tallies"))[0][0] == 0  # undone together


def test_an_edit_of_the_list_reaches_every_writer(url):
    one, two = IngestHook([crashes.PARSER]), IngestHook([crashes.PARSER])  # two workers
    stored_in(url, [crash(0)], one)
    stored_in(url, [crash(1, JOURNALD)], two)
    edited = NeverGuilty.parse("abort\nraise\n")
    changed = with_store(url, lambda s: tables.replace_never_guilty(s, Domain.CRASH, edited))
    assert changed == 2  # both stored stacks regrouped at once
    stored_in(url, [crash(2, crash_payload("/usr/sbin/sshd", PROGRAMS["/usr/sbin/sshd"][0]))], one)  # a new stack
    summary = with_store(url, lambda s: reads.crash_groups(s, Domain.CRASH, ALL_TIME, 10))
    assert {g.function: g.records for g in summary.groups} == {
        "__libc_message": 1, "__assert_fail_base": 1, "__fortify_fail": 1}
    assert with_store(url, lambda s: reads.never_guilty_list(s, Domain.CRASH)) == (edited, False)
    with_store(url, lambda s: tables.replace_never_guilty(s, Domain.CRASH, NeverGuilty()))  # an empty list
    assert with_store(url, lambda s: reads.never_guilty_list(s, Domain.CRASH)) == (NeverGuilty(), False)
    with_store(url, lambda s: tables.replace_never_guilty(s, Domain.CRASH, None))
    assert with_store(url, lambda s: reads.never_guilty_list(s, Domain.CRASH))[1] is True
    summary = with_store(url, lambda s: reads.crash_groups(s, Domain.CRASH, ALL_TIME, 10))
    assert {g.function for g in summary.groups} == {"vim_free", "journal_file_append_entry", "buffer_get_string_ptr"}


def test_upgrade_fills_the_counters_and_regroup_groups_the_crashes(url, user_install):
    """A database of the previous schema, with records: the migration counts them, and
    `telemetry-collector regroup` groups the crash and kernel records."""
    old = open_store(parse_database_url(url), migrate=False)
    warning = next(p for c, _, p in oops_reports() if "preempt_notifier_register" in p)
    records = [crash(0, day=0, machine="a"), crash(1, day=2, machine="a"), crash(2, JOURNALD, day=1, machine="b"),
               record("org.clearlinux/kernel/warning", warning, received=NOW + 5, machine="c", build="9"),
               record("org.clearlinux/hello/world", "hi", received=NOW + DAY, machine="c", build="9")]
    try:
        with old.transaction():
            old.run(VERSION_TABLE)
            for m in MIGRATIONS[:2]:
                for statement in m.sql(old.backend):
                    old.run(statement)
                old.run("INSERT INTO schema_version (version) VALUES (?)", (m.version,))
            for r in records:
                old.insert(r)
    finally:
        old.close()
    first = NOW // DAY
    period = Period(first, first + 2)
    assert with_store(url, lambda s: {c.value: c.records for c in reads.builds(s, period)}) == {"9": 2, "41000": 3}
    assert with_store(url, lambda s: {p.build: p.machines for p in reads.population(s, period)}) == {"9": 1, "41000": 2}
    # machine a on 41000 was not seen on the middle day: the migration found that gap too
    middle = Period(first + 1, first + 1)
    assert with_store(url, lambda s: {p.build: p.machines for p in reads.population(s, middle)}) == {"9": 1, "41000": 1}
    assert with_store(url, lambda s: reads.crash_groups(s, Domain.CRASH, period, 10)).groups == []
    done = user_install.run("telemetry_collector.main", "regroup", "--database", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "grouped 4 records"
    summary = with_store(url, lambda s: reads.crash_groups(s, Domain.CRASH, period, 10))
    assert {(g.function, g.records, g.machines) for g in summary.groups} == {
        ("vim_free", 2, 1), ("journal_file_append_entry", 1, 1)}
    kernel = with_store(url, lambda s: reads.crash_groups(s, Domain.KERNEL, period, 10))
    assert [g.function for g in kernel.groups] == ["preempt_notifier_register"]
    again = user_install.run("telemetry_collector.main", "regroup", "--database", url)
    assert again.stdout.decode().strip() == "grouped 0 records"


def test_purge_takes_what_the_views_knew_of_purged_records(url):
    old_day = NOW - 40 * DAY
    store_records(url, [crash(0, day=-40), crash(1), record("org.clearlinux/hello/world", "hi", received=old_day,
                                                             machine="x", build="1")])
    deleted = with_store(url, lambda s: s.purge(PurgePolicy(35), NOW + 10))
    assert deleted == 2
    assert with_store(url, lambda s: s.rows("SELECT count(*) FROM crash_records"))[0][0] == 1
    assert with_store(url, lambda s: s.rows("SELECT min(day) FROM tallies WHERE source = ?", (RECORD_SOURCE,)))[0][0] \
        == NOW // DAY
    assert with_store(url, lambda s: s.rows("SELECT count(*) FROM machine_spans WHERE build = '1'"))[0][0] == 0
    summary = with_store(url, lambda s: reads.crash_groups(s, Domain.CRASH, ALL_TIME, 10))
    assert [(g.function, g.records) for g in summary.groups] == [("vim_free", 1)]
    # a filter that keeps records forever keeps the counters too
    store_records(url, [record("org.clearlinux/hello/world", "hi", received=old_day, machine="y", build="2")])
    forever = PurgePolicy(35, (parse_filter("classification=org.clearlinux/hello/*:0"),))
    with_store(url, lambda s: s.purge(forever, NOW + 10))
    assert with_store(url, lambda s: s.rows("SELECT count(*) FROM tallies WHERE value = '2'"))[0][0] == 1


def test_shipped_parsers_are_entry_points():
    assert [p.name for p in load_entry_points()] == ["crash", "kernel", "mce"]


def test_stats_show_what_the_views_could_not_learn(user_install):
    from telemetry_collector.app import stats_document

    document = stats_document(3, {"stored": 3, PARSER_ERRORS_PREFIX + "mce": 2, DERIVE_ERRORS: 1})
    assert document["parser_errors"] == {"mce": 2} and document["derive_errors"] == 1


def test_serving_without_parsers_keeps_the_counters(user_install):
    database = f"sqlite:///{user_install.root}/records.db"
    with start_collector(database, env=user_install.env, args=["--no-payload-parsers"]) as c:
        fields = record_fields(**{H.CLASSIFICATION: "org.clearlinux/crash/clr", H.SEVERITY: "3"})
        assert post_headers(c.url, fields, VIM.encode()).status == 201
        assert post_headers(c.url, VALID).status == 201
    today = Period(0, 10**6)
    assert with_store(database, lambda s: sum(c.records for c in reads.builds(s, today))) == 2
    assert with_store(database, lambda s: reads.crash_groups(s, Domain.CRASH, today, 10)).groups == []


def test_several_workers_count_into_their_own_rows(user_install, postgres_server):
    """Two worker processes on one PostgreSQL database: each writer adds to its own counter
    rows, and the views add them up."""
    import concurrent.futures

    database = postgres_server.create_database()
    with start_collector(database, env=user_install.env, args=["--workers", "2", "--machine-rate", "0",
                                                               "--address-rate", "0"]) as c:
        fields = record_fields(**{H.CLASSIFICATION: "org.clearlinux/crash/clr", H.SEVERITY: "3"})

        def post(i: int) -> int:
            return post_headers(c.url, fields, crash_payload("/usr/bin/vim", PROGRAMS["/usr/bin/vim"][0],
                                                             pid=100 + i).encode()).status

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, range(60))) == {201}
    shards = with_store(database, lambda s: s.rows("SELECT count(DISTINCT shard) FROM tallies"))[0][0]
    assert shards == 2  # both workers wrote (a fresh connection each: the kernel spreads them)
    today = Period(0, 10**6)
    assert with_store(database, lambda s: sum(c.records for c in reads.builds(s, today))) == 60
    summary = with_store(database, lambda s: reads.crash_groups(s, Domain.CRASH, today, 10))
    assert [(g.function, g.records, g.machines) for g in summary.groups] == [("vim_free", 60, 1)]
