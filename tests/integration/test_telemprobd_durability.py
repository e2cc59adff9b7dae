"""telemprobd's durability classes with the real daemon: what the acknowledgement says, and
that what it calls on-disk survives a power cut (a file system on a loop device whose
image is copied as the disk holds it, without the page cache, while the daemon runs)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from support import wait_until
from telemprobd_harness import Probd, c_frame, counters, good_headers, rows

from telemetry.ack import AckStatus, Durability, decode_ack
from telemetry.daemons.store.queue import Queue


def send(probd: Probd, severity: int, payload: bytes = b"x" * 200):
    ack = decode_ack(probd.send_raw(c_frame(good_headers(severity=str(severity)), payload)))
    assert ack.status is AckStatus.ACCEPTED, ack
    return ack


def test_severe_records_are_synced_before_the_ack_and_the_rest_within_sync_interval(user_install):
    with Probd(user_install, "sync_interval=1\nsync_severity=3") as probd:
        assert [send(probd, s).durability for s in (1, 2, 3, 4, 1)] == [
            Durability.IN_WAL, Durability.IN_WAL, Durability.ON_DISK, Durability.ON_DISK, Durability.IN_WAL]
        assert len(rows(probd)) == 5


def test_sync_interval_zero_syncs_before_every_ack(user_install):
    with Probd(user_install, "sync_interval=0") as probd:
        assert {send(probd, s).durability for s in (1, 2, 3)} == {Durability.ON_DISK}


def test_sync_severity_five_syncs_no_record_before_its_ack(user_install):
    with Probd(user_install, "sync_interval=60\nsync_severity=5") as probd:
        assert send(probd, 4).durability is Durability.IN_WAL


@pytest.mark.parametrize("key, value", [("sync_interval", "-1"), ("sync_severity", "0"), ("sync_severity", "6")])
def test_out_of_range_durability_settings_are_refused_in_one_line(user_install, key, value):
    probd = Probd(user_install, f"{key}={value}", start=False)
    probd.start(wait=False)
    assert probd.proc.wait(timeout=30) != 0
    wait_until(lambda: key in probd.log(), what="the error line")
    assert len([line for line in probd.log().splitlines() if key in line]) == 1, probd.log()


def test_a_record_a_collector_would_refuse_is_refused_with_the_reason(user_install):
    """Non-ASCII hardware values pass the frame's grammar; the collector refuses them, so
    telemprobd does, in its reply, instead of acknowledging what can never be sent."""
    with Probd(user_install) as probd:
        reply = probd.send_raw(c_frame(good_headers(board_name="Gigabyte AORUS ÉLITE|1.0"), b"x"))
        assert reply.startswith(b"TM/1 invalid a collector would refuse it: board_name "), reply
        assert b"must be printable ASCII" in reply
        reply = probd.send_raw(c_frame(good_headers(cpu_model="Intel\u00ae Core\u2122 i7"), b"x"))
        assert reply.startswith(b"TM/1 invalid a collector would refuse it: cpu_model "), reply
        assert send(probd, 2).kept  # and it keeps serving
        assert len(rows(probd)) == 1
        wait_until(lambda: counters(probd.spool_dir).get("rejected:invalid") == 2, what="the counter")


# --- a power cut ------------------------------------------------------------------------------


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def _loop_mount(image: Path, mountpoint: Path, options: str):
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                            text=True, timeout=60).stdout.strip()
    try:
        mountpoint.mkdir(exist_ok=True)
        _run("mount", "-t", "ext4", "-o", options, device, str(mountpoint))
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=60)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=60)


@pytest.fixture
def scratch_fs(tmp_path):
    """An ext4 file system on a loop device whose journal commits only when asked (commit=
    600), so that nothing reaches its image in the seconds of the test unless synced."""
    if os.geteuid() != 0:
        pytest.skip("a power cut is simulated with a loop-mounted file system, which needs root")
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed; the power cut needs a loop-mounted ext4")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    _run("mkfs.ext4", "-q", "-F", str(image))
    try:
        with _loop_mount(image, tmp_path / "mnt", "commit=600") as mnt:
            yield image, mnt
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot loop-mount a file system here: {e.stderr.decode(errors='replace').strip()}")


def test_records_acknowledged_on_disk_survive_a_power_cut(user_install, scratch_fs, tmp_path):
    image, mnt = scratch_fs
    spool = mnt / "spool"
    probd = Probd(user_install, f"spool_dir={spool}\nsync_interval=3600\nsync_severity=3")
    acked: list[tuple[str, Durability]] = []
    with probd:
        for _ in range(6):
            for severity in (1, 2, 3):
                ack = send(probd, severity)
                acked.append((ack.record_id, ack.durability))
        trailing = [send(probd, 1) for _ in range(4)]  # after the last sync: only in the WAL
        # The power fails: the daemon dies with the machine, the disk keeps what reached it.
        probd.proc.send_signal(signal.SIGKILL)
        probd.proc.wait(timeout=30)
        cut = tmp_path / "after-the-cut.img"
        shutil.copyfile(image, cut)  # the image as the loop device received it: no page cache
    assert {d for _, d in acked} == {Durability.IN_WAL, Durability.ON_DISK}
    assert {a.durability for a in trailing} == {Durability.IN_WAL}

    with _loop_mount(cut, tmp_path / "after", "rw") as after:  # mounting replays the journal
        queue = Queue(str(after / "spool"), create=False)
        try:
            kept = {r.record_id for r in queue.all(1000)}
        finally:
            queue.close()
    synced = [rid for rid, d in acked if d is Durability.ON_DISK]
    # Every record acknowledged on-disk survives, and so does every commit before it (one
    # sync covers the whole WAL written so far).
    assert set(synced) <= kept
    assert {rid for rid, _ in acked} <= kept
    if {a.record_id for a in trailing} <= kept:
        pytest.skip("the kernel wrote the unsynced records back during the test (memory pressure on a "
                    "shared machine): this run could not show that the cut drops unsynced writes")
