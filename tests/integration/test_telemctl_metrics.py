"""`telemctl metrics`: the daemons' counters in Prometheus' text format, read back with
prometheus-client's parser; the node-exporter textfile, written by telemctl and by the
daemons themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
from support import METADATA, wait_until

from telemetry.daemons.ctl.metrics import metric_name
from telemetry.daemons.store import delivery
from telemetry.daemons.store.queue import NewRecord, Queue, Sender
from telemetry.record import create_record

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client is not installed")
CTL = "telemetry.daemons.ctl.main"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


def queue_three(inst) -> None:
    rows = []
    for i in range(3):
        rec = create_record("org.example/metrics/test", 1, f"p{i}\n", metadata=METADATA)
        rows.append(NewRecord(record_id=uuid.uuid4().hex, received_at=time.time(),
                              sender=Sender(os.getuid(), os.getgid(), os.getpid()),
                              headers=rec.header_block(), payload=rec.payload))
    q = Queue(inst.paths.spool_dir)
    q.insert_many(rows, {("telemprobd", "received"): 5, ("telemprobd", "staged"): 3,
                         ("telemprobd", "rejected:invalid"): 2, ("telempostd", "set-aside"): 1})
    q.close()


def test_metric_names():
    assert metric_name("telemprobd", "rejected:rate-limited") == ("telemprobd_rejected", {"reason": "rate-limited"})
    assert metric_name("telempostd", "config-error") == ("telempostd_config_error", {})


def test_metrics_print_the_counters_and_the_queue(user_install):
    queue_three(user_install)
    done = user_install.run(CTL, "metrics")
    assert done.returncode == 0, done.stderr
    s = samples(done.stdout.decode())
    assert s[("telemprobd_received_total", ())] == 5
    assert s[("telemprobd_staged_total", ())] == 3
    assert s[("telemprobd_rejected_total", (("reason", "invalid"),))] == 2
    assert s[("telemprobd_rejected_total", (("reason", "rate-limited"),))] == 0  # shown while zero
    assert s[("telempostd_set_aside_total", ())] == 1
    assert s[("telempostd_delivered_total", ())] == 0
    assert s[("telemetry_queue_records", ())] == 3 and s[("telemetry_queue_staged_records", ())] == 3
    assert s[("telemetry_opted_in", ())] == 0
    assert ("telempostd_last_success_timestamp_seconds", ()) not in s  # nothing delivered yet
    # What telempostd last learnt: when a record was last taken, when delivery last failed.
    delivery.write(user_install.paths.spool_dir, delivery.DeliveryState(
        1, 1_700_000_100.0, 1_700_000_000.0, delivery.LastError(1_700_000_050.0, "HTTP 503", 503)))
    s = samples(user_install.run(CTL, "metrics").stdout.decode())
    assert s[("telempostd_last_success_timestamp_seconds", ())] == 1_700_000_000.0
    assert s[("telempostd_last_error_timestamp_seconds", ())] == 1_700_000_050.0


def test_textfile_from_telemctl(user_install):
    queue_three(user_install)
    target = user_install.root / "textfile" / "telemetrics.prom"
    target.parent.mkdir()
    done = user_install.run(CTL, "metrics", "--textfile", str(target))
    assert done.returncode == 0 and done.stdout == b"", done.stderr
    assert samples(target.read_text())[("telemprobd_received_total", ())] == 5
    assert os.listdir(target.parent) == ["telemetrics.prom"]  # the temporary file was renamed over it
    missing = user_install.run(CTL, "metrics", "--textfile")
    assert missing.returncode == 1 and b"metrics_textfile" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    unwritable = user_install.run(CTL, "metrics", "--textfile", str(user_install.root / "no" / "such.prom"))
    assert unwritable.returncode == 1 and b"cannot write" in unwritable.stderr and b"Traceback" not in unwritable.stderr
    user_install.write_config(f"metrics_textfile={user_install.root}/configured.prom\n")
    assert user_install.run(CTL, "metrics", "--textfile").returncode == 0
    assert ("telemetry_queue_records", ()) in samples((user_install.root / "configured.prom").read_text())


def test_the_daemons_write_the_textfile(user_install):
    """With metrics_textfile set, telemprobd rewrites it from its housekeeping."""
    target = user_install.root / "daemon.prom"
    user_install.write_config(f"metrics_textfile={target}\n")
    user_install.opt_in()
    with open(user_install.root / "probd.log", "wb") as log:
        probd = user_install.popen("telemetry.daemons.probd.main", stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(target.exists, what="the textfile written by telemprobd")
        s = samples(target.read_text())
        assert ("telemprobd_received_total", ()) in s and s[("telemetry_opted_in", ())] == 1
    finally:
        probd.send_signal(signal.SIGTERM)
        probd.wait(30)
