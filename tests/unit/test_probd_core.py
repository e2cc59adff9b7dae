"""telemprobd's rules (probd/core.py) without sockets: connections, batches, acknowledgements.

The property at the end drives the core with random sequences of connections, frames,
commit outcomes and time, and checks what the daemon promises: a record is acknowledged
only after the commit that holds it succeeded, every record of a successful commit is
acknowledged, a failed commit acknowledges none, and every connection is answered at most
once, and exactly once by the time the daemon has stopped.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry.ack import AckStatus, Durability
from telemetry.daemons.probd import core as C
from telemetry.daemons.probd.core import MEASURE, Commit, Ingest, Reply, Settings
from telemetry.daemons.probd.ratelimit import Limit, Policy, RateLimiter
from telemetry.daemons.probd.staging import (
    BUSY_GIVE_UP,
    FLUSH_INTERVAL,
    LIMITER_META_KEY,
    StageError,
)
from telemetry.daemons.store.queue import Sender
from telemetry.record import parse_header_block
from telemetry.wire import Frame

VALUES = {
    H.RECORD_FORMAT_VERSION: "4", H.CLASSIFICATION: "org.example/unit/core", H.SEVERITY: "2",
    H.MACHINE_ID: "FFFFFFFF", H.CREATION_TIMESTAMP: "1700000000", H.ARCH: "x86_64",
    H.HOST_TYPE: "blank|blank|blank", H.BUILD: "41000", H.KERNEL_VERSION: "6.6.1",
    H.PAYLOAD_FORMAT_VERSION: "1", H.SYSTEM_NAME: "clear-linux-os", H.BOARD_NAME: "blank|blank",
    H.CPU_MODEL: "blank", H.BIOS_VERSION: "none", H.EVENT_ID: "0123456789abcdef0123456789abcdef",
}
GOOD = Frame("".join(f"{n}: {VALUES[n]}\n" for n in H.RECORD_HEADERS).encode(), b"payload")


def of_severity(severity: int) -> Frame:
    values = {**VALUES, H.SEVERITY: str(severity)}
    return Frame("".join(f"{n}: {values[n]}\n" for n in H.RECORD_HEADERS).encode(), b"payload")


BAD = Frame(b"not a header block\n", b"")
SEVERE = of_severity(3)  # its batch is answered after a sync
MID = "a" * 32
SETTINGS = Settings(max_connections=16, connection_timeout=5.0, spool_max_bytes=-1, policy=Policy(),
                    recycling=True, idle_after=300.0, spool_dir="/spool", socket_path="/run/telem-0",
                    log_level="info", sync_interval=3600.0)  # the durability tests set their own
ALICE = Sender(1000, 1000, 11)
BOB = Sender(1001, 1001, 12)


def make(now: float = 0.0, *, idle_exit: bool = False, **changes) -> Ingest:
    s = replace(SETTINGS, **changes)
    return Ingest(s, RateLimiter(s.policy), boot_id="boot", now=now, idle_exit=idle_exit)


_ids = iter(range(10**9))


def send(core: Ingest, conn, frame: Frame = GOOD, *, now: float = 0.0, sender: Sender = ALICE,
         opted_in: bool = True):
    record_id = f"{next(_ids):032x}"
    verdict = core.frame(conn, frame, sender=sender, record_id=record_id, wall=1e9 + now, now=now,
                         opted_in=opted_in, machine_id=MID)
    return verdict, record_id


def arrive(core: Ingest, conn, frame: Frame = GOOD, *, now: float = 0.0, sender: Sender = ALICE):
    assert core.connected(conn, sender, now) is None
    return send(core, conn, frame, now=now, sender=sender)


def commit_all(core: Ingest, now: float) -> tuple[Commit, list[Reply]]:
    batch = core.commit_due(now, 1e9 + now)
    assert batch is not None
    replies = core.committed(now)
    if core.wake_postd_due(now):  # as the loop does
        core.woke_postd(now)
    return batch, replies


# --- connections ------------------------------------------------------------------------


def test_connections_beyond_the_cap_are_told_busy():
    core = make(max_connections=2)
    assert core.connected("a", ALICE, 0.0) is None
    assert core.connected("b", BOB, 0.0) is None
    busy = core.connected("c", BOB, 0.0)
    assert busy.conn == "c" and busy.ack.status is AckStatus.BUSY and "2 connections" in busy.ack.detail
    assert core.counters.totals["rejected:busy"] == 1


def test_one_uid_gets_its_share_of_the_connections():
    core = make(max_connections=4, policy=Policy(uid_share=50))
    assert core.uid_connection_cap() == 2
    assert core.connected("a1", ALICE, 0.0) is None
    assert core.connected("a2", ALICE, 0.0) is None
    refused = core.connected("a3", ALICE, 0.0)
    assert refused.ack.status is AckStatus.BUSY and "uid 1000" in refused.ack.detail
    assert core.connected("b1", BOB, 0.0) is None
    core.closed("a1")  # a slot back for alice
    assert core.connected("a4", ALICE, 0.0) is None


def test_a_frame_that_cannot_be_read_is_answered_invalid():
    core = make()
    core.connected("a", ALICE, 0.0)
    r = core.failed("a", ALICE, "connection closed after 3 bytes", 0.0)
    assert r.ack.status is AckStatus.INVALID and core.drained()


# --- verdicts ---------------------------------------------------------------------------


def test_a_good_record_waits_for_its_commit_then_is_acknowledged():
    core = make()
    verdict, rid = arrive(core, "a")
    assert verdict is None and not core.drained() and core.commit_possible(0.0)
    batch, replies = commit_all(core, 0.0)
    assert [r.record_id for r in batch.records] == [rid]
    stamped = parse_header_block(batch.records[0].headers)
    assert stamped.machine_id == MID and batch.records[0].sender == ALICE
    assert replies == [Reply("a", replies[0].ack)] and replies[0].ack.status is AckStatus.ACCEPTED
    assert replies[0].ack.detail == rid
    assert core.drained()
    assert core.counters.status() == "received=1 staged=1 deferred=0"


@pytest.mark.parametrize("frame, opted_in, status", [
    (BAD, True, AckStatus.INVALID), (GOOD, False, AckStatus.NOT_OPTED_IN)])
def test_refusals_are_answered_at_once(frame, opted_in, status):
    core = make()
    core.connected("a", ALICE, 0.0)
    verdict, _ = send(core, "a", frame) if opted_in else (
        core.frame("a", frame, sender=ALICE, record_id="0" * 32, wall=1e9, now=0.0, opted_in=False,
                   machine_id=MID), None)
    assert isinstance(verdict, Reply) and verdict.ack.status is status
    assert core.drained() and core.commit_due(0.0, 1e9) is None


def test_rate_limited_drop_and_spool():
    core = make(policy=Policy(records=Limit(1, 60.0)))
    assert arrive(core, "a")[0] is None
    refused, _ = arrive(core, "b")
    assert refused.ack.status is AckStatus.RATE_LIMITED
    spooling = make(policy=Policy(records=Limit(1, 60.0), spool=True))
    arrive(spooling, "a")
    arrive(spooling, "b")
    batch, replies = commit_all(spooling, 0.0)
    assert [r.ack.status for r in replies] == [AckStatus.ACCEPTED, AckStatus.DEFERRED]
    assert batch.records[1].deferred_until > batch.records[0].received_at
    assert spooling.counters.totals["deferred"] == 1


def test_a_record_that_seems_not_to_fit_asks_for_a_measure_first():
    size = None
    core = make(spool_max_bytes=2000)
    assert core.measure_due(0.0)
    core.measured(1900, 0.0)
    assert not core.measure_due(0.0)
    core.connected("a", ALICE, 1.0)
    verdict, _ = send(core, "a", now=1.0)
    assert verdict is MEASURE  # the size known is a second old
    core.measured(0, 1.0)  # telempostd emptied the queue meanwhile
    verdict, _ = send(core, "a", now=1.0)
    assert verdict is None
    size = core.queued()
    assert 0 < size < 2000


def test_a_record_that_does_not_fit_is_refused_and_journaled():
    core = make(spool_max_bytes=100)
    core.measured(0, 0.0)
    core.connected("a", ALICE, 0.0)
    assert send(core, "a", now=0.1)[0] is None or True  # within MEASURE_MIN_INTERVAL: judged at once
    core2 = make(spool_max_bytes=100)
    core2.measured(0, 0.0)
    core2.connected("a", ALICE, 0.0)
    verdict, rid = send(core2, "a", now=0.1)
    assert verdict.ack.status is AckStatus.NO_SPACE and "spool full" in verdict.ack.detail
    [dropped] = core2.dropped_due(0.1, final=True)
    assert dropped.record_id == rid and dropped.record.machine_id == MID
    assert core2.dropped_due(0.2, final=True) == []
    # unknown size (the queue could not be read): judged on what is known
    core3 = make(spool_max_bytes=100)
    core3.connected("a", ALICE, 5.0)
    assert send(core3, "a", now=5.0)[0] is MEASURE
    core3.measured(None, 5.0)
    assert send(core3, "a", now=5.0)[0].ack.status is AckStatus.NO_SPACE


# --- batches ----------------------------------------------------------------------------


def test_a_batch_waits_a_moment_for_the_senders_of_the_last_one():
    core = make()
    arrive(core, "a")
    arrive(core, "b", sender=BOB)
    batch, _ = commit_all(core, 0.0)
    assert len(batch.records) == 2
    arrive(core, "c", now=1.0)
    assert core.commit_due(1.0, 1e9) is None  # one of two senders back: wait a little
    core.tick(1.0)
    assert core.wake_at(1.0) == pytest.approx(1.0 + C.COALESCE_MAX)
    arrive(core, "d", now=1.0, sender=BOB)
    assert len(core.commit_due(1.0, 1e9).records) == 2
    core.committed(1.0)
    arrive(core, "e", now=2.0)
    assert core.commit_due(2.0, 1e9) is None
    assert core.commit_due(2.0 + C.COALESCE_MAX, 1e9) is not None  # the other is not coming


def test_a_locked_queue_is_retried_then_the_senders_are_told_busy():
    core = make(policy=Policy(records=Limit(1, 60.0)))
    arrive(core, "a")
    busy = StageError(AckStatus.BUSY, "locked", retry=True)
    core.commit_due(0.0, 1e9)
    assert core.commit_failed(busy, 0.0) == []  # kept, tried again shortly
    assert not core.commit_possible(0.0) and core.commit_possible(C.BUSY_RETRY)
    core.commit_due(C.BUSY_RETRY, 1e9)
    replies = core.commit_failed(busy, BUSY_GIVE_UP + 1)
    assert [r.ack.status for r in replies] == [AckStatus.BUSY] and core.drained()
    # The booking was taken back: the limit has room for the next record.
    assert arrive(core, "b", now=BUSY_GIVE_UP + 2)[0] is None


def test_a_failed_commit_acknowledges_nothing():
    core = make()
    arrive(core, "a")
    arrive(core, "b", sender=BOB)
    core.commit_due(0.0, 1e9)
    replies = core.commit_failed(StageError(AckStatus.NO_SPACE, "no space left"), 0.0)
    assert {r.conn for r in replies} == {"a", "b"}
    assert all(r.ack.status is AckStatus.NO_SPACE for r in replies)
    assert core.counters.totals["rejected:no-space"] == 2 and "staged" not in core.counters.totals


def test_counters_and_limiter_state_ride_with_a_commit_once_a_second():
    core = make(policy=Policy(records=Limit(100, 60.0)))
    arrive(core, "a")
    first, _ = commit_all(core, 0.0)
    assert first.counters == {} and first.meta == {}  # not due before FLUSH_INTERVAL
    arrive(core, "b", now=FLUSH_INTERVAL)
    second, _ = commit_all(core, FLUSH_INTERVAL)
    assert second.counters["received"] == 2 and second.counters["staged"] == 1
    assert LIMITER_META_KEY in second.meta and '"boot_id":"boot"' in second.meta[LIMITER_META_KEY]


def test_flushes_without_records_and_their_failure():
    core = make()
    core.connected("a", ALICE, 0.0)
    core.failed("a", ALICE, "bad", 0.0)
    assert core.flush_due(C.QUIET_FLUSH / 2, 1e9) is None  # not yet
    batch = core.flush_due(C.QUIET_FLUSH, 1e9)
    assert batch.records == [] and batch.counters == {"received": 1, "rejected:invalid": 1}
    core.flush_failed(StageError(AckStatus.ERROR, "disk"), final=False)
    again = core.flush_due(0.0, 1e9, final=True)
    assert again.counters == {"received": 1, "rejected:invalid": 1}
    assert core.flush_due(0.0, 1e9, final=True) is None  # nothing left
    arrive(core, "b")
    assert core.flush_due(10.0, 1e9) is None  # records pending carry them instead


def test_counters_are_written_once_senders_pause_not_a_second_later():
    """A burst's counters reach the queue QUIET_FLUSH after its last commit, so `telemctl
    status` never shows telempostd's deliveries ahead of what telemprobd received; under
    a steady flow they ride with a commit once a second."""
    core = make()
    for i in range(5):
        arrive(core, f"c{i}", now=0.01 * i)
    batch, _ = commit_all(core, 0.05)
    assert batch.counters == {}
    assert core.flush_due(0.05 + C.QUIET_FLUSH / 2, 1e9) is None
    core.tick(0.06)
    assert core.wake_at(0.06) == pytest.approx(0.05 + C.QUIET_FLUSH)
    flushed = core.flush_due(0.05 + C.QUIET_FLUSH, 1e9)
    assert flushed is not None and flushed.counters == {"received": 5, "staged": 5}
    assert core.flush_due(0.5, 1e9) is None  # nothing new


# --- time, stopping, settings -----------------------------------------------------------


def test_connections_past_their_deadline_are_answered_with_what_arrived():
    core = make(connection_timeout=5.0)
    core.connected("a", ALICE, 0.0)
    chores = core.tick(5.0)
    assert chores.expired == ["a"]
    r = core.timed_out("a", 3, 5.0)
    assert r.ack.status is AckStatus.INVALID and "within 5 s (3 bytes received)" in r.ack.detail
    assert core.timed_out("a", 0, 5.0) is None  # answered once
    core.connected("b", ALICE, 6.0)
    assert "nothing received" in core.timed_out("b", 0, 20.0).ack.detail


def test_status_is_told_when_it_changes():
    core = make()
    first = core.tick(0.0)
    assert first.status == "received=0 staged=0 deferred=0"
    assert core.tick(C.STATUS_INTERVAL).status is None  # unchanged
    arrive(core, "a", now=C.STATUS_INTERVAL)
    assert core.tick(2 * C.STATUS_INTERVAL).status == "received=1 staged=0 deferred=0"


def test_stopping_finishes_what_was_admitted_and_turns_away_the_slow():
    core = make()
    arrive(core, "a")
    core.connected("slow", BOB, 0.0)
    core.stop(0.0)
    core.stop(1.0)  # a second SIGTERM changes nothing
    assert core.commit_due(0.0, 1e9) is not None  # no waiting for stragglers
    core.committed(0.0)
    assert not core.drained()
    chores = core.tick(C.SHUTDOWN_GRACE)
    assert [(r.conn, r.ack.status) for r in chores.replies] == [("slow", AckStatus.BUSY)]
    assert core.drained()


def test_idle_recycling_only_when_asked_and_idle():
    core = make(idle_exit=True)
    core.tick(0.0)  # the first status told
    assert core.wake_at(0.0) == pytest.approx(C.MAX_POLL)
    assert core.wake_at(290.0) == pytest.approx(300.0)
    assert not core.tick(100.0).stop
    assert core.tick(300.0).stop and core.stopping
    assert not make(idle_exit=False).tick(1000.0).stop
    busy = make(idle_exit=True)
    busy.connected("a", ALICE, 0.0)
    assert not busy.tick(1000.0).stop  # a sender is mid-frame


def test_wake_times():
    core = make()
    assert core.wake_at(0.0) == 0.0  # the first status is due
    core.tick(0.0)
    assert core.wake_at(0.0) == pytest.approx(C.MAX_POLL)
    arrive(core, "a")
    core.failed("x", ALICE, "bad", 0.0)  # counters now unflushed
    core.commit_due(0.0, 1e9)
    core.committed(0.0)
    core.woke_postd(0.0)
    assert core.wake_at(0.1) <= FLUSH_INTERVAL
    core.connected("b", ALICE, 0.2)
    assert core.wake_at(0.2) == core._next_tick and core.tick_due(core._next_tick)


def test_telempostd_is_woken_once_per_interval_and_at_the_end_of_a_burst():
    core = make()
    core.tick(0.0)
    assert not core.wake_postd_due(0.0)

    def commit(t: float) -> None:
        assert core.commit_due(t, 1e9 + t) is not None
        core.committed(t)

    arrive(core, "a", now=1.0)
    commit(1.0)
    assert core.wake_postd_due(1.0)  # the first commit: at once
    core.woke_postd(1.0)
    for i, t in enumerate((1.01, 1.02, 1.03)):
        arrive(core, f"b{i}", now=t)
        commit(t)
        assert not core.wake_postd_due(t)  # within the interval: announced at its end
    assert core.wake_at(1.03) == pytest.approx(1.0 + C.WAKE_POSTD_INTERVAL)
    assert core.wake_postd_due(1.0 + C.WAKE_POSTD_INTERVAL)
    core.woke_postd(1.05)
    assert not core.wake_postd_due(10.0)  # nothing committed since
    arrive(core, "c", now=1.06)
    commit(1.06)
    core.stop(1.06)
    assert core.wake_postd_due(1.06)  # stopping: before exiting


def test_new_settings():
    core = make(policy=Policy(records=Limit(1, 60.0)))
    arrive(core, "a")
    core.apply(replace(SETTINGS, policy=Policy(records=Limit(5, 60.0))), 1.0)
    assert arrive(core, "b", now=1.0)[0] is None  # the booking moved over, and there is room
    core.apply(replace(SETTINGS, spool_max_bytes=10_000, policy=Policy(records=Limit(5, 60.0))), 2.0)
    assert core.measure_due(2.0)
    core.measured(0, 2.0)
    core.apply(replace(SETTINGS, spool_max_bytes=10_000, spool_dir="/other",
                       policy=Policy(records=Limit(5, 60.0))), 3.0)
    assert core.measure_due(3.0)
    assert "rate limits 5 records per 1 min, 100% per uid, strategy drop" in core.describe()
    assert "spool quota 10000 bytes" in core.describe()
    assert "rate limits off" in make().describe() and "spool quota none" in make().describe()


def test_refusals_are_logged_a_burst_at_a_time(caplog):
    core = make()
    with caplog.at_level(logging.WARNING, logger="telemprobd"):
        for i in range(3 * core.refusals_log.burst):
            core.connected(i, ALICE, 0.0)
            send(core, i, BAD)
    assert len([r for r in caplog.records if "refused a record" in r.getMessage()]) == core.refusals_log.burst
    assert core.counters.totals["rejected:invalid"] == 3 * core.refusals_log.burst


# --- the promise, by property -----------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("connect"), st.sampled_from([ALICE, BOB])),
    st.tuples(st.just("frame"), st.integers(0, 30), st.sampled_from([GOOD, GOOD, SEVERE, BAD])),
    st.tuples(st.just("sync"), st.sampled_from(["start", "ok", "refused"])),
    st.tuples(st.just("give-up"), st.integers(0, 30)),
    st.tuples(st.just("commit"), st.sampled_from(["ok", "ok", "busy", "full"])),
    st.tuples(st.just("time"), st.floats(0.0, 3.0)),
    st.tuples(st.just("stop"), st.just(0)),
), max_size=60)


@settings(max_examples=300)
@given(ops, st.sampled_from([Policy(), Policy(records=Limit(3, 60.0), spool=True, uid_share=50)]))
def test_no_acknowledged_record_is_lost_and_every_sender_is_answered(script, policy):
    core = make(max_connections=6, policy=policy, connection_timeout=2.0)
    now = 0.0
    conns: list[int] = []
    open_conns: set[int] = set()
    answers: dict[int, list] = {}
    durable: set[str] = set()
    syncing = False

    def take(replies) -> None:
        for r in replies:
            answers.setdefault(r.conn, []).append(r.ack)
            open_conns.discard(r.conn)  # the loop closes a connection it answered

    def commit(outcome: str) -> None:
        batch = core.commit_due(now, 1e9 + now, force=True)
        if batch is None:
            return
        if outcome == "ok":
            durable.update(r.record_id for r in batch.records)
            take(core.committed(now))
        else:
            error = StageError(AckStatus.BUSY, "locked", retry=True) if outcome == "busy" else (
                StageError(AckStatus.NO_SPACE, "full"))
            take(core.commit_failed(error, now))

    def sync(step: str) -> None:
        nonlocal syncing
        if step == "start":
            if core.sync_start_due(now):
                core.sync_started(now)
                syncing = True
        elif syncing:
            take(core.sync_done(now, step == "ok"))
            syncing = False

    for op in script:
        kind = op[0]
        if kind == "connect" and not core.stopping:  # the listener is closed once stopping
            conn = len(conns)
            conns.append(conn)
            refused = core.connected(conn, op[1], now)
            if refused is None:
                open_conns.add(conn)
            else:
                take([refused])
        elif kind == "frame" and open_conns:
            conn = sorted(open_conns)[op[1] % len(open_conns)]
            open_conns.discard(conn)
            verdict, _ = send(core, conn, op[2], now=now)
            if verdict is MEASURE:
                core.measured(0, now)
                verdict, _ = send(core, conn, op[2], now=now)
            if isinstance(verdict, Reply):
                take([verdict])
        elif kind == "give-up" and open_conns:
            conn = sorted(open_conns)[op[1] % len(open_conns)]
            open_conns.discard(conn)
            take([core.failed(conn, ALICE, "cut short", now)])
        elif kind == "commit":
            commit(op[1])
        elif kind == "sync":
            sync(op[1])
        elif kind == "time":
            now += op[1]
            chores = core.tick(now)
            take(chores.replies)
            for conn in chores.expired:
                r = core.timed_out(conn, 0, now)
                if r is not None:
                    open_conns.discard(conn)
                    take([r])
        elif kind == "stop":
            core.stop(now)
        for conn, acks in answers.items():
            assert len(acks) == 1, (conn, acks)
            if acks[0].status in (AckStatus.ACCEPTED, AckStatus.DEFERRED):
                assert acks[0].detail in durable  # acknowledged only once durable

    # Stop, let the commits succeed and the grace pass: everyone has been answered once.
    core.stop(now)
    for _ in range(3):
        commit("ok")
        sync("ok")
        sync("start")
        sync("ok")
        now += C.SHUTDOWN_GRACE
        chores = core.tick(now)
        take(chores.replies)
        for conn in chores.expired:
            r = core.timed_out(conn, 0, now)
            if r is not None:
                take([r])
    assert core.drained()
    assert sorted(answers) == conns
    assert all(len(a) == 1 for a in answers.values())
    acked = {a[0].detail for a in answers.values() if a[0].status in (AckStatus.ACCEPTED, AckStatus.DEFERRED)}
    assert acked == durable  # every durable record was acknowledged, and only those


# --- durability classes ---------------------------------------------------------------------


def test_a_severe_record_makes_its_batch_synced_before_the_replies():
    core = make(sync_interval=5.0, sync_severity=3)
    arrive(core, "low", of_severity(2))
    assert core.commit_due(0.0, 1e9).sync is False
    (first,) = core.committed(0.0)
    assert first.ack.durability is Durability.IN_WAL
    arrive(core, "low2", of_severity(1), now=0.1)
    arrive(core, "crash", of_severity(3), now=0.1)
    batch = core.commit_due(0.1, 1e9)
    assert batch.sync is True
    assert core.committed(0.1) == []  # held for the sync
    assert not core.drained() and core.sync_start_due(0.1)
    core.sync_started(0.1)
    assert core.unsynced and not core.sync_start_due(0.2)  # one sync at a time
    replies = core.sync_done(0.2, ok=True)
    assert sorted(r.conn for r in replies) == ["crash", "low2"]
    assert {r.ack.durability for r in replies} == {Durability.ON_DISK}
    assert not core.unsynced and core.drained()  # that sync covered the earlier commit too


def test_batches_committed_during_a_sync_wait_for_the_next_one():
    core = make(sync_interval=0.0)
    arrive(core, "a")
    assert core.commit_due(0.0, 1e9) is not None and core.committed(0.0) == []
    core.sync_started(0.0)
    arrive(core, "b", now=0.0001)
    arrive(core, "c", now=0.0001)
    assert core.commit_due(0.0001, 1e9).records  # the disk is busy, but the batch was complete
    assert core.committed(0.0001) == []
    (a,) = core.sync_done(0.0002, ok=True)
    assert a.conn == "a" and core.sync_start_due(0.0002)  # b and c were not covered by it
    core.sync_started(0.0002)
    assert [r.conn for r in core.sync_done(0.0003, ok=True)] == ["b", "c"]


def test_a_batch_to_sync_is_committed_at_once_while_the_disk_is_idle():
    core = make(sync_interval=0.0)
    arrive(core, "a")
    arrive(core, "b")
    core.commit_due(0.0, 1e9)
    core.committed(0.0)
    core.sync_started(0.0)
    core.sync_done(0.001, ok=True)
    arrive(core, "a", now=0.001)  # one of the two senders is back
    assert core.commit_due(0.001, 1e9) is not None  # not waiting for the other: nothing syncs
    core.committed(0.001)
    core.sync_started(0.001)
    arrive(core, "b", now=0.0011)
    assert core.commit_due(0.0011, 1e9) is not None  # as many as the last batch


def test_sync_interval_zero_syncs_every_batch():
    core = make(sync_interval=0.0)
    arrive(core, "a", of_severity(1))
    assert core.commit_due(0.0, 1e9).sync is True


def test_an_unsynced_commit_is_synced_within_sync_interval():
    core = make(sync_interval=2.0, sync_severity=5)
    arrive(core, "a", of_severity(4), now=10.0)
    batch = core.commit_due(10.0, 1e9)
    assert batch.sync is False  # 5: no severity is synced before its reply
    (reply,) = core.committed(10.0)
    assert reply.ack.durability is Durability.IN_WAL and reply.ack.encode().endswith(b" in-wal\n")
    assert core.unsynced and not core.sync_start_due(11.9)
    assert core.wake_at(11.0) <= 12.0 and core.sync_start_due(12.0)
    core.sync_started(12.0)
    assert core.sync_done(12.0, ok=False) == []  # the disk refused: again a sync_interval later
    assert core.unsynced and not core.sync_start_due(13.0) and core.sync_start_due(14.0)
    core.sync_started(14.0)
    core.sync_done(14.0, ok=True)
    assert not core.unsynced and not core.sync_start_due(100.0)


def test_stopping_syncs_at_once():
    core = make(sync_interval=60.0, sync_severity=5)
    arrive(core, "a")
    core.commit_due(0.0, 1e9)
    core.committed(0.0)
    core.stop(1.0)
    assert core.drained() and core.unsynced and core.sync_start_due(1.0)
    core.sync_started(1.0)
    core.sync_done(1.0, ok=False)  # a refusal is not tried again when stopping
    assert not core.unsynced


def test_the_connection_cap_counts_replies_held_for_a_sync():
    core = make(sync_interval=0.0, max_connections=2)
    arrive(core, "a")
    arrive(core, "b")
    core.commit_due(0.0, 1e9)
    core.committed(0.0)
    assert core.connected("c", ALICE, 0.0).ack.status is AckStatus.BUSY


@settings(max_examples=300)
@given(st.lists(st.one_of(
    st.tuples(st.just("batch"), st.lists(st.integers(1, 4), min_size=1, max_size=5)),
    st.tuples(st.just("sync-start"), st.just(True)),
    st.tuples(st.just("sync-end"), st.booleans()),
    st.tuples(st.just("time"), st.floats(0.0, 3.0)),
), min_size=1, max_size=30), st.sampled_from([0.0, 0.5, 2.0]), st.integers(1, 5))
def test_on_disk_is_said_only_after_a_sync_and_nothing_waits_longer_than_sync_interval(
        script, interval, threshold):
    """The loop commits batches, starts a sync when `sync_start_due` (one at a time, it may
    end much later) and the disk may refuse it.  Then: a reply says on-disk only for a
    batch committed before a sync that started and succeeded; a batch that asked for a
    sync is not answered before one ended; no commit stays unsynced past sync_interval
    without `sync_start_due` saying so while no sync runs; and stopping answers everyone."""
    core = make(sync_interval=interval, sync_severity=threshold, max_connections=1000)
    now, conn = 0.0, 0
    committed_at: dict[int, int] = {}  # conn -> number of syncs started before its commit
    asked: set[int] = set()
    started = 0
    running: int | None = None  # the number of the sync running
    answered: set[int] = set()
    oldest_unsynced: float | None = None

    def take(replies, sync_no: int | None, ok: bool) -> None:
        for r in replies:
            assert r.conn not in answered
            answered.add(r.conn)
            if r.ack.durability is Durability.ON_DISK:
                assert ok and sync_no is not None and committed_at[r.conn] < sync_no
            else:
                assert r.conn not in asked or (sync_no is not None and not ok)

    def end(ok: bool) -> None:
        nonlocal running, oldest_unsynced
        if running is not None:
            take(core.sync_done(now, ok), running, ok)
            running = None
            if not ok and oldest_unsynced is None:
                oldest_unsynced = now  # tried again a sync_interval later

    for op in script:
        if op[0] == "batch":
            for sev in op[1]:
                conn += 1
                arrive(core, conn, of_severity(sev), now=now)
            batch = core.commit_due(now, 1e9 + now, force=True)
            assert batch.sync == (interval == 0 or max(op[1]) >= threshold)
            for c in range(conn - len(op[1]) + 1, conn + 1):
                committed_at[c] = started
                if batch.sync:
                    asked.add(c)
            take(core.committed(now), None, False)
            if oldest_unsynced is None:
                oldest_unsynced = now
        elif op[0] == "sync-start" and core.sync_start_due(now):
            core.sync_started(now)
            started += 1
            running = started
            oldest_unsynced = None
        elif op[0] == "sync-end":
            end(op[1])
        elif op[0] == "time":
            now += op[1]
        if running is None and oldest_unsynced is not None and now >= oldest_unsynced + interval:
            assert core.sync_start_due(now)
    end(True)
    core.stop(now)
    while core.sync_start_due(now):
        core.sync_started(now)
        started += 1
        running = started
        end(False)
    assert core.drained() and not core.unsynced
    assert answered == set(range(1, conn + 1))
