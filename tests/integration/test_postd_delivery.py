"""telempostd's delivery pass: the daemon's `Postd` object driven in this process, so that
time can be moved (backoff, expiry), on a real queue and journal.

Where HTTP itself is tested (headers on the wire, connections, proxies, timeouts, the
collector refusing a TID) the requests go through pycurl to the real collector on
127.0.0.1 (http_collector.py); where only the answers matter they go to a collector in
memory (`fake`, through telempostd's MemoryTransport).
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from dataclasses import replace

import pytest
from http_collector import ACCEPT, HANG, TID, Collector, status
from postd_support import (
    CLOSED,
    Clock,
    FakeCollector,
    answer,
    counters,
    enqueue,
    load_config,
    new_row,
    queued_ids,
    record,
    settings_text,
)
from support import free_port

from telemetry.daemons.postd.main import RECORD_WARNINGS_PER_PASS, Counter, Postd
from telemetry.daemons.store import delivery as state_mod
from telemetry.daemons.store import journal as journal_mod
from telemetry.daemons.store.delivery import Pause
from telemetry.daemons.store.journal import Outcome
from telemetry.daemons.store.queue import Queue

BOOT_ID = "11111111-2222-3333-4444-555555555555"


MEMORY_URL = "http://collector.invalid/v2/collector"  # never resolved: requests stay in memory


def make_postd(inst, url: str | FakeCollector, clock: Clock | None = None, **settings) -> Postd:
    fake = url if isinstance(url, FakeCollector) else None
    inst.write_config(settings_text(MEMORY_URL if fake else url, **settings))
    extra = {"transport": fake.transport} if fake else {}
    return Postd(inst.paths, load_config(inst), clock=clock or time.time, boot_id=BOOT_ID, by_systemd=False,
                 **extra)


@pytest.fixture
def fake() -> FakeCollector:
    return FakeCollector()


def entries(inst, **filters):
    return journal_mod.query(inst.paths.journal_dir, **filters)


def fill(inst, n: int, start: int = 0, **kw) -> list[str]:
    return enqueue(inst.paths.spool_dir, [new_row(record(i), **kw) for i in range(start, start + n)])


# --- 2xx ------------------------------------------------------------------------------


def test_delivers_with_collector_headers_and_journals(user_install, collector):
    ids = fill(user_install, 3)
    postd = make_postd(user_install, collector.url)
    tally = postd.run_pass()
    postd.close()
    assert tally[Counter.DELIVERED] == 3
    got = {r.record_id: r for r in collector.accepted()}
    assert sorted(got) == sorted(ids)  # several in flight: the collector may see neighbours swapped
    first = got[ids[0]]
    assert first.path == "/v2/collector"
    assert first.header("X-Telemetry-TID") == TID
    assert first.header("Content-Type") == "application/text"
    assert first.header("Host-Type") == "QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-3.1"
    assert first.header("Cpu-Model") == "Intel(R) Core(TM) i7-7600U CPU @ 2.80GHz"
    assert first.header("Machine-Id") == "6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b"
    for name in ("Record-Format-Version", "Classification", "Event-Id", "X-Telemetry-Record-Id", "Content-Type"):
        assert first.count(name) == 1, name
    assert first.header("Expect") is None
    assert first.body == b"payload 0\n"
    assert queued_ids(user_install.paths.spool_dir) == []
    journal = entries(user_install)
    assert [e.record_id for e in journal] == ids
    assert {e.outcome for e in journal} == {Outcome.DELIVERED}
    assert journal[0].http_status == 201
    assert journal[0].classification == "org.example/test/r0"
    assert journal[0].event_id == record(0).event_id
    assert journal[0].boot_id == BOOT_ID
    assert journal[0].creation_timestamp == 1_700_000_000
    assert counters(user_install.paths.spool_dir)["delivered"] == 3


def test_json_request_keeps_values_whole(user_install, collector):
    r = record(1, payload='say "hi"\n\tthere é\n')
    [rid] = enqueue(user_install.paths.spool_dir, [new_row(r)])
    postd = make_postd(user_install, collector.url, request_format="json")
    postd.run_pass()
    postd.close()
    [got] = collector.accepted()
    assert got.header("Content-Type") == "application/json"
    assert got.header("X-Telemetry-TID") == TID
    assert got.header("X-Telemetry-Record-Id") == rid
    assert got.header("Classification") is None
    doc = json.loads(got.body)
    assert list(doc)[:2] == ["record_format_version", "classification"]
    assert list(doc)[-1] == "payload"
    assert doc["cpu_model"] == "Intel(R) Core(TM) i7-7600U CPU @ 2.80GHz"
    assert doc["host_type"] == "QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-3.1"
    assert doc["payload"] == 'say "hi"\n\tthere é\n'
    assert all(isinstance(v, str) for v in doc.values())


def test_connections_are_reused(user_install, collector):
    fill(user_install, 40)
    postd = make_postd(user_install, collector.url, max_in_flight=4)
    postd.run_pass()
    postd.close()
    got = collector.accepted()
    assert len(got) == 40
    assert len({r.connection for r in got}) <= 4


def test_proxy_from_environment(user_install, collector, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{collector.port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    fill(user_install, 1)
    postd = make_postd(user_install, "http://collector.invalid/v2/collector")
    assert postd.run_pass()[Counter.DELIVERED] == 1
    postd.close()
    assert collector.accepted()[0].path == "http://collector.invalid/v2/collector"


# --- permanent rejections ---------------------------------------------------------------


def test_400_is_rejected_for_good_with_the_message(user_install, fake):
    """Once the collector took a record, a 4xx is about the record: rejected for good.
    Before that, the first refused record is kept (it may be how every record is sent)."""
    fake.plan(answer(400, message="kernel version is invalid"))
    clock = Clock(time.time())
    ids = fill(user_install, 2)
    postd = make_postd(user_install, fake, clock, max_in_flight=1)
    tally = postd.run_pass()
    assert tally[Counter.RETRIED] == 1 and tally[Counter.DELIVERED] == 1
    assert queued_ids(user_install.paths.spool_dir) == ids[:1]
    fake.plan(answer(400, message="kernel version is invalid"))
    clock.now = postd.next_wake()
    tally = postd.run_pass()
    postd.close()
    assert tally[Counter.REJECTED] == 1
    first = entries(user_install, record_id=ids[0])[0]
    assert first.outcome is Outcome.REJECTED
    assert first.http_status == 400
    assert "kernel version is invalid" in first.detail
    assert queued_ids(user_install.paths.spool_dir) == []
    assert counters(user_install.paths.spool_dir)["rejected"] == 1


def test_record_the_collector_cannot_accept_is_not_sent(user_install, fake):
    bad = new_row(record(0, arch="riscv64"))
    good = new_row(record(1))
    enqueue(user_install.paths.spool_dir, [bad, good])
    postd = make_postd(user_install, fake)
    tally = postd.run_pass()
    postd.close()
    assert tally[Counter.REJECTED_LOCAL] == 1 and tally[Counter.DELIVERED] == 1
    assert [r.record_id for r in fake.received] == [good.record_id]
    [e] = entries(user_install, record_id=bad.record_id)
    assert e.outcome is Outcome.REJECTED_LOCAL
    assert "architecture is invalid" in e.detail
    assert counters(user_install.paths.spool_dir)["rejected-local"] == 1


def test_unreadable_row_is_set_aside_and_the_rest_delivered(user_install, fake):
    r = record(0)
    broken = new_row(r, headers=b"classification: org.example/test/broken\nthis is not a record\n")
    ids = enqueue(user_install.paths.spool_dir, [broken, new_row(record(1)), new_row(record(2))])
    postd = make_postd(user_install, fake)
    tally = postd.run_pass()
    aside = postd.journal.set_aside_rows()
    postd.close()
    assert tally[Counter.SET_ASIDE] == 1 and tally[Counter.DELIVERED] == 2
    assert sorted(x.record_id for x in fake.accepted()) == sorted(ids[1:])
    [e] = entries(user_install, record_id=ids[0])
    assert e.outcome is Outcome.SET_ASIDE
    assert e.classification == "org.example/test/broken"
    assert "unreadable record" in e.detail
    assert aside[0].record_id == ids[0] and aside[0].headers.startswith(b"classification: org.example/test/broken")
    assert queued_ids(user_install.paths.spool_dir) == []
    assert counters(user_install.paths.spool_dir)["set-aside"] == 1


def test_a_queue_of_damaged_rows_does_not_flood_the_log(user_install, fake, caplog):
    broken = [new_row(record(i), headers=f"classification: org.example/test/b{i}\nnot a record\n".encode())
              for i in range(40)]
    ids = enqueue(user_install.paths.spool_dir, [*broken, new_row(record(99))])
    postd = make_postd(user_install, fake)
    tally = postd.run_pass()
    postd.close()
    assert tally[Counter.SET_ASIDE] == 40 and tally[Counter.DELIVERED] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if "holds no readable record" in w]) == RECORD_WARNINGS_PER_PASS
    assert f"{40 - RECORD_WARNINGS_PER_PASS} more records were set aside or rejected" in warnings[-1]
    assert len(entries(user_install, outcome=Outcome.SET_ASIDE)) == 40  # each one is journaled
    assert queued_ids(user_install.paths.spool_dir) == []
    assert len(ids) == 41


def test_two_rows_with_the_same_id_text_and_blob_are_both_decided(user_install, fake):
    ids = fill(user_install, 2)
    db = sqlite3.connect(f"{user_install.paths.spool_dir}/queue/queue.db", isolation_level=None)
    db.execute("UPDATE records SET record_id = CAST(? AS BLOB) WHERE record_id = ?", (ids[0], ids[1]))
    db.close()
    postd = make_postd(user_install, fake, max_in_flight=2)
    tally = postd.run_pass()
    postd.close()
    assert tally[Counter.DELIVERED] == 2
    assert queued_ids(user_install.paths.spool_dir) == []


# --- retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", [answer(500), answer(503), answer(408), CLOSED], ids=["500", "503", "408", "close"])
def test_server_trouble_keeps_records_and_backs_off(user_install, fake, behaviour):
    fake.answer(behaviour)
    clock = Clock(time.time())
    ids = fill(user_install, 3)
    postd = make_postd(user_install, fake, clock, max_in_flight=1, retry_probe_interval=0)
    tally = postd.run_pass()
    assert tally[Counter.RETRIED] == 1  # the gate closed after the first failure
    assert not postd.gate.is_open(clock())
    assert 1.0 <= postd.gate.open_at - clock() <= 120.0  # full jitter within spool_process_time
    assert queued_ids(user_install.paths.spool_dir) == ids
    q = Queue(user_install.paths.spool_dir)
    head = q.get(ids[0])
    q.close()
    assert head.attempts == 1 and head.next_attempt_at == postd.gate.open_at and head.last_error
    # Asleep: nothing is sent until the gate opens, whatever wakes the daemon.
    assert postd.run_pass()[Counter.RETRIED] == 0
    assert postd.next_wake() == postd.gate.open_at
    # Records queued meanwhile wake it for nothing: no pass (it would read the whole queue).
    ids += fill(user_install, 2, start=3)
    assert not postd.pass_due()
    clock.now = postd.gate.open_at - 0.001
    assert not postd.pass_due()
    fake.answer(answer(201))
    clock.now = postd.gate.open_at
    assert postd.pass_due()
    assert postd.run_pass()[Counter.DELIVERED] == 5
    postd.close()
    assert [r.record_id for r in fake.accepted()] == ids
    assert counters(user_install.paths.spool_dir)["retried"] == 1
    assert entries(user_install)[0].outcome is Outcome.DELIVERED


class LongWaits(random.Random):
    """Every backoff near its ceiling (119 s of spool_process_time's 120 s)."""

    def random(self) -> float:
        return 0.99


def test_delivery_resumes_when_the_collector_answers_again_not_when_the_backoff_ends(user_install):
    """The collector goes away (nothing listens on its port) and comes back on the same port:
    a probe a second finds it, and the backlog goes at once, long before the 119 s wait."""
    gone = Collector().start()
    port = gone.port
    gone.stop()
    ids = fill(user_install, 6)
    user_install.write_config(settings_text(gone.url, retry_probe_interval=1))
    postd = Postd(user_install.paths, load_config(user_install), boot_id=BOOT_ID, by_systemd=False,
                  rng=LongWaits())
    try:
        assert postd.run_pass()[Counter.RETRIED] >= 1
        assert postd.gate.open_at - time.time() > 100
        st = state_mod.read(user_install.paths.spool_dir)
        assert st.paused is Pause.BACKOFF and st.paused_until == postd.gate.open_at
        assert st.probe_at is not None and st.probe_at < st.paused_until
        assert "curl error 7" in st.last_error.detail and st.last_success is None
        with Collector(port=port) as back:
            deadline = time.monotonic() + 60  # well inside the backoff
            while queued_ids(user_install.paths.spool_dir) and time.monotonic() < deadline:
                if postd.pass_due():
                    postd.run_pass()
                time.sleep(0.1)
            assert queued_ids(user_install.paths.spool_dir) == []
            assert sorted(r.record_id for r in back.accepted()) == sorted(ids)
    finally:
        postd.close()
    st = state_mod.read(user_install.paths.spool_dir)
    assert st.paused is None and st.last_success is not None and st.last_error is not None


def test_a_restart_does_not_keep_the_old_backoff(user_install, collector):
    """The wait a failure set belongs to that process and its settings: started again with
    the server fixed, telempostd sends what was waiting at once."""
    ids = fill(user_install, 3)
    user_install.write_config(settings_text(f"http://127.0.0.1:{free_port()}/v2/collector"))
    postd = Postd(user_install.paths, load_config(user_install), boot_id=BOOT_ID, by_systemd=False,
                  rng=LongWaits())
    postd.run_pass()
    postd.close()
    q = Queue(user_install.paths.spool_dir)
    assert all(r.next_attempt_at > time.time() + 100 for r in q.all())
    q.close()
    user_install.write_config(settings_text(collector.url))
    postd = Postd(user_install.paths, load_config(user_install), boot_id=BOOT_ID, by_systemd=False)
    try:
        assert postd.run_pass()[Counter.DELIVERED] == 3
    finally:
        postd.close()
    assert sorted(r.record_id for r in collector.accepted()) == sorted(ids)


def test_json_that_the_collector_refuses_every_time_is_a_configuration_error(user_install, collector, caplog):
    """As telemetrics-backend answers request_format=json: the same 400 for every record
    (the front answers in its place; the real backend is not installed here).  Nothing is
    rejected: delivery pauses, the records stay, the log and the state say why."""
    collector.answer(status(400, message="Record-Format-Version header missing"))
    ids = fill(user_install, 10)
    postd = make_postd(user_install, collector.url, request_format="json")
    try:
        tally = postd.run_pass()
        assert tally[Counter.REJECTED] == 0 and tally[Counter.CONFIG_ERROR] >= 1
        assert queued_ids(user_install.paths.spool_dir) == ids and entries(user_install) == []
        assert caplog.text.count("every record is refused with the same answer") == 1
        st = state_mod.read(user_install.paths.spool_dir)
        assert st.paused is Pause.CONFIG_ERROR and "Record-Format-Version header missing" in st.last_error.detail
        assert len(collector.received) <= 3 + 4  # the judging requests and those in flight, no more
        # Fixed: headers, as the collector wants them.
        collector.answer(ACCEPT)
        user_install.write_config(settings_text(collector.url))
        postd.reload(load_config(user_install))
        assert postd.run_pass()[Counter.DELIVERED] == 10
    finally:
        postd.close()


def test_429_retry_after_is_honoured(user_install, fake):
    fake.plan(answer(429, retry_after="37"))
    clock = Clock(time.time())
    [rid] = fill(user_install, 1)
    postd = make_postd(user_install, fake, clock)
    postd.run_pass()
    assert postd.gate.open_at == pytest.approx(clock() + 37)
    clock.advance(36)
    assert postd.run_pass()[Counter.DELIVERED] == 0
    clock.advance(1)
    assert postd.run_pass()[Counter.DELIVERED] == 1
    postd.close()
    assert [r.answered for r in fake.received] == [429, 201]


def test_retry_after_http_date_is_capped(user_install, fake):
    far = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10 * 86400))
    fake.plan(answer(503, retry_after=far))
    clock = Clock(time.time())
    fill(user_install, 1)
    postd = make_postd(user_install, fake, clock, retry_max_delay=600)
    postd.run_pass()
    postd.close()
    assert postd.gate.open_at == pytest.approx(clock() + 600)


def test_hanging_collector_times_out_and_is_retried(user_install, collector):
    collector.answer(HANG)
    clock = Clock(time.time())
    [rid] = fill(user_install, 1)
    postd = make_postd(user_install, collector.url, clock, request_timeout=1)
    tally = postd.run_pass()
    collector.release()
    postd.close()
    assert tally[Counter.RETRIED] == 1
    q = Queue(user_install.paths.spool_dir)
    assert "curl error 28" in q.get(rid).last_error
    q.close()


@pytest.mark.parametrize("in_flight", [1, 4])
def test_collector_down_then_up_delivers_all_once_in_order(user_install, in_flight):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/collector"
    clock = Clock(time.time())
    ids = fill(user_install, 12)
    postd = make_postd(user_install, url, clock, max_in_flight=in_flight)
    for _ in range(3):  # three failed rounds: the gate's wait grows
        assert postd.run_pass()[Counter.DELIVERED] == 0
        clock.now = postd.gate.open_at
    assert postd.gate.streak == 3
    ids += fill(user_install, 3)  # queued during the outage
    with Collector(port=port) as collector:
        assert postd.run_pass()[Counter.DELIVERED] == 15
        postd.close()
        got = [r.record_id for r in collector.accepted()]
    assert sorted(got) == sorted(ids) and len(got) == 15
    journaled = [e.record_id for e in entries(user_install)]
    assert sorted(journaled) == sorted(ids)
    if in_flight == 1:  # with several in flight, answers (and so their fates) come in any order
        assert got == ids and journaled == ids
    assert queued_ids(user_install.paths.spool_dir) == []


def test_a_record_failing_alone_does_not_hold_up_the_others(user_install, fake):
    clock = Clock(time.time())
    fill(user_install, 3)
    postd = make_postd(user_install, fake, clock, max_in_flight=3)
    fake.plan(answer(500))
    tally = postd.run_pass()
    postd.close()
    assert tally[Counter.DELIVERED] == 2 and tally[Counter.RETRIED] == 1
    failed = [r.record_id for r in fake.received if r.answered == 500]
    assert queued_ids(user_install.paths.spool_dir) == failed


# --- configuration errors ---------------------------------------------------------------


def test_tid_mismatch_stops_delivery_and_keeps_records(user_install, collector, caplog):
    clock = Clock(time.time())
    ids = fill(user_install, 5)
    postd = make_postd(user_install, collector.url, clock, tidheader="X-Telemetry-TID:\\sWRONG")
    tally = postd.run_pass()
    assert tally[Counter.CONFIG_ERROR] >= 1 and tally[Counter.REJECTED] == 0
    assert queued_ids(user_install.paths.spool_dir) == ids
    assert postd.gate.open_at - clock() == pytest.approx(3600)
    assert "check 'tidheader'" in caplog.text
    assert entries(user_install) == []
    # The fix arrives with a reload: delivery resumes at once.
    user_install.write_config(settings_text(collector.url))
    postd.reload(load_config(user_install))
    assert postd.run_pass()[Counter.DELIVERED] == 5
    postd.close()
    assert counters(user_install.paths.spool_dir)["config-error"] >= 1


def test_reload_applies_the_log_level(user_install, fake):
    root = logging.getLogger()
    before = root.level
    postd = make_postd(user_install, fake)  # log_level=debug
    try:
        user_install.write_config(settings_text(MEMORY_URL).replace("log_level=debug", "log_level=error"))
        postd.reload(load_config(user_install))
        assert root.level == logging.ERROR
    finally:
        root.setLevel(before)
        postd.close()


def test_wrong_path_is_a_configuration_error_not_a_rejection(user_install, collector):
    ids = fill(user_install, 3)
    postd = make_postd(user_install, collector.url.replace("/v2/collector", "/v3/collector"))  # a 404 there
    tally = postd.run_pass()
    postd.close()
    assert tally[Counter.REJECTED] == 0 and tally[Counter.CONFIG_ERROR] >= 1
    assert queued_ids(user_install.paths.spool_dir) == ids


# --- spool: expiry, deferral, delivery disabled, retention --------------------------------


def test_expired_records_are_removed_and_journaled(user_install, fake):
    t0 = time.time()
    clock = Clock(t0)
    old = fill(user_install, 2, received_at=t0 - 20 * 60 - 5)
    fresh = fill(user_install, 1, received_at=t0)
    fake.answer(answer(503))
    postd = make_postd(user_install, fake, clock, record_expiry=20)
    tally = postd.run_pass()
    assert tally[Counter.EXPIRED] == 2
    assert [r.record_id for r in fake.received] == fresh  # expired ones were never sent
    assert [e.outcome for e in entries(user_install)] == [Outcome.EXPIRED, Outcome.EXPIRED]
    # The fresh one keeps failing until it too is older than record_expiry.
    assert postd.next_wake() <= t0 + 20 * 60 + 1
    clock.now = t0 + 20 * 60 + 2
    assert postd.run_pass()[Counter.EXPIRED] == 1
    postd.close()
    assert queued_ids(user_install.paths.spool_dir) == []
    [e] = entries(user_install, record_id=fresh[0])
    assert e.outcome is Outcome.EXPIRED and "last error: HTTP 503" in e.detail
    assert counters(user_install.paths.spool_dir)["expired"] == 3
    assert {old[0], old[1]} <= {e.record_id for e in entries(user_install)}


def test_deferred_records_wait_for_their_window(user_install, fake):
    clock = Clock(time.time())
    row = replace(new_row(record(0)), deferred_until=clock() + 300)
    enqueue(user_install.paths.spool_dir, [row])
    postd = make_postd(user_install, fake, clock)
    assert postd.run_pass()[Counter.DELIVERED] == 0
    assert postd.next_wake() == pytest.approx(clock() + 300)
    clock.advance(300)
    assert postd.run_pass()[Counter.DELIVERED] == 1
    postd.close()


def test_delivery_disabled_posts_nothing_and_retains(user_install, fake):
    rows = [new_row(record(i, payload=f"local {i}\n")) for i in range(3)]
    rows.append(replace(new_row(record(3)), deferred_until=time.time() + 3600))
    ids = enqueue(user_install.paths.spool_dir, rows)
    postd = make_postd(user_install, fake, record_server_delivery_enabled=False,
                       record_retention_enabled=True)
    tally = postd.run_pass()
    postd.close()
    assert tally[Counter.DROPPED] == 4
    assert fake.received == []
    assert queued_ids(user_install.paths.spool_dir) == []
    journal = entries(user_install)
    assert [e.record_id for e in journal] == ids
    assert {e.outcome for e in journal} == {Outcome.DROPPED}
    assert "record_server_delivery_enabled" in journal[0].detail
    assert journal_mod.retained_payload(user_install.paths.journal_dir, ids[1]) == b"local 1\n"
    assert counters(user_install.paths.spool_dir)["dropped"] == 4


def test_retention_keeps_the_last_100_payloads(user_install, fake):
    ids = enqueue(user_install.paths.spool_dir, [new_row(record(i, payload=f"p{i}")) for i in range(105)])
    postd = make_postd(user_install, fake, record_retention_enabled=True)
    assert postd.run_pass()[Counter.DELIVERED] == 105
    postd.close()
    jd = user_install.paths.journal_dir
    assert journal_mod.retained_payload(jd, ids[4]) is None
    assert journal_mod.retained_payload(jd, ids[5]) == b"p5"
    assert journal_mod.retained_payload(jd, ids[104]) == b"p104"
    assert len(entries(user_install)) == 105


def test_no_retention_by_default(user_install, fake):
    [rid] = fill(user_install, 1)
    postd = make_postd(user_install, fake)
    postd.run_pass()
    postd.close()
    assert journal_mod.retained_payload(user_install.paths.journal_dir, rid) is None
    assert entries(user_install, record_id=rid)[0].outcome is Outcome.DELIVERED
