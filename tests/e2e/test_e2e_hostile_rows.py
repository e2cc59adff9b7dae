"""Queue rows telemprobd would never write, and damaged queue files: telempostd sets them
aside (or expires them), never crashes, never lets them hold up the good records, and
never lets one add a header to a request.

Rows are written straight into queue.db, as bit rot, a bad restore or a compromised
writer would leave them; SQLite accepts any type in any column.
"""

from __future__ import annotations

import sqlite3
import time
import uuid

import http_collector as hc
import pytest
from pipeline import Pipeline, journal_outcomes, make_record
from services import POSTD
from support import wait_until

from telemetry.daemons.store.queue import NewRecord, Queue, Sender

GOOD = make_record(1, 1, 100, "org.example/e2e/rows")


def add_rows(spool_dir: str, n: int) -> list[str]:
    q = Queue(spool_dir)
    try:
        ids = [uuid.uuid4().hex for _ in range(n)]
        q.insert_many([NewRecord(rid, time.time(), Sender(0, 0, 1), GOOD.header_block(), GOOD.payload)
                       for rid in ids])
        return ids
    finally:
        q.close()


def damage_one(spool_dir: str, record_id: str, assignment: str, value) -> None:
    db = sqlite3.connect(f"{spool_dir}/queue/queue.db", isolation_level=None)
    try:
        db.execute(f"UPDATE records SET {assignment} = ? WHERE record_id = ?", (value, record_id))
    finally:
        db.close()


CASES = {
    "headers as text": ("headers", GOOD.header_block().decode()),
    "headers as a huge integer": ("headers", 2**62),
    "payload as a real": ("payload", 1.5),
    "received_at as text": ("received_at", "yesterday"),
    "received_at infinite": ("received_at", float("inf")),
    "attempts as text": ("attempts", "many"),
    "next_attempt_at as text": ("next_attempt_at", "soon"),
    "size as text": ("size", "big"),
    "sender_uid as a blob": ("sender_uid", b"\xff\xfe"),
    "cfg_path invalid UTF-8": ("cfg_path", b"/\xff\xfe"),
    "last_error as a blob": ("last_error", b"\x00\xff"),
    "record_id with CR LF": ("record_id", "abc\r\nX-Injected: 1"),
    "record_id invalid UTF-8": ("record_id", b"\xff\xfe\xfd"),
    "record_id as a blob": ("record_id", b"0123456789abcdef0123456789abcdef"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_mistyped_row_is_decided_and_the_rest_delivered(user_install, case):
    column, value = CASES[case]
    with hc.Collector() as col:
        pipe = Pipeline(user_install, col.url, "rate_limit_enabled=false", postd=True)
        ids = add_rows(pipe.spool_dir, 3)
        if column == "record_id":
            db = sqlite3.connect(f"{pipe.spool_dir}/queue/queue.db", isolation_level=None)
            db.execute("UPDATE records SET record_id = CAST(? AS BLOB) WHERE record_id = ?" if isinstance(value, bytes)
                       else "UPDATE records SET record_id = ? WHERE record_id = ?", (value, ids[1]))
            db.close()
        else:
            damage_one(pipe.spool_dir, ids[1], column, value)
        with pipe:
            wait_until(lambda: {ids[0], ids[2]} <= {r.record_id for r in col.accepted()}, 30, "the good rows delivered")
            if column not in ("next_attempt_at",):  # never due: it waits for its expiry, harmlessly
                pipe.wait_drained(30)
            assert not pipe.manager.crashes(), pipe.manager.log(POSTD)[-3000:]
            assert "Traceback" not in pipe.manager.log(POSTD)
        for r in col.received:
            assert r.count("X-Injected") == 0, r.headers
            assert all("\r" not in v and "\n" not in v for _, v in r.headers)
        outcomes = journal_outcomes(pipe.journal_dir)
    assert outcomes[ids[0]] == outcomes[ids[2]] == "delivered"


def test_ten_thousand_damaged_rows(user_install, tmp_path):
    from pipeline import table
    from scenarios import RowsPlan, hostile_rows

    out = hostile_rows(user_install, tmp_path, RowsPlan(rows=10_000))
    print("\n" + table([out.result]) + f"\n{out.result.note}")
    assert not out.good_lost, f"{len(out.good_lost)} sound rows not delivered"
    assert not out.foreign_headers, out.foreign_headers[:5]
    assert out.left_unexplained == 0
    assert out.outcomes.get("set-aside", 0) > 0
    assert out.health.ok, out.health


def test_damaged_queue_files(user_install, tmp_path):
    from pipeline import table
    from scenarios import DamagePlan, damaged_queue_files

    result, runs = damaged_queue_files(user_install, tmp_path, DamagePlan())
    print("\n" + table([result]) + f"\n{result.note}")
    for d in runs:
        assert d.health.ok, (d.kind, d.health, d.postd_log[-2000:])
        assert d.new_acked > 0 and not d.new_lost, (d.kind, d.new_lost)
    by_kind = {d.kind: d for d in runs}
    for kind in ("garbage", "zeroed-header"):
        assert by_kind[kind].moved_aside, kind
    assert by_kind["garbage-wal"].old_delivered == DamagePlan().old_rows
