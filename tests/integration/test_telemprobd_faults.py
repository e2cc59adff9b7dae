"""telemprobd when the disk or the queue fails: it answers the reason and keeps serving."""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import threading

import pytest
from support import checkpoint_wal, wait_until
from telemprobd_harness import Probd, c_frame, counters, good_headers, queued

FRAME = c_frame(good_headers(), b"x" * 1000)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only): a real file system that fills up."""
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs to fill up needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_answered_no_space_and_service_resumes(user_install, tiny_tmpfs):
    spool = tiny_tmpfs / "spool"
    with Probd(user_install, f"spool_dir={spool}\nspool_max_size=-1") as probd:
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        filler = tiny_tmpfs / "filler"
        free = os.statvfs(tiny_tmpfs).f_bavail * os.statvfs(tiny_tmpfs).f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 48 * 1024))
        replies = []
        for _ in range(200):
            replies.append(probd.send_raw(FRAME))
            if not replies[-1].startswith(b"TM/1 accepted"):
                break
        assert replies[-1].startswith(b"TM/1 no-space no space left"), replies[-1]
        assert probd.proc.poll() is None
        filler.unlink()
        wait_until(lambda: probd.send_raw(FRAME).startswith(b"TM/1 accepted"), what="recovery")
        accepted = sum(r.startswith(b"TM/1 accepted") for r in replies)
        assert len(queued(spool)) == accepted + 2
        wait_until(lambda: counters(spool).get("rejected:no-space", 0) >= 1, what="counter")
    assert "no space left" in probd.log()


def test_a_corrupt_queue_is_moved_aside_and_a_new_one_started(user_install):
    spool = user_install.paths.spool_dir
    os.makedirs(os.path.join(spool, "queue"), exist_ok=True)
    garbage = b"this is not an SQLite database\n" * 200
    with open(os.path.join(spool, "queue", "queue.db"), "wb") as f:
        f.write(garbage)
    with Probd(user_install) as probd:
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        assert len(queued(spool)) == 1
    aside = glob.glob(os.path.join(spool, "queue", "queue.db.corrupt-*"))
    assert len(aside) == 1 and open(aside[0], "rb").read() == garbage


def test_a_queue_corrupted_while_running_is_moved_aside_and_service_continues(user_install):
    with Probd(user_install, "rate_limit_enabled=false") as probd:
        for _ in range(20):
            assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        path = os.path.join(probd.spool_dir, "queue", "queue.db")
        # Move everything into the main file (this also makes the daemon drop its page
        # cache at its next transaction), then damage that file.
        checkpoint_wal(path)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.write(b"\xde\xad\xbe\xef" * (size // 4))
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        assert "is damaged" in probd.wait_for_log("moved aside")
        aside = [p for p in glob.glob(os.path.join(probd.spool_dir, "queue", "queue.db.corrupt-*"))
                 if not p.endswith(("-wal", "-shm"))]
        assert len(aside) == 1 and open(aside[0], "rb").read(4) == b"\xde\xad\xbe\xef"
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        assert len(queued(probd.spool_dir)) == 2
        assert probd.proc.poll() is None


def test_a_removed_spool_directory_is_recreated(user_install):
    with Probd(user_install) as probd:
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        shutil.rmtree(probd.spool_dir)
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        assert len(queued(probd.spool_dir)) == 1
    assert "disappeared" in probd.log()


def test_an_unusable_spool_directory_is_answered_error_until_fixed(user_install, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with Probd(user_install, f"spool_dir={blocker}/spool") as probd:
        reply = probd.send_raw(FRAME)
        assert reply.startswith(b"TM/1 error "), reply
        assert b"Not a directory" in reply or b"not a directory" in reply
        assert probd.proc.poll() is None
        good = tmp_path / "spool"
        probd.write_config(f"spool_dir={good}")
        probd.send_signal(1)  # SIGHUP
        probd.wait_for_log("configuration reloaded")
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        assert len(queued(good)) == 1


def test_a_permission_denied_spool_is_answered_error(user_install, tmp_path):
    if os.getuid() == 0:
        pytest.skip("root is never denied by file permissions")
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    try:
        with Probd(user_install, f"spool_dir={parent}/spool") as probd:
            reply = probd.send_raw(FRAME)
            assert reply.startswith(b"TM/1 error ") and b"ermission denied" in reply, reply
            assert probd.proc.poll() is None
    finally:
        parent.chmod(0o700)


def test_a_locked_queue_is_answered_busy_and_service_resumes(user_install):
    with Probd(user_install) as probd:
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        held = threading.Event()
        release = threading.Event()

        def hold_lock() -> None:
            db = sqlite3.connect(os.path.join(probd.spool_dir, "queue", "queue.db"), isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(20)
            db.execute("ROLLBACK")
            db.close()

        t = threading.Thread(target=hold_lock)
        t.start()
        held.wait(5)
        try:
            reply = probd.send_raw(FRAME)
        finally:
            release.set()
            t.join()
        assert reply.startswith(b"TM/1 busy ") and b"locked" in reply, reply
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        assert len(queued(probd.spool_dir)) == 2
        wait_until(lambda: counters(probd.spool_dir).get("rejected:busy") == 1, what="counter")


def test_counters_survive_restarts(user_install):
    probd = Probd(user_install)
    with probd:
        probd.send_raw(FRAME)
        probd.send_raw(b"\x05\x00\x00\x00")
    probd.start()
    with probd:
        probd.send_raw(FRAME)
    assert counters(user_install.paths.spool_dir) == {"received": 3, "staged": 2, "rejected:invalid": 1}


def test_a_truncated_queue_keeps_every_readable_acknowledged_record(user_install):
    """The queue file cut in half (a bad restore, a full disk during a copy): telemprobd
    starts again with every acknowledged record that can still be read."""
    probd = Probd(user_install, "rate_limit_enabled=false")
    with probd:
        acked = [probd.send_raw(c_frame(good_headers(event_id=f"{i:032x}"), b"x" * 900)).split()[2].decode()
                 for i in range(120)]
    path = os.path.join(user_install.paths.spool_dir, "queue", "queue.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    os.truncate(path, os.path.getsize(path) // 2)
    oracle = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    oracle.execute("PRAGMA writable_schema = ON")
    readable = set()
    for seq in range(1, len(acked) + 1):
        try:
            row = oracle.execute("SELECT record_id FROM records WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row:
            readable.add(row[0])
    oracle.close()
    assert 0 < len(readable & set(acked)) < len(acked)
    probd.start()
    with probd:
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
    kept = {r.record_id for r in queued(user_install.paths.spool_dir)}
    assert readable & set(acked) <= kept
    assert "moved aside" in probd.log()
