"""telemprobd's queue writer (Stager), its failures, and the queue file it shares with telempostd."""

from __future__ import annotations

import sqlite3
import time

import pytest
from telemprobd_harness import Probd, c_frame, good_headers

from telemetry.daemons.probd.staging import Stager
from telemetry.daemons.runtime.throttle import LogThrottle
from telemetry.daemons.store.queue import (
    QUEUE_DB,
    QUEUE_SUBDIR,
    SCHEMA_VERSION,
    NewRecord,
    Queue,
    QueueError,
    Sender,
)

BURST = LogThrottle().burst  # telemprobd's default allowance


def rows(n: int, size: int = 100) -> list[NewRecord]:
    return [NewRecord(f"{i:032x}", time.time(), Sender(1, 1, 1), b"h" * (size - 10), b"p" * 10) for i in range(n)]


def test_measure_reads_the_spool_in_use_after_a_switch(tmp_path):
    stager = Stager(str(tmp_path / "a"), str(tmp_path / "journal"))
    try:
        stager.commit(rows(3), {}, {})
        assert stager.measure() == 300
        stager.switch_spool(str(tmp_path / "b"))
        assert stager.measure() == 0
        stager.commit(rows(1), {}, {})
        assert stager.measure() == 100
    finally:
        stager.close()


def test_measure_of_an_unusable_spool_is_unknown(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    stager = Stager(str(blocker / "spool"), str(tmp_path / "journal"))
    try:
        assert stager.measure() is None
    finally:
        stager.close()


@pytest.mark.parametrize("version", ["x", str(SCHEMA_VERSION + 1)])
def test_a_schema_version_this_program_does_not_know_is_a_queue_error(tmp_path, version):
    Queue(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / QUEUE_SUBDIR / QUEUE_DB)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.commit()
    db.close()
    for readonly in (False, True):
        with pytest.raises(QueueError, match="schema version"):
            Queue(str(tmp_path), readonly=readonly)


def test_delete_and_reschedule_are_durable_and_count(tmp_path):
    q = Queue(str(tmp_path))
    try:
        batch = rows(3)
        q.insert_many(batch)
        q.delete([batch[0].record_id], counters={("telempostd", "delivered"): 1})
        q.reschedule(batch[1].record_id, 2, 123.0, "x" * 600)
        assert [r.record_id for r in q.all()] == [r.record_id for r in batch[1:]]
        again = q.get(batch[1].record_id)
        assert (again.attempts, again.next_attempt_at, len(again.last_error)) == (2, 123.0, 500)
        assert q.counters() == {("telempostd", "delivered"): 1}
    finally:
        q.close()


def test_failing_commits_are_logged_a_burst_at_a_time(user_install, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    frame = c_frame(good_headers(), b"x" * 100)
    with Probd(user_install, f"spool_dir={blocker}/spool") as probd:
        replies = [probd.send_raw(frame) for _ in range(3 * BURST)]
        assert all(r.startswith(b"TM/1 error ") for r in replies)
    assert 1 <= probd.log().count("could not stage") <= BURST
