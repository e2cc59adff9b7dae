"""telempostd's rules (postd/core.py) without a queue file or a network.

A list of rows stands in for the queue and `MemoryTransport` for the collector; `run_pass`
below does what `main.Postd.run_pass` does with the real ones.  The properties at the end
drive the courier through random answers, clocks and kills and check its promises: no row
leaves the queue without a final fate in the journal, no record is sent again unless an
answer asked for it (or a kill interrupted it, and then at most the window the settle
policy allows), and every answer settles its row once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.contract import request_header_block
from telemetry.daemons.postd import spool
from telemetry.daemons.postd.core import (
    DONE,
    RECORD_WARNINGS_PER_PASS,
    SETTLE_HOLD,
    SETTLE_IN_WINDOW,
    WAIT,
    Courier,
    Fetch,
    Query,
    Release,
    Send,
    Settings,
    Settle,
    Settlement,
    SettlePolicy,
    settlement,
)
from telemetry.daemons.postd.endpoint import DeliverySettings, RequestRefused
from telemetry.daemons.postd.outcome import Response
from telemetry.daemons.postd.request import Request, RequestFormat, build_request
from telemetry.daemons.postd.transport import MemoryTransport
from telemetry.daemons.store.journal import Counter, Outcome
from telemetry.daemons.store.queue import QueuedRecord, Sender
from telemetry.metadata import Metadata
from telemetry.record import Record, create_record

MD = Metadata("x86_64", "LENOVO|20L8S2N800|ThinkPad T480s", "38710", "6.1.21-1283.native", "clear-linux-os",
              "blank|blank", "Intel(R) Core(TM) i7-8650U CPU", "N22ET37W (1.14 )")
T0 = 1_700_000_000.0
SETTINGS = Settings(
    delivery=DeliverySettings(url="http://collector.invalid/v2/collector", max_in_flight=4),
    request_format=RequestFormat.HEADERS, tid=("X-Telemetry-TID", "6907c830-eed9-4ce9-81ae-76daf8d88f0f"),
    base_delay=120.0, retry_max_delay=3600.0, record_expiry=1200, delivery_enabled=True, retention_enabled=False,
    recycling=False, idle_after=300.0, spool_dir="/spool", log_level="info",
)
OK = Response(201)


def record_of(seq: int, **fields) -> Record:
    r = create_record(f"org.example/core/r{seq}", 2, f"payload {seq}\n", event_id=f"{seq:032x}", metadata=MD,
                      now=1_690_000_000 + seq).with_machine_id("6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b")
    return dataclasses.replace(r, **fields) if fields else r


def row(seq: int, *, headers: bytes | None = None, record_id: str | None = None, received_at: float = T0,
        attempts: int = 0, next_attempt_at: float = 0.0, deferred_until: float = 0.0, prepared: bool = False,
        request_headers: bytes | None = None, **fields) -> QueuedRecord:
    """A queue row; `prepared`: with the request header lines telemprobd stores since schema 2."""
    r = record_of(seq, **fields)
    if prepared and request_headers is None:
        request_headers = request_header_block(r)
    return QueuedRecord(seq, record_id or f"{seq:032x}", received_at, Sender(1, 1, 1), None,
                        r.header_block() if headers is None else headers, r.payload, 600, deferred_until,
                        attempts, next_attempt_at, None, request_headers)


class Queue:
    """The queue as the core sees it: rows by position, the journal beside it."""

    def __init__(self, rows: list[QueuedRecord]):
        self.rows = {r.seq: r for r in rows}
        self.journal: dict[str, tuple[Outcome, str]] = {}
        self.settlements: list[Settlement] = []

    def fetch(self, f: Fetch) -> list[QueuedRecord]:
        ordered = sorted(self.rows.values(), key=lambda r: r.seq)
        if f.query is Query.EXPIRED:
            found = [r for r in ordered if r.received_at < f.cutoff]
        elif f.query is Query.DUE:
            found = [r for r in ordered if r.seq > f.after and r.next_attempt_at <= f.now and r.deferred_until <= f.now]
        elif f.query is Query.PROBE:
            found = [r for r in ordered if r.deferred_until <= f.now]
        else:
            found = [r for r in ordered if r.seq > f.after]
        return found[: f.limit]

    def release(self, until: float) -> None:
        for seq, r in list(self.rows.items()):
            if 0 < r.next_attempt_at <= until:
                self.rows[seq] = dataclasses.replace(r, next_attempt_at=0.0)

    def settle(self, s: Settlement) -> None:
        self.settlements.append(s)
        for e in s.entries:
            self.journal[e.record_id] = (e.outcome, e.detail)
        for seq in s.delete:
            del self.rows[seq]
        by_id = {r.record_id: r for r in self.rows.values()}
        for rid, attempts, when, error in s.retry:
            r = by_id[rid]
            self.rows[r.seq] = dataclasses.replace(r, attempts=attempts, next_attempt_at=when, last_error=error)


def run_pass(core: Courier, queue: Queue, transport: MemoryTransport, now: float,
             kill_after: int | None = None) -> collections.Counter[Counter]:
    """What Postd.run_pass does; `kill_after`: stop dead after that many actions."""
    tally: collections.Counter[Counter] = collections.Counter()
    core.start_pass(now)
    steps = 0
    while True:
        if kill_after is not None and steps >= kill_after:
            return tally
        steps += 1
        action = core.step(now, transport.capacity())
        if isinstance(action, Send):
            try:
                transport.submit(action.token, action.request)
            except RequestRefused as e:
                core.refused(action.token, str(e), now)
        elif action is WAIT:
            for token, response in transport.poll(0):
                core.answered(token, response, now)
        elif isinstance(action, Fetch):
            core.fetched(queue.fetch(action), now)
        elif isinstance(action, Settle):
            queue.settle(action.settlement)
            tally.update(action.settlement.counts)
        elif isinstance(action, Release):
            queue.release(action.until)
        else:
            assert action is DONE
            core.finish_pass()
            rows = queue.rows.values()
            core.view = spool.QueueView(len(rows), min((max(r.next_attempt_at, r.deferred_until) for r in rows),
                                                       default=None),
                                        min((r.received_at for r in rows), default=None))
            return tally


def courier(policy: SettlePolicy = SETTLE_IN_WINDOW, **changes) -> Courier:
    return Courier(dataclasses.replace(SETTINGS, **changes), boot_id="boot", rng=random.Random(7), policy=policy)


def answering(*responses: Response, then: Response = OK) -> MemoryTransport:
    plan = collections.deque(responses)
    return MemoryTransport(lambda request: plan.popleft() if plan else then, max_in_flight=4)


def header(request: Request, name: str) -> str | None:
    for line in request.headers:
        key, _, value = line.decode().partition(": ")
        if key == name:
            return value
    return None


# --- delivering ------------------------------------------------------------------------


def test_delivered_records_are_journaled_and_removed():
    q = Queue([row(i) for i in range(1, 6)])
    t = answering()
    tally = run_pass(courier(), q, t, T0)
    assert tally == {Counter.DELIVERED: 5}
    assert q.rows == {} and {o for o, _ in q.journal.values()} == {Outcome.DELIVERED}
    assert [tok for tok, _ in t.sent] == [1, 2, 3, 4, 5]
    assert header(t.sent[0][1], "X-Telemetry-Record-Id") == f"{1:032x}"
    assert [s.queue_counters for s in q.settlements] == [{("telempostd", "delivered"): 4},
                                                          {("telempostd", "delivered"): 1}]  # the window: 4


def test_a_row_with_stored_header_lines_is_sent_as_stored_without_being_parsed():
    """telemprobd validated the record and stored its request header lines: telempostd
    sends them as they are (the frame headers beside them are not even read)."""
    good = row(1, prepared=True)
    q = Queue([row(1, prepared=True, headers=b"not a header block\n"), row(2)])
    t = answering()
    assert run_pass(courier(), q, t, T0) == {Counter.DELIVERED: 2}
    expected = build_request(record_of(1), good.record_id, RequestFormat.HEADERS, SETTINGS.tid)
    assert t.sent[0][1] == expected  # the same request as one built from the parsed record
    assert t.sent[1][1] == build_request(record_of(2), f"{2:032x}", RequestFormat.HEADERS, SETTINGS.tid)
    (entry, _) = q.settlements[0].entries
    assert (entry.classification, entry.event_id, entry.creation_timestamp) == (
        "org.example/core/r1", f"{1:032x}", 1_690_000_001)


def test_a_damaged_stored_block_falls_back_to_the_frame_headers():
    injected = request_header_block(record_of(1)) + b"\r\nX-Injected: 1"
    q = Queue([row(1, request_headers=injected), row(2, request_headers=b"short\nblock",
                                                      headers=b"garbage\n")])
    t = answering()
    assert run_pass(courier(), q, t, T0) == {Counter.DELIVERED: 1, Counter.SET_ASIDE: 1}
    assert t.sent[0][1] == build_request(record_of(1), f"{1:032x}", RequestFormat.HEADERS, SETTINGS.tid)


def test_a_prepared_row_expires_and_json_requests_are_built_from_the_record():
    q = Queue([row(1, prepared=True, received_at=T0 - 1201 * 60)])
    assert run_pass(courier(), q, answering(), T0) == {Counter.EXPIRED: 1}
    assert q.settlements[0].entries[0].classification == "org.example/core/r1"
    q = Queue([row(2, prepared=True)])
    t = answering()
    assert run_pass(courier(request_format=RequestFormat.JSON), q, t, T0) == {Counter.DELIVERED: 1}
    assert t.sent[0][1] == build_request(record_of(2), f"{2:032x}", RequestFormat.JSON, SETTINGS.tid)


def test_a_rejection_is_final_and_a_retry_keeps_the_row():
    q = Queue([row(1), row(2), row(3)])
    t = answering(OK, Response(400, body=b'{"message": "kernel version is invalid"}'), Response(503))
    core = courier(probe_interval=0.0)
    tally = run_pass(core, q, t, T0)
    assert tally == {Counter.DELIVERED: 1, Counter.REJECTED: 1, Counter.RETRIED: 1}
    assert q.journal[f"{2:032x}"] == (Outcome.REJECTED, "HTTP 400: kernel version is invalid")
    kept = q.rows[3]
    assert kept.attempts == 1 and kept.next_attempt_at == core.gate.open_at and kept.last_error == "HTTP 503"
    # Asleep until the gate opens; then delivered.
    assert run_pass(core, q, t, T0 + 0.5) == {}
    assert core.next_wake(T0 + 0.5, None) == core.gate.open_at
    assert run_pass(core, q, t, core.gate.open_at) == {Counter.DELIVERED: 1}


def test_a_configuration_error_holds_every_record_and_a_reload_lifts_it(caplog):
    q = Queue([row(i) for i in range(1, 4)])
    t = answering(Response(400, body=b'{"message": "Telemetry ID mismatch"}'), then=Response(404))
    core = courier()
    with caplog.at_level(logging.ERROR):
        tally = run_pass(core, q, t, T0)
    assert tally[Counter.CONFIG_ERROR] >= 1 and len(q.rows) == 3 and q.journal == {}
    assert core.gate.open_at == pytest.approx(T0 + 3600)
    assert caplog.text.count("delivery stopped") == 1
    core.reload(SETTINGS)
    assert core.gate.is_open(T0)
    assert run_pass(core, q, answering(), T0) == {Counter.DELIVERED: 3}


class LongWaits(random.Random):
    def random(self) -> float:
        return 0.99


def test_while_the_gate_is_closed_one_probe_an_interval_and_its_success_sends_the_backlog():
    q = Queue([row(i) for i in range(1, 6)])
    core = courier(probe_interval=30.0)
    core.rng = LongWaits()  # the backoff is near its ceiling (119 s): probes come first
    down = Response(curl_error=7, curl_message="Failed to connect")
    t = answering(then=down)
    assert run_pass(core, q, t, T0)[Counter.RETRIED] >= 1
    assert core.gate.open_at > T0 + 30 and core.probe_at == T0 + 30
    assert core.next_wake(T0, None) == T0 + 30
    sent = len(t.sent)
    # Before the probe time nothing goes; at it, exactly one request, still failing.
    assert run_pass(core, q, t, T0 + 29) == {} and len(t.sent) == sent
    tally = run_pass(core, q, t, T0 + 30)
    assert len(t.sent) == sent + 1 and tally == {Counter.RETRIED: 1}
    assert q.rows[1].attempts == 1  # a probe that fails is no attempt of the record's
    assert core.probe_at == T0 + 60 and not core.gate.is_open(T0 + 60)
    # The collector answers again: the probe's success sends everything at once.
    t = answering()
    assert run_pass(core, q, t, T0 + 60) == {Counter.DELIVERED: 5}
    assert q.rows == {} and core.gate.is_open(T0 + 60) and core.probe_at is None
    assert core.last_success == T0 + 60 and "Failed to connect" in core.last_error.detail


def test_no_probe_while_the_collector_asked_for_a_wait():
    q = Queue([row(1), row(2)])
    core = courier(probe_interval=30.0)
    t = answering(Response(503, retry_after="600"), then=Response(503, retry_after="600"))
    run_pass(core, q, t, T0)
    assert core.gate.hard and core.probe_at is None
    assert core.next_wake(T0, None) == core.gate.open_at == T0 + 600


def test_the_same_4xx_for_every_record_is_a_configuration_error(caplog):
    q = Queue([row(i) for i in range(1, 9)])
    refused = Response(400, body=b'{"message": "Record-Format-Version header missing"}')
    t = answering(then=refused)
    core = courier()
    with caplog.at_level(logging.ERROR):
        tally = run_pass(core, q, t, T0)
    assert tally[Counter.REJECTED] == 0 and tally[Counter.CONFIG_ERROR] >= 1
    assert len(q.rows) == 8 and q.journal == {}
    assert not core.gate.is_open(T0 + 3599) and core.pause.value == "config-error"
    assert caplog.text.count("every record is refused with the same answer") == 1
    assert "request_format" in caplog.text
    # Fixed and reloaded: the kept records go.
    core.reload(SETTINGS)
    for seq, r in list(q.rows.items()):
        q.rows[seq] = dataclasses.replace(r, next_attempt_at=0.0)  # what Postd's reload does to the queue
    assert run_pass(core, q, answering(), T0 + 1) == {Counter.DELIVERED: 8}


def test_different_4xx_answers_are_about_the_records():
    q = Queue([row(i) for i in range(1, 4)])
    t = answering(Response(400, body=b'{"message": "kernel version is invalid"}'),
                  Response(400, body=b'{"message": "architecture is invalid"}'), OK)
    core = courier()
    tally = run_pass(core, q, t, T0)
    # The first was kept while it could have been the configuration; the second is rejected.
    assert tally == {Counter.RETRIED: 1, Counter.REJECTED: 1, Counter.DELIVERED: 1}
    assert q.rows[1].attempts == 1
    assert run_pass(core, q, answering(Response(400, body=b'{"message": "kernel version is invalid"}')),
                    q.rows[1].next_attempt_at) == {Counter.REJECTED: 1}


def test_what_the_collector_could_never_take_is_rejected_without_sending():
    q = Queue([row(1, arch="riscv64"), row(2)])
    t = answering()
    assert run_pass(courier(), q, t, T0) == {Counter.REJECTED_LOCAL: 1, Counter.DELIVERED: 1}
    outcome, detail = q.journal[f"{1:032x}"]
    assert outcome is Outcome.REJECTED_LOCAL and "architecture is invalid" in detail
    assert [tok for tok, _ in t.sent] == [2]


def test_a_request_the_transport_refuses_is_rejected_locally():
    def refuse(request: Request) -> Response:
        raise RequestRefused("curl refused the request: bad header")

    q = Queue([row(1)])
    assert run_pass(courier(), q, MemoryTransport(refuse), T0) == {Counter.REJECTED_LOCAL: 1}
    assert "curl refused" in q.journal[f"{1:032x}"][1]


def test_unreadable_rows_are_set_aside_with_their_bytes(caplog):
    damaged = [row(i, headers=f"classification: org.example/b{i}\nnot a record\n".encode()) for i in range(1, 31)]
    bad_id = row(40, record_id="abc\r\nX-Injected: 1")
    q = Queue([*damaged, bad_id, row(50)])
    with caplog.at_level(logging.WARNING, logger="telempostd"):
        core = courier()
        tally = run_pass(core, q, answering(), T0)
    assert tally == {Counter.SET_ASIDE: 31, Counter.DELIVERED: 1}
    warned = [r for r in caplog.records if "holds no readable record" in r.getMessage()]
    assert len(warned) == RECORD_WARNINGS_PER_PASS
    aside = [a for s in q.settlements for a in s.aside]
    assert len(aside) == 31 and aside[0].headers.startswith(b"classification: org.example/b1")
    entries = [e for s in q.settlements for e in s.entries]
    assert {e.classification for e in entries if e.outcome is Outcome.SET_ASIDE} >= {"org.example/b1"}
    assert "abc\\r\\nX-Injected: 1" in q.journal


def test_expired_rows_go_first_and_are_never_sent():
    q = Queue([row(1, received_at=T0 - 1200 * 60 - 5), row(2)])
    t = answering(Response(503))
    assert run_pass(courier(), q, t, T0) == {Counter.EXPIRED: 1, Counter.RETRIED: 1}
    assert [tok for tok, _ in t.sent] == [2]
    assert q.journal[f"{1:032x}"][0] is Outcome.EXPIRED
    # The kept one expires in its turn, with its last error.
    assert run_pass(courier(), q, t, T0 + 1200 * 60 + 1) == {Counter.EXPIRED: 1}
    assert "last error: HTTP 503" in q.journal[f"{2:032x}"][1]


def test_deferred_rows_wait_and_delivery_off_keeps_them_local():
    q = Queue([row(1, deferred_until=T0 + 300)])
    core = courier()
    assert run_pass(core, q, answering(), T0) == {}
    core.view = spool.QueueView(1, T0 + 300, T0)
    assert core.next_wake(T0, None) == pytest.approx(T0 + 300)
    local = Queue([row(1), row(2, deferred_until=T0 + 3600)])
    kept = courier(delivery_enabled=False, retention_enabled=True)
    t = answering()
    assert run_pass(kept, local, t, T0) == {Counter.DROPPED: 2}
    assert t.sent == [] and local.rows == {}
    assert [p for s in local.settlements for p in s.retained] == [(f"{1:032x}", b"payload 1\n"),
                                                                 (f"{2:032x}", b"payload 2\n")]


def test_a_stop_lets_requests_in_flight_finish_and_starts_no_new_one():
    q = Queue([row(i) for i in range(1, 10)])
    t = MemoryTransport(lambda request: OK, max_in_flight=2, per_poll=0)
    core = courier()
    core.start_pass(T0)
    assert core.step(T0, 2).query is Query.EXPIRED
    core.fetched([], T0)
    due = core.step(T0, 2)
    assert due.query is Query.DUE
    core.fetched(q.fetch(due), T0)
    sends = [core.step(T0, 2), core.step(T0, 1)]
    for s in sends:
        t.submit(s.token, s.request)
    assert core.in_flight == 2 and core.step(T0, 0) is WAIT
    core.stopping = True
    t.per_poll = None
    for token, response in t.poll(0):
        core.answered(token, response, T0)
    settled = core.step(T0, 2)
    assert isinstance(settled, Settle) and len(settled.settlement.delete) == 2
    assert core.step(T0, 2) is DONE


def test_the_loop_losing_its_transport_keeps_the_rows():
    core = courier()
    q = Queue([row(1)])
    core.start_pass(T0)
    core.fetched([], T0)  # nothing expired
    core.fetched(q.fetch(Fetch(Query.DUE, now=T0)), T0)
    assert isinstance(core.step(T0, 4), Send)
    assert [r.seq for r in core.abandon()] == [1] and core.in_flight == 0
    core.answered(1, OK, T0)  # a late answer for a forgotten request changes nothing
    core.refused(1, "late", T0)
    core.fetched(q.fetch(core.step(T0, 4)), T0)  # nothing after it
    assert core.step(T0, 4) is DONE


def test_a_row_is_parsed_once_while_it_waits(monkeypatch):
    from telemetry.daemons.postd import core as core_mod

    calls = []
    real = core_mod.parse_header_block
    monkeypatch.setattr(core_mod, "parse_header_block", lambda h, p: calls.append(h) or real(h, p))
    core = courier()
    q = Queue([row(1)])
    t = answering(Response(503), Response(503), Response(503))
    run_pass(core, q, t, T0)
    run_pass(core, q, t, core.gate.open_at)
    run_pass(core, q, t, core.gate.open_at)
    assert len(t.sent) == 3 and len(calls) == 1
    changed = dataclasses.replace(q.rows[1], headers=row(1, arch="aarch64").headers)
    q.rows[1] = changed
    run_pass(core, q, t, core.gate.open_at)
    assert len(calls) == 2  # a row whose bytes changed is read again


def test_pass_due_waits_out_an_outage():
    core = courier()
    core.gate = core.gate.after_failure(T0, base=120, cap=3600, rand=0.5)
    core.view = spool.QueueView(3, core.gate.open_at, T0)
    wake = core.next_wake(T0, None)
    assert not core.pass_due(T0, wake) and core.pass_due(wake, wake)
    core.view = spool.QueueView(0, None, None)
    assert core.pass_due(T0, None)


def test_settlement_orders_by_queue_position_and_keeps_what_it_must():
    q = Queue([row(1), row(2)])
    core = courier()
    run_pass(core, q, answering(Response(503)), T0)
    s = settlement([], boot_id="b", now=T0, retention=True)
    assert s.entries == () and s.delete == () and s.queue_counters == {}


# --- settling and what a kill may repeat --------------------------------------------------


@pytest.mark.parametrize("policy, bound, per_poll", [(SETTLE_IN_WINDOW, 4, 1), (SETTLE_IN_WINDOW, 4, 3),
                                                     (SettlePolicy(window=2), 2, 4)])
def test_a_kill_repeats_at_most_the_policys_window(policy, bound, per_poll):
    rows = [row(i) for i in range(1, 201)]
    for kill_after in range(3, 420, 7):
        q = Queue(rows)
        t = MemoryTransport(lambda request: OK, max_in_flight=4, per_poll=per_poll)
        run_pass(courier(policy), q, t, T0, kill_after=kill_after)
        sent_before = {header(r, "X-Telemetry-Record-Id") for _, r in t.sent}
        after = answering()
        run_pass(courier(policy), q, after, T0)  # a new process on the same queue
        again = sent_before & {header(r, "X-Telemetry-Record-Id") for _, r in after.sent}
        assert len(again) <= bound, (kill_after, len(again))
        assert q.rows == {}


def test_settling_before_each_request_writes_as_the_answers_come():
    q = Queue([row(i) for i in range(1, 9)])
    t = MemoryTransport(lambda request: OK, max_in_flight=2, per_poll=1)
    run_pass(courier(delivery=dataclasses.replace(SETTINGS.delivery, max_in_flight=2)), q, t, T0)
    assert q.rows == {}
    assert max(len(s.delete) for s in q.settlements) <= 2


def test_the_answers_of_a_window_are_written_together():
    """One write per window of requests, not one per poll that brings an answer."""
    q = Queue([row(i) for i in range(1, 13)])
    t = MemoryTransport(lambda request: OK, max_in_flight=4, per_poll=1)
    run_pass(courier(), q, t, T0)
    assert q.rows == {} and [len(s.delete) for s in q.settlements] == [4, 4, 4]


class Stuck(MemoryTransport):
    """Never answers the request for `token` (a request that takes its time)."""

    def __init__(self, token: int):
        super().__init__(lambda request: OK, max_in_flight=4)
        self.token = token

    def poll(self, timeout: float) -> list:
        done = [(tok, r) for tok, r in self._open if tok != self.token]
        self._open = collections.deque((tok, r) for tok, r in self._open if tok == self.token)
        return done


def test_a_slow_request_holds_the_answered_ones_only_for_the_settle_hold():
    core = courier()
    q = Queue([row(i) for i in range(1, 9)])
    t = Stuck(token=1)
    core.start_pass(T0)
    now = T0
    while True:
        action = core.step(now, t.capacity())
        if isinstance(action, Send):
            t.submit(action.token, action.request)
        elif isinstance(action, Fetch):
            core.fetched(q.fetch(action), now)
        elif isinstance(action, Settle):
            break
        else:
            assert action is WAIT
            answered_before = now > T0
            limit = core.wait_limit(now, 0.5)
            assert limit == (pytest.approx(T0 + SETTLE_HOLD - now, abs=1e-6) if answered_before else 0.5)
            for token, response in t.poll(0):
                core.answered(token, response, T0)
            now += SETTLE_HOLD / 4
    assert now >= T0 + SETTLE_HOLD  # held while the slow one might still come
    assert sorted(action.settlement.delete) == [2, 3, 4] and core.in_flight == 1
    following = core.step(now, t.capacity())  # the next request goes while the slow one goes on
    assert isinstance(following, Send) and following.token == 5


# --- the promises, by property ------------------------------------------------------------

ANSWERS = [OK, OK, OK, Response(202), Response(400, body=b'{"message": "cpu model is invalid"}'),
           Response(500), Response(503, retry_after="5"), Response(429, retry_after="1"), Response(408),
           Response(404), Response(400, body=b'{"message": "Telemetry ID mismatch"}'),
           Response(curl_error=7, curl_message="Failed to connect"), Response(curl_error=28)]
FINAL = {Counter.DELIVERED, Counter.REJECTED, Counter.REJECTED_LOCAL, Counter.EXPIRED, Counter.SET_ASIDE,
         Counter.DROPPED}
RETRYABLE = ("HTTP 5", "HTTP 4", "curl error", "HTTP 408", "HTTP 429")


@settings(max_examples=200)
@given(
    answers=st.lists(st.sampled_from(ANSWERS), min_size=1, max_size=40),
    n=st.integers(1, 30),
    damaged=st.sets(st.integers(1, 30), max_size=4),
    passes=st.lists(st.tuples(st.floats(0, 4000), st.one_of(st.none(), st.integers(0, 80))), min_size=1,
                    max_size=8),
    policy=st.sampled_from([SETTLE_IN_WINDOW, SettlePolicy(window=1), SettlePolicy(max_batch=3, max_delay=0.0)]),
    in_flight=st.integers(1, 5),
    probe=st.sampled_from([0.0, 30.0]),
)
def test_no_record_is_lost_or_sent_again_without_a_reason(answers, n, damaged, passes, policy, in_flight, probe):
    rows = [row(i, headers=b"garbage\n" if i in damaged else None, prepared=i % 2 == 0 and i not in damaged)
            for i in range(1, n + 1)]
    q = Queue(rows)
    cycle = iter(answers * 1000)
    history: dict[str, list[str]] = collections.defaultdict(list)  # per record: sent / answer / kill

    def handler(request: Request) -> Response:
        rid = header(request, "X-Telemetry-Record-Id")
        history[rid].append("sent")
        response = next(cycle)
        history[rid].append("retry" if not 200 <= response.status <= 299 or response.curl_error else "done")
        return response

    now = T0
    core = courier(policy, delivery=dataclasses.replace(SETTINGS.delivery, max_in_flight=in_flight),
                           probe_interval=probe)
    for advance, kill in passes:
        now += advance
        t = MemoryTransport(handler, max_in_flight=in_flight, per_poll=1)
        run_pass(core, q, t, now, kill_after=kill)
        if kill is not None:  # the process dies: what it had not settled is forgotten
            for rid in history:
                history[rid].append("kill")
            core = courier(policy, delivery=dataclasses.replace(SETTINGS.delivery, max_in_flight=in_flight),
                           probe_interval=probe)

    # Nothing lost: every row is still queued or has a final fate in the journal.
    for r in rows:
        assert r.seq in q.rows or r.record_id in q.journal, r.record_id
    for s in q.settlements:
        deleted = set(s.delete)
        finals = {d.row.seq for d in s.decisions if d.counter in FINAL}
        assert deleted == finals  # a row leaves only with its final fate, journaled in the same settle
        assert len(s.entries) == len(finals)
    # Never sent again without a reason: after "done" comes no "sent" unless a kill came between.
    for rid, events in history.items():
        for a, b in zip(events, events[1:], strict=False):
            assert not (a == "done" and b == "sent"), (rid, events)
        assert events.count("sent") == events.count("done") + events.count("retry")
