"""telemprobd's sync thread (probd/syncer.py) on real files: one sync at a time, its end
announced through the eventfd, the disk's refusal handed back, nothing left running."""

from __future__ import annotations

import os
import select

import pytest

from telemetry.daemons.probd.syncer import Syncer
from telemetry.daemons.store.database import SyncPlan


def wait_readable(fd: int, timeout: float = 10.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_a_sync_runs_beside_the_caller_and_says_when_it_ended(tmp_path):
    wal = tmp_path / "queue.db-wal"
    wal.write_bytes(b"frames")
    syncer = Syncer()
    try:
        assert syncer.finished() is None  # nothing started
        plan = SyncPlan((str(wal), str(tmp_path), str(tmp_path / "missing")), None)
        syncer.start(plan)
        assert syncer.running
        with pytest.raises(RuntimeError):
            syncer.start(plan)  # one at a time
        assert wait_readable(syncer.fileno())
        assert syncer.finished() == (plan, None)
        assert not syncer.running and syncer.finished() is None
        syncer.start(plan)  # the same thread takes the next one
        assert syncer.wait() == (plan, None)
    finally:
        syncer.close()


def test_a_refused_sync_hands_back_the_error():
    syncer = Syncer()
    try:
        syncer.start(SyncPlan(("/dev/null",), None))  # fsync of a character device: EINVAL
        assert wait_readable(syncer.fileno())
        _plan, error = syncer.finished()
        assert isinstance(error, OSError)
    finally:
        syncer.close()


def test_close_ends_the_thread_and_the_eventfd(tmp_path):
    syncer = Syncer()
    syncer.start(SyncPlan((str(tmp_path),), None))
    fd = syncer.fileno()
    thread = syncer._thread
    syncer.close()  # waits for the sync it runs
    assert thread is not None and not thread.is_alive()
    with pytest.raises(OSError):
        os.fstat(fd)
