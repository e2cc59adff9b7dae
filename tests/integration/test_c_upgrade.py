"""Switching from the C client and back, on the same spool and journal directories.

The C side is written here from the byte layouts in spec/wire-and-records.md (section 5,
the staged file) and spec/daemons.md (2.1 and 2.5, what a C telempostd does to every
entry of its spool directory; section 4, its text journal), independently of the code
under test.  The daemons run as a user starts them, delivering to the real collector.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from postd_support import Daemon, settings_text
from support import wait_until
from telemprobd_harness import Probd, c_frame, good_headers, queued

CTL = "telemetry.daemons.ctl.main"
PROBD_MODULE = "telemetry.daemons.probd.main"
NAMES = ("record_format_version", "classification", "severity", "machine_id", "creation_timestamp", "arch",
         "host_type", "build", "kernel_version", "payload_format_version", "system_name", "board_name",
         "cpu_model", "bios_version", "event_id")
RS = "\x1e"


# --- the C side, from the spec ------------------------------------------------------------

def c_staged(n: int, payload: bytes, cfg: bytes | None = None, machine_id: str = "6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b"):
    """What a C telemprobd writes for one record: [CFG:path\\n], 15 lines, payload, \\n."""
    headers = good_headers(machine_id=machine_id, event_id=f"{n:032x}", creation_timestamp=str(1700000000 + n),
                           classification=f"org.example/c/rec{n}")
    head = b"CFG:" + cfg + b"\n" if cfg is not None else b""
    return head + b"".join(f"{k}: {v}\n".encode() for k, v in headers) + payload + b"\n"


def c_parse(data: bytes) -> tuple[bytes | None, list[bytes], bytes] | None:
    """telempostd's reader (iorecord.c as the spec describes it): CFG line, 15 lines each
    starting with its header name, a body of at least one byte; None if malformed."""
    cfg = None
    rest = data
    if rest[:4] == b"CFG:":
        line, sep, rest = rest.partition(b"\n")
        if not sep:
            return None
        cfg = line[4:]
    lines = []
    for name in NAMES:
        line, sep, rest = rest.partition(b"\n")
        if not sep or not line.startswith(name.encode()):
            return None
        lines.append(line)
    if len(rest) < 1:
        return None
    return cfg, lines, rest


def c_spool_pass(spool_dir: str) -> list[bytes]:
    """A C telempostd's start-up pass and spool loop over `spool_dir`, delivery replaced by
    collecting the bodies: every entry (not recursing) is opened with O_NOFOLLOW; one that
    is not a regular file, or does not parse, is unlink()ed; a record is "sent" and unlinked."""
    sent = []
    for name in os.listdir(spool_dir):
        path = os.path.join(spool_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            fd = -1
        parsed = None
        if fd >= 0:
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
                parsed = c_parse(os.read(fd, 1 << 20)) if regular else None
            except OSError:
                parsed = None
            finally:
                os.close(fd)
        if parsed is not None:
            sent.append(parsed[2])
        try:
            os.unlink(path)
        except OSError as e:  # what unlink() says of a directory
            assert e.errno in (errno.EISDIR, errno.EPERM), e
    return sent


# --- helpers --------------------------------------------------------------------------------

def status_json(inst) -> dict:
    r = inst.run(CTL, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def probd_counters(inst) -> dict[str, int]:
    return status_json(inst)["counters"].get("telemprobd", {})


def contents(rows) -> list[tuple[bytes, bytes]]:
    return sorted((bytes(r.headers), bytes(r.payload)) for r in rows)


def write_spool(spool: Path, files: dict[str, bytes], mtime: float | None = None) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (spool / name).write_bytes(data)
        if mtime is not None:
            os.utime(spool / name, (mtime, mtime))


# --- import ---------------------------------------------------------------------------------

def test_c_staged_records_are_imported_and_delivered_once_the_bad_ones_reported(user_install, collector):
    spool = Path(user_install.paths.spool_dir)
    staged_at = time.time() - 3600
    records = {"Ab3dE9": c_staged(1, b"one"), "x0Y1z2": c_staged(2, b"two", cfg=b"/etc/t.conf"),
               "Qq7Rr8": c_staged(3, b"three\n"), "mM4nN5": c_staged(4, b"")}
    truncated = c_staged(5, b"five")[:200]
    foreign = b"my notes, not a record\n"
    write_spool(spool, {**records, "Tr5ncd": truncated, "notes.txt": foreign}, mtime=staged_at)
    os.utime(spool / "notes.txt", (staged_at - 10, staged_at - 10))

    with Probd(user_install, settings_text(collector.url)) as probd:
        log = probd.wait_for_log("C spool files in")
    assert "1 imported" not in log and "4 imported" in log and "1 not-a-record" in log and "1 unreadable" in log
    assert "notes.txt" in log and "Tr5ncd" in log
    rows = queued(spool)
    assert len(rows) == 4
    assert {r.payload for r in rows} == {b"one", b"two", b"three\n", b""}  # the C newline is framing
    assert all(abs(r.received_at - staged_at) < 1 for r in rows)  # its staging time, not now
    assert {r.cfg_path for r in rows} == {None, "/etc/t.conf"}
    by_payload = {r.payload: r for r in rows}
    assert by_payload[b"one"].headers == records["Ab3dE9"][:-len(b"one\n")]  # the original header lines
    assert sorted(os.listdir(spool)) == ["notes.txt", "queue"]
    assert (spool / "notes.txt").read_bytes() == foreign and (spool / "notes.txt").stat().st_mtime == staged_at - 10
    counters = probd_counters(user_install)
    assert counters["c-spool:imported"] == 4 and counters["c-spool:not-a-record"] == 1
    assert counters["c-spool:unreadable"] == 1
    r = user_install.run(CTL, "journal", "-o", "set-aside", "-V")
    assert "set-aside" in r.stdout.decode(), r.stdout

    with Daemon(user_install) as postd:
        got = collector.wait_for(4)
        wait_until(lambda: not queued(spool), what="the queue emptied")
        postd.stop()
    assert sorted(g.body for g in got) == [b"", b"one", b"three\n", b"two"]
    assert sorted(g.header("Event-Id") for g in got) == [f"{n:032x}" for n in (1, 2, 3, 4)]
    assert {g.header("Creation-Timestamp") for g in got} == {str(1700000000 + n) for n in (1, 2, 3, 4)}
    assert {g.header("Machine-Id") for g in got} == {"6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b"}

    # A second start imports nothing again; the foreign file is still left alone.
    with Probd(user_install, settings_text(collector.url)) as probd:
        probd.wait_for_log("C spool files in")
    assert queued(spool) == [] and (spool / "notes.txt").read_bytes() == foreign
    assert len(collector.accepted()) == 4


def test_links_fifos_directories_and_huge_files_in_the_spool_are_left_alone(user_install, tmp_path):
    spool = Path(user_install.paths.spool_dir)
    victim = tmp_path / "victim"
    victim.write_bytes(c_staged(9, b"not through a link"))
    write_spool(spool, {"Ab3dE9": c_staged(1, b"one")})
    os.symlink(victim, spool / "LnK123")
    os.mkfifo(spool / "FiFo12")
    (spool / "Dir123").mkdir()
    with open(spool / "Big123", "wb") as f:
        f.truncate(64 << 20)  # sparse: larger than any C record file
    with Probd(user_install) as probd:  # a FIFO must not block it
        log = probd.wait_for_log("C spool files in")
    assert "1 imported" in log and "4 not-a-record" in log
    assert [r.payload for r in queued(spool)] == [b"one"]
    assert sorted(os.listdir(spool)) == ["Big123", "Dir123", "FiFo12", "LnK123", "queue"]
    assert victim.read_bytes() == c_staged(9, b"not through a link")


def test_nothing_is_imported_without_opt_in(user_install):
    spool = Path(user_install.paths.spool_dir)
    write_spool(spool, {"Ab3dE9": c_staged(1, b"one")})
    with Probd(user_install, opt_in=False) as probd:
        assert "C spool" not in probd.log()
    assert (spool / "Ab3dE9").exists()


def test_kill_9_during_the_import_loses_and_duplicates_nothing(user_install):
    spool = Path(user_install.paths.spool_dir)
    files = {f"k{n:05d}": c_staged(n, f"payload {n}".encode()) for n in range(400)}
    write_spool(spool, files)
    probe = Probd(user_install, start=False)
    rng = random.Random(1234)

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", PROBD_MODULE], env=probe.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        # First in the narrowest window: rows committed, files being removed.
        proc = start()
        wait_until(lambda: len(os.listdir(spool)) < len(files) or proc.poll() is not None, interval=0.001,
                   what="the first C files removed")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(4):
            proc = start()
            time.sleep(rng.uniform(0.2, 1.2))  # somewhere in start-up or the import
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        probe.start()  # ready once its import is done
    finally:
        probe.__exit__()
    rows = queued(spool)
    expected = sorted((data[:-len(f"payload {n}\n")], f"payload {n}".encode())
                      for n, data in enumerate(files.values()))
    assert contents(rows) == expected  # each record exactly once
    assert os.listdir(spool) == ["queue"]


def test_a_file_left_by_an_interrupted_export_is_not_queued_twice(user_install, collector):
    with Probd(user_install, settings_text(collector.url)) as probd:
        probd.send_raw(c_frame(good_headers(event_id="ab" * 16), b"exported"))
    assert len(queued(user_install.paths.spool_dir)) == 1
    r = user_install.run(CTL, "export", "--c-spool", "--keep")
    assert r.returncode == 0, r.stderr
    with Probd(user_install, settings_text(collector.url)) as probd:
        log = probd.wait_for_log("C spool files in")
    assert "1 already-queued" in log
    assert len(queued(user_install.paths.spool_dir)) == 1
    assert os.listdir(user_install.paths.spool_dir) == ["queue"]


# --- living beside a C telempostd -----------------------------------------------------------------

def test_a_c_spool_pass_leaves_our_queue_and_its_side_files_alone(user_install):
    spool = user_install.paths.spool_dir
    with Probd(user_install) as probd:
        for n in range(3):
            probd.send_raw(c_frame(good_headers(event_id=f"{n:032x}"), f"queued {n}".encode()))
        before = sorted(os.listdir(os.path.join(spool, "queue")))
        assert {"queue.db", "queue.db-wal", "queue.changed"} <= set(before)
        c_spool_pass(spool)  # while telemprobd has the queue open
        assert sorted(os.listdir(os.path.join(spool, "queue"))) == before
        probd.send_raw(c_frame(good_headers(event_id="f" * 32), b"after the pass"))
    c_spool_pass(spool)
    assert {r.payload for r in queued(spool)} == {b"queued 0", b"queued 1", b"queued 2", b"after the pass"}


def test_a_queue_in_the_old_place_is_moved_into_the_subdirectory(user_install, collector):
    spool = Path(user_install.paths.spool_dir)
    with Probd(user_install, settings_text(collector.url)) as probd:
        probd.send_raw(c_frame(good_headers(event_id="1" * 32), b"queued before the upgrade"))
    for name in os.listdir(spool / "queue"):  # the layout of earlier versions
        os.rename(spool / "queue" / name, spool / name)
    os.rmdir(spool / "queue")
    assert status_json(user_install)["queue"]["records"] == 1  # read where it is
    with Probd(user_install, settings_text(collector.url)) as probd:
        probd.wait_for_log("moved the queue")
    assert sorted(os.listdir(spool)) == ["queue"]
    assert [r.payload for r in queued(spool)] == [b"queued before the upgrade"]
    with Daemon(user_install) as postd:
        (got,) = collector.wait_for(1)
        postd.stop()
    assert got.body == b"queued before the upgrade"


# --- going back -----------------------------------------------------------------------------------

def test_export_writes_files_a_c_telempostd_reads_and_empties_the_queue(user_install, tmp_path):
    with Probd(user_install) as probd:
        probd.send_raw(c_frame(good_headers(event_id="a" * 32), b"plain"))
        probd.send_raw(c_frame(good_headers(event_id="b" * 32), b"with cfg", cfg=b"/etc/t.conf"))
        probd.send_raw(c_frame(good_headers(event_id="c" * 32), b"ends in a newline\n"))
    rows = queued(user_install.paths.spool_dir)
    assert len(rows) == 3
    out = tmp_path / "c-spool"
    out.mkdir()
    r = user_install.run(CTL, "export", "--c-spool", str(out))
    assert r.returncode == 0, r.stderr
    assert b"3 records written to" in r.stdout and b"removed from the queue" in r.stdout
    assert queued(user_install.paths.spool_dir) == []
    files = sorted(out.iterdir())
    assert len(files) == 3
    parsed = {}
    for f in files:
        assert len(f.name) == 6 and f.name.isalnum()
        st = f.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
        cfg, lines, body = c_parse(f.read_bytes())
        parsed[body] = (cfg, lines, st.st_mtime)
    assert set(parsed) == {b"plain\n", b"with cfg\n", b"ends in a newline\n\n"}  # as a C telemprobd stages
    assert parsed[b"with cfg\n"][0] == b"/etc/t.conf" and parsed[b"plain\n"][0] is None
    by_body = {r.payload + b"\n": r for r in rows}
    for body, (_, lines, mtime) in parsed.items():
        assert b"\n".join(lines) + b"\n" == by_body[body].headers
        assert abs(mtime - by_body[body].received_at) < 1e-3
    assert sorted(c_spool_pass(str(out))) == sorted(parsed)  # a C telempostd delivers them all
    assert list(out.iterdir()) == []


def test_export_takes_a_queue_no_daemon_has_moved_yet(user_install, tmp_path):
    spool = Path(user_install.paths.spool_dir)
    with Probd(user_install) as probd:
        probd.send_raw(c_frame(good_headers(event_id="d" * 32), b"old layout"))
    for name in os.listdir(spool / "queue"):
        os.rename(spool / "queue" / name, spool / name)
    os.rmdir(spool / "queue")
    out = tmp_path / "c-spool"
    out.mkdir()
    r = user_install.run(CTL, "export", "--c-spool", str(out))
    assert r.returncode == 0 and b"1 record written" in r.stdout, r.stderr
    (f,) = out.iterdir()
    assert c_parse(f.read_bytes())[2] == b"old layout\n"
    assert sorted(os.listdir(spool)) == ["queue"] and queued(spool) == []


def test_export_refuses_while_a_daemon_runs_and_needs_a_format(user_install):
    r = user_install.run(CTL, "export")
    assert r.returncode == 2 and b"--c-spool" in r.stderr
    user_install.opt_in()
    assert user_install.run(CTL, "start").returncode == 0
    try:
        r = user_install.run(CTL, "export", "--c-spool")
        assert r.returncode == 1 and b"still running" in r.stderr, r.stderr
    finally:
        assert user_install.run(CTL, "stop").returncode == 0
    r = user_install.run(CTL, "export", "--c-spool", "/nonexistent/dir")
    assert r.returncode == 1 and r.stderr == b"telemctl: /nonexistent/dir: No such file or directory\n"


# --- the C journal ------------------------------------------------------------------------------

def test_the_c_journal_is_imported_once_marked_as_imported(user_install, collector):
    user_install.write_config(settings_text(collector.url))
    jdir = Path(user_install.paths.journal_dir)
    jdir.mkdir(parents=True, exist_ok=True)
    lines = [RS.join((f"{n:032x}", str(1522691281 + n), "org.clearlinux/hello/world", f"{n + 100:032x}",
                      "60c014cd-4693-40f1-b334-548cd932949b")) for n in range(3)]
    c_journal = "\n".join([*lines, "a damaged line"]) + "\n"
    (jdir / "journal").write_text(c_journal)
    logs = []
    for _ in range(2):
        with Daemon(user_install) as postd:
            wait_until(lambda postd=postd: "delivering" in postd.log(), what="start-up")
            postd.stop()
            logs.append(postd.log())
    assert "imported 3 entries of the C client's journal" in logs[0] and "lines 4 are no journal entries" in logs[0]
    assert "C client's journal" not in logs[1]  # once
    r = user_install.run(CTL, "journal", "--json")
    entries = json.loads(r.stdout)
    imported = [e for e in entries if e["outcome"] == "imported"]
    assert sorted(e["record_id"] for e in imported) == [f"{n:032x}" for n in range(3)]
    assert (jdir / "journal").read_text() == c_journal  # left for a C client put back
    r = user_install.run(CTL, "journal", "-r", f"{1:032x}")
    assert b"org.clearlinux/hello/world" in r.stdout


def test_the_import_waits_for_a_lock_the_other_daemon_holds_a_moment(user_install):
    """At start nobody is waiting for an answer yet: a queue that telempostd holds locked for
    a moment delays the import instead of leaving the files for the next start (the loop's
    commits do not wait: they are retried while it serves)."""
    import sqlite3
    import threading

    from telemetry.daemons.store.queue import Queue

    spool = Path(user_install.paths.spool_dir)
    Queue(str(spool)).close()  # the queue exists, as after an earlier run
    write_spool(spool, {"Ab3dE9": c_staged(1, b"one"), "Zz9yX8": c_staged(2, b"two")})
    db = sqlite3.connect(spool / "queue" / "queue.db", isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")  # the write lock, as a settle of telempostd holds it
    release = threading.Timer(0.5, lambda: db.execute("COMMIT"))
    release.start()
    try:
        with Probd(user_install) as probd:
            assert "stay for the next start" not in probd.log()
            assert sorted(payload for _h, payload in contents(queued(spool))) == [b"one", b"two"]
    finally:
        release.join()
        db.close()
    assert os.listdir(spool) == ["queue"]
