"""telemprobd's pure parts: the verdict per frame, machine-id stamping, failure reasons, ids."""

from __future__ import annotations

import errno
import sqlite3
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry.ack import AckStatus
from telemetry.daemons.probd.admission import (
    Accept,
    Admission,
    Context,
    Refuse,
    fits_spool,
    spool_limit_bytes,
)
from telemetry.daemons.probd.core import Counters
from telemetry.daemons.probd.ratelimit import Limit, Policy, RateLimiter
from telemetry.daemons.probd.staging import classify_failure, elapsed_since, new_record_id
from telemetry.daemons.runtime.throttle import LogThrottle
from telemetry.daemons.store.database import Fault, fault_of
from telemetry.daemons.store.queue import QueueError, Sender
from telemetry.record import parse_header_block
from telemetry.wire import Frame

VALUES = {
    H.RECORD_FORMAT_VERSION: "4", H.CLASSIFICATION: "org.example/unit/admission", H.SEVERITY: "3",
    H.MACHINE_ID: "FFFFFFFF", H.CREATION_TIMESTAMP: "1700000000", H.ARCH: "x86_64",
    H.HOST_TYPE: "no_sv_file|no_pn_file|no_pvr_file", H.BUILD: "41000", H.KERNEL_VERSION: "6.6.1",
    H.PAYLOAD_FORMAT_VERSION: "1", H.SYSTEM_NAME: "clear-linux-os", H.BOARD_NAME: "blank|blank",
    H.CPU_MODEL: "blank", H.BIOS_VERSION: "no_bv_file", H.EVENT_ID: "0123456789abcdef0123456789abcdef",
}
SENDER = Sender(uid=1000, gid=1000, pid=4242)
MID = "a" * 32


def block(**override: str) -> bytes:
    return "".join(f"{n}: {({**VALUES, **override})[n]}\n" for n in H.RECORD_HEADERS).encode()


def ctx(**kw) -> Context:
    base = dict(record_id="0" * 32, sender=SENDER, received_at=1_000_000.0, now=50.0, opted_in=True,
                machine_id=MID, queued_bytes=0)
    return Context(**{**base, **kw})


def admission(policy: Policy | None = None, quota: int = -1) -> Admission:
    return Admission(RateLimiter(policy or Policy()), quota)


printable_ascii = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=1, max_size=32)


@settings(max_examples=300)
@given(printable_ascii, st.sampled_from(["FFFFFFFF", "", "x" * 64, "0"]), st.sampled_from(["pc", "a b c"]))
def test_stamping_replaces_only_the_machine_id(machine_id, sent, host_type):
    original = block(machine_id=sent, host_type=host_type)
    verdict = admission().judge(Frame(original, b""), ctx(machine_id=machine_id))
    stamped = parse_header_block(verdict.record.headers)
    before = parse_header_block(original)
    assert stamped.machine_id == machine_id
    assert stamped.with_machine_id(sent) == before


def test_not_opted_in_comes_first():
    verdict = admission().judge(Frame(b"garbage", b""), ctx(opted_in=False))
    assert isinstance(verdict, Refuse) and verdict.status is AckStatus.NOT_OPTED_IN


def test_invalid_headers_are_refused_with_the_field():
    verdict = admission().judge(Frame(block(severity="7"), b"x"), ctx())
    assert isinstance(verdict, Refuse) and verdict.status is AckStatus.INVALID and "severity" in verdict.reason


def test_a_record_a_collector_would_refuse_is_refused_at_admission():
    """What is acknowledged must be deliverable: non-ASCII hardware values pass the frame
    grammar but not the collector contract, so they are refused here with the reason."""
    for field, value in ((H.BOARD_NAME, "Gigabyte Z790 AORUS ÉLITE"), (H.CPU_MODEL, "Intel® Core™ i7"),
                         (H.BIOS_VERSION, "F2 béta"), (H.ARCH, "ppc64le")):
        verdict = admission().judge(Frame(block(**{field: value}), b"x"), ctx())
        assert isinstance(verdict, Refuse) and verdict.status is AckStatus.INVALID, field
        assert verdict.reason.startswith(f"a collector would refuse it: {field} "), verdict.reason


def test_accepted_record_is_stamped_and_keeps_sender_and_cfg():
    verdict = admission().judge(Frame(block(), b"payload", "/etc/t.conf"), ctx(record_id="f" * 32))
    assert isinstance(verdict, Accept) and not verdict.deferred
    r = verdict.record
    assert r.record_id == "f" * 32 and r.sender == SENDER and r.cfg_path == "/etc/t.conf"
    assert r.headers == block(machine_id=MID) and r.payload == b"payload"
    assert r.received_at == 1_000_000.0 and r.deferred_until == 0.0
    assert r.size == len(r.headers) + len(b"payload")


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**5),
       st.integers(min_value=-1, max_value=10**6))
def test_quota_rule(queued, size, limit):
    assert fits_spool(queued, size, limit) == (limit < 0 or queued + size <= limit)


def test_spool_max_size_is_in_kib():
    assert spool_limit_bytes(-1) == -1 and spool_limit_bytes(5120) == 5 * 1024 * 1024


def test_a_record_that_does_not_fit_is_refused_no_space_and_keeps_its_parsed_record():
    size = len(block(machine_id=MID)) + 1
    a = admission(quota=10_000)
    assert isinstance(a.judge(Frame(block(), b"x"), ctx(queued_bytes=10_000 - size)), Accept)
    verdict = a.judge(Frame(block(), b"x"), ctx(queued_bytes=10_000 - size + 1))
    assert isinstance(verdict, Refuse) and verdict.status is AckStatus.NO_SPACE
    assert "spool full" in verdict.reason and verdict.record.classification == VALUES[H.CLASSIFICATION]


def test_one_uid_fills_at_most_its_share_of_the_spool():
    size = len(block(machine_id=MID)) + 1
    a = admission(Policy(uid_share=25), quota=4 * size)
    assert isinstance(a.judge(Frame(block(), b"x"), ctx(queued_bytes=2 * size, uid_queued_bytes=0)), Accept)
    verdict = a.judge(Frame(block(), b"x"), ctx(queued_bytes=size, uid_queued_bytes=1))
    assert isinstance(verdict, Refuse) and verdict.status is AckStatus.NO_SPACE
    assert verdict.reason == (f"spool share full: uid {SENDER.uid} has 1 bytes queued; one user may fill 25% of "
                              f"the spool ({size} bytes)")
    no_share = admission(Policy(uid_share=100), quota=4 * size)
    assert isinstance(no_share.judge(Frame(block(), b"x"), ctx(queued_bytes=0, uid_queued_bytes=3 * size)), Accept)


def test_quota_refusal_does_not_use_rate_limit_budget():
    a = admission(Policy(records=Limit(1, 60.0)), quota=0)
    assert a.judge(Frame(block(), b"x"), ctx()).status is AckStatus.NO_SPACE
    a.spool_max_bytes = -1
    assert isinstance(a.judge(Frame(block(), b"x"), ctx()), Accept)


def test_rate_limit_drop_and_spool():
    drop = admission(Policy(records=Limit(1, 60.0)))
    assert isinstance(drop.judge(Frame(block(), b"x"), ctx()), Accept)
    refused = drop.judge(Frame(block(), b"x"), ctx())
    assert refused.status is AckStatus.RATE_LIMITED and "1 records per 1 min" in refused.reason

    spool = admission(Policy(records=Limit(1, 60.0), spool=True))
    spool.judge(Frame(block(), b"x"), ctx())
    deferred = spool.judge(Frame(block(), b"x"), ctx(now=50.0, received_at=1_000_000.0))
    assert isinstance(deferred, Accept) and deferred.deferred
    # Counted from the slot after the window: about a minute later, on the wall clock.
    assert 1_000_000.0 + 60 <= deferred.record.deferred_until <= 1_000_000.0 + 62


def sqlite_error(code: int, message: str) -> QueueError:
    """What the queue raises for an SQLite error with this result code."""
    e = sqlite3.OperationalError(message)
    e.sqlite_errorcode = code  # type: ignore[attr-defined]
    return QueueError(f"/x/queue.db: {message}", fault_of(e))


def test_failures_become_the_reason_senders_are_told():
    full = classify_failure(sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full"))
    assert full.status is AckStatus.NO_SPACE and not full.retry
    locked = classify_failure(sqlite_error(sqlite3.SQLITE_BUSY, "database is locked"))
    assert locked.status is AckStatus.BUSY and locked.retry
    assert classify_failure(OSError(errno.ENOSPC, "No space left on device")).status is AckStatus.NO_SPACE
    denied = classify_failure(PermissionError(errno.EACCES, "Permission denied"))
    assert denied.status is AckStatus.ERROR and "Permission denied" in denied.detail
    assert classify_failure(QueueError("/x/queue.db: database or disk is full", Fault.FULL)).status is AckStatus.NO_SPACE
    assert classify_failure(sqlite_error(sqlite3.SQLITE_NOTADB, "file is not a database")).status is AckStatus.ERROR
    readonly = classify_failure(sqlite_error(sqlite3.SQLITE_READONLY, "attempt to write a readonly database"))
    assert readonly.status is AckStatus.ERROR and "cannot write the queue database" in readonly.detail
    odd = classify_failure(ValueError("boom"))
    assert odd.status is AckStatus.ERROR and "ValueError" in odd.detail


def test_record_ids_are_event_id_shaped_unique_and_time_ordered():
    ids = [new_record_id(1_700_000_000.0 + i / 1000) for i in range(2000)]
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)
    assert len(set(ids)) == len(ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def test_limiter_state_age_uses_the_right_clock():
    saved = {"boot_id": "b1", "mono": 100.0, "wall": 5000.0}
    assert elapsed_since(saved, boot_id="b1", mono=130.0, wall=4000.0) == 30.0  # wall clock went back
    assert elapsed_since(saved, boot_id="b2", mono=5.0, wall=5600.0) == 600.0  # rebooted
    assert elapsed_since(saved, boot_id="b2", mono=5.0, wall=4000.0) == 0.0
    assert elapsed_since({"boot_id": "b1"}, boot_id="b1", mono=1.0, wall=1.0) == 0.0


def test_log_throttle_reports_what_it_held_back():
    t = LogThrottle(burst=3, interval=10.0)
    assert [t.allow(0.0) for _ in range(5)] == [True, True, True, False, False]
    assert t.allow(10.0) and t.take_suppressed() == 2 and t.take_suppressed() == 0


def test_counters_status_and_flush_bookkeeping():
    c = Counters()
    c.add("received", 3)
    c.add("staged", 2)
    c.add("rejected:invalid")
    assert c.status() == "received=3 staged=2 deferred=0 rejected:invalid=1"
    taken = c.take()
    assert taken == {"received": 3, "staged": 2, "rejected:invalid": 1} and not c.unflushed
    c.give_back(taken)
    assert c.take() == taken
