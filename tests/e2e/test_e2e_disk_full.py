"""The file system under the queue and the journal fills up, then frees up again."""

from __future__ import annotations

import pytest
from pipeline import table
from scenarios import DiskFullPlan, Unavailable, disk_full


def test_disk_full_refuses_clearly_corrupts_nothing_and_recovers(user_install, tmp_path):
    try:
        out = disk_full(user_install, tmp_path, DiskFullPlan())
    except Unavailable as e:
        pytest.skip(str(e))
    print("\n" + table([out.result]) + f"\n{out.result.note}")
    assert out.refused_no_space > 0
    err = out.probe.stderr.strip()
    assert out.probe.returncode != 0 and len(err.splitlines()) == 1 and "no space" in err, out.probe
    assert "Traceback" not in err
    # telempostd retries a failing queue every 5 s (QUEUE_ERROR_RETRY), woken sooner only
    # by new commits, which a full disk stops: a loop would log thousands.
    assert out.postd_queue_errors <= 10 + out.full_seconds, "telempostd spun on the full disk"
    assert out.acked_after_recovery > 0
    assert not out.lost, f"{len(out.lost)} acknowledged records lost"
    assert out.integrity == {"queue.db": "ok", "journal.db": "ok"}
    assert not out.damaged_files
    assert out.health.ok, out.health
