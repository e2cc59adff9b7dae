"""telempostd as a process: started as a user starts it, signalled, killed, restarted,
against a real HTTP collector on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess

import pytest
from http_collector import ACCEPT, HANG, slow, status
from postd_support import (
    MODULE,
    Daemon,
    counters,
    enqueue,
    new_row,
    queued_ids,
    record,
    settings_text,
)
from support import wait_until

from telemetry.daemons.store import journal as journal_mod
from telemetry.daemons.store.journal import Outcome
from telemetry.daemons.store.queue import QUEUE_DB, queue_dir
from telemetry.version import __version__


def fill(inst, n: int, start: int = 0) -> list[str]:
    return enqueue(inst.paths.spool_dir, [new_row(record(i)) for i in range(start, start + n)])


def delivered_ids(inst) -> list[str]:
    return [e.record_id for e in journal_mod.query(inst.paths.journal_dir, outcome=Outcome.DELIVERED)]


def test_help_and_version(user_install):
    r = user_install.run(MODULE, "-h")
    assert r.returncode == 0 and b"--config_file" in r.stdout
    r = user_install.run(MODULE, "-V")
    assert r.returncode == 0 and r.stdout.decode().strip() == __version__


@pytest.mark.parametrize(
    "text, words",
    [
        ("max_in_flight=lots\n", b"max_in_flight"),
        ("tls_client_cert=/nonexistent/cert.pem\n", b"tls_client_cert"),
        ("server=ftp://example.org/\n", b"http:// or https://"),
        ("tidheader=no colon here\n", b"tidheader"),
    ],
    ids=["not-a-number", "missing-cert", "bad-scheme", "bad-tidheader"],
)
def test_bad_configuration_is_one_line_and_exit_1(user_install, text, words):
    user_install.write_config(text)
    r = user_install.run(MODULE, timeout=30)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert words in err and b"Traceback" not in err
    assert len(err.splitlines()) == 1


def test_plaintext_http_to_another_machine_is_one_warning(user_install):
    """Nothing is queued, so nothing is sent to the unroutable TEST-NET address."""
    user_install.write_config("server=http://192.0.2.1:9/v2/collector\n")
    with Daemon(user_install) as d:
        wait_until(lambda: "delivering" in d.log(), what="start-up")
        assert d.stop() == 0
    warnings = [line for line in d.log().splitlines() if "unencrypted" in line]
    assert warnings == ["telempostd: WARNING: server=http://192.0.2.1:9/v2/collector: records are sent to "
                        "192.0.2.1 unencrypted (http://); use an https:// URL for a collector on another machine"]


def test_bad_config_file_option(user_install):
    r = user_install.run(MODULE, "-f", "/nonexistent/telemetrics.conf")
    assert r.returncode != 0 and b"Traceback" not in r.stderr


def test_delivers_backlog_at_start_then_wakes_on_new_records(user_install, collector):
    user_install.write_config(settings_text(collector.url))
    backlog = fill(user_install, 3)
    with Daemon(user_install) as d:
        collector.wait_for(3)
        later = fill(user_install, 2, start=3)  # touches queue.changed: inotify wakes the daemon
        collector.wait_for(5)
        assert d.stop() == 0
    # Four in flight: neighbours may reach the collector swapped; the journal keeps queue order.
    assert sorted(r.record_id for r in collector.accepted()) == sorted(backlog + later)
    assert queued_ids(user_install.paths.spool_dir) == []
    assert delivered_ids(user_install) == backlog + later
    assert counters(user_install.paths.spool_dir)["delivered"] == 5


def test_sigterm_finishes_the_post_in_flight(user_install, collector):
    user_install.write_config(settings_text(collector.url, max_in_flight=1))
    collector.plan(slow(1.0))
    ids = fill(user_install, 3)
    with Daemon(user_install) as d:
        assert collector.wait_hanging()
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    # The POST in flight completed and was recorded; nothing new was started.
    assert [r.record_id for r in collector.received] == ids[:1]
    assert delivered_ids(user_install) == ids[:1]
    assert queued_ids(user_install.paths.spool_dir) == ids[1:]


def test_sighup_reloads_the_configuration(user_install, collector):
    user_install.write_config(settings_text(collector.url, tidheader="X-Telemetry-TID:\\sWRONG"))
    ids = fill(user_install, 2)
    with Daemon(user_install) as d:
        wait_until(lambda: "check 'tidheader'" in d.log(), what="the configuration error in the log")
        assert collector.accepted() == []
        assert queued_ids(user_install.paths.spool_dir) == ids
        user_install.write_config(settings_text(collector.url))
        d.signal(signal.SIGHUP)
        collector.wait_for(2)
        assert d.stop() == 0
    assert "configuration reloaded" in d.log()
    assert delivered_ids(user_install) == ids


def test_reload_with_a_bad_file_keeps_serving(user_install, collector):
    user_install.write_config(settings_text(collector.url))
    with Daemon(user_install) as d:
        wait_until(lambda: "delivering" in d.log(), what="start-up")
        user_install.write_config("request_timeout=forever\n")
        d.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in d.log(), what="the reload error")
        ids = fill(user_install, 1)
        collector.wait_for(1)
        assert d.stop() == 0
    assert sorted(r.record_id for r in collector.accepted()) == sorted(ids)


def test_a_spool_dir_that_cannot_be_made_is_one_line(user_install, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    user_install.write_config(settings_text("http://127.0.0.1:9/v2/collector", spool_dir=f"{blocker}/spool"))
    r = user_install.run(MODULE, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f"telempostd: {blocker}/spool: Not a directory")


def test_reload_to_a_spool_dir_that_cannot_be_made_keeps_serving(user_install, collector, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    user_install.write_config(settings_text(collector.url))
    with Daemon(user_install) as d:
        wait_until(lambda: "delivering" in d.log(), what="start-up")
        user_install.write_config(settings_text(collector.url, spool_dir=f"{blocker}/spool"))
        d.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in d.log(), what="the reload error")
        ids = fill(user_install, 1)
        collector.wait_for(1)
        assert d.stop() == 0
    assert "Traceback" not in d.log()
    assert [r.record_id for r in collector.accepted()] == ids


def test_kill_9_during_a_post_delivers_afterwards_at_most_one_duplicate(user_install, collector):
    user_install.write_config(settings_text(collector.url))
    collector.answer(HANG)
    [rid] = fill(user_install, 1)
    with Daemon(user_install) as d:
        assert collector.wait_hanging()
        d.kill()
    collector.answer(ACCEPT)
    collector.release()
    assert queued_ids(user_install.paths.spool_dir) == [rid]
    with Daemon(user_install) as d:
        collector.wait_for(1)
        assert d.stop() == 0
    seen = [r.record_id for r in collector.received]
    assert seen.count(rid) <= 2
    assert [r.record_id for r in collector.accepted()] == [rid]
    assert queued_ids(user_install.paths.spool_dir) == []
    assert delivered_ids(user_install) == [rid]


def test_retry_after_in_real_time(user_install, collector):
    user_install.write_config(settings_text(collector.url))
    collector.plan(status(429, retry_after="1"))
    [rid] = fill(user_install, 1)
    with Daemon(user_install) as d:
        collector.wait_for(1)
        assert d.stop() == 0
    assert [(r.answered, r.record_id) for r in collector.received] == [(429, rid), (201, rid)]
    assert counters(user_install.paths.spool_dir)["retried"] == 1


def test_damaged_queue_database_is_moved_aside(user_install, collector):
    user_install.write_config(settings_text(collector.url))
    spool = queue_dir(user_install.paths.spool_dir)
    os.makedirs(spool, exist_ok=True)
    with open(os.path.join(spool, QUEUE_DB), "wb") as f:
        f.write(b"this is not an SQLite database, it was damaged on disk" * 100)
    with Daemon(user_install) as d:
        wait_until(lambda: "delivering" in d.log(), what="start-up")
        ids = fill(user_install, 2)
        collector.wait_for(2)
        assert d.stop() == 0
    assert "damaged" in d.log() and "moved aside" in d.log()
    aside = [n for n in os.listdir(spool) if n.startswith(QUEUE_DB + ".corrupt-")]
    assert aside
    assert sorted(r.record_id for r in collector.accepted()) == sorted(ids)


def test_damaged_journal_is_moved_aside(user_install, collector):
    user_install.write_config(settings_text(collector.url))
    jd = user_install.paths.journal_dir
    os.makedirs(jd, exist_ok=True)
    with open(os.path.join(jd, journal_mod.JOURNAL_DB), "wb") as f:
        f.write(b"\x00garbage" * 1000)
    ids = fill(user_install, 1)
    with Daemon(user_install) as d:
        collector.wait_for(1)
        assert d.stop() == 0
    assert "journal" in d.log() and "moved aside" in d.log()
    assert delivered_ids(user_install) == ids


def test_idle_exit_only_when_started_by_systemd(user_install, collector):
    # daemon_idle_time, the setting; the hidden --idle-exit-after below only goes under 1 s.
    user_install.write_config(settings_text(collector.url) + "daemon_idle_time=1\n")
    ids = fill(user_install, 1)
    with Daemon(user_install, env={"INVOCATION_ID": "0123456789abcdef"}) as d:
        assert d.wait(timeout=60) == 0  # (its log went to journald, as under systemd)
    assert [r.record_id for r in collector.accepted()] == ids
    # Not started by systemd, nothing would start it again: it keeps running.
    with Daemon(user_install, "--idle-exit-after", "0.5") as d:
        with pytest.raises(subprocess.TimeoutExpired):
            d.proc.wait(timeout=2)
        assert d.stop() == 0


def test_no_idle_exit_while_records_wait(user_install):
    user_install.write_config(settings_text("http://127.0.0.1:9/v2/collector"))
    fill(user_install, 1)
    with Daemon(user_install, "--idle-exit-after", "0.5", env={"INVOCATION_ID": "0123456789abcdef"}) as d:
        wait_until(lambda: counters(user_install.paths.spool_dir).get("retried"), what="the failed attempt")
        with pytest.raises(subprocess.TimeoutExpired):
            d.proc.wait(timeout=2)
        assert d.stop() == 0
    assert len(queued_ids(user_install.paths.spool_dir)) == 1


def test_journal_is_readable_while_the_daemon_writes(user_install, collector):
    user_install.write_config(settings_text(collector.url))
    with Daemon(user_install) as d:
        ids = fill(user_install, 30)

        def read_all():
            got = [e.record_id for e in journal_mod.query(user_install.paths.journal_dir)]
            return got if len(got) == 30 else None

        seen = wait_until(read_all, interval=0.001, what="30 journal entries")
        assert d.stop() == 0
    assert sorted(seen) == sorted(ids)  # answers to requests in flight together come in any order
    db = sqlite3.connect(os.path.join(user_install.paths.journal_dir, journal_mod.JOURNAL_DB))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_tells_systemd_it_is_ready(user_install, collector, short_dir):
    user_install.write_config(settings_text(collector.url))
    path = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(30)
        with Daemon(user_install, env={"NOTIFY_SOCKET": path}) as d:
            assert s.recv(4096) == b"READY=1"
            fill(user_install, 1)
            assert s.recv(4096).startswith(b"STATUS=")
            assert d.stop() == 0
            messages = []
            s.settimeout(5)
            with contextlib.suppress(TimeoutError):
                while b"STOPPING=1" not in messages:
                    messages.append(s.recv(4096))
    assert b"STOPPING=1" in messages


def test_pings_the_watchdog_systemd_asks_for_while_idle_and_in_a_pass(user_install, short_dir):
    # The collector is down: records wait for their retry, and the daemon sleeps between pings.
    user_install.write_config(settings_text("http://127.0.0.1:9/v2/collector"))
    fill(user_install, 3)
    path = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(10)
        with Daemon(user_install, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}) as d:
            pings = 0
            while pings < 5:
                pings += s.recv(4096) == b"WATCHDOG=1"
            assert d.stop() == 0
    assert counters(user_install.paths.spool_dir).get("retried")
    assert "Traceback" not in d.log()


def test_sleeps_through_a_far_expiry(user_install):
    # record_expiry at its maximum: the expiry arithmetic and the sleep stay in range.
    user_install.write_config(settings_text("http://127.0.0.1:9/v2/collector", record_expiry=153722867280912930))
    fill(user_install, 1)
    with Daemon(user_install) as d:
        wait_until(lambda: counters(user_install.paths.spool_dir).get("retried"), what="the failed attempt")
        with pytest.raises(subprocess.TimeoutExpired):
            d.proc.wait(timeout=1)
        assert d.stop() == 0
    assert "Traceback" not in d.log()


def test_started_by_hand_its_files_are_not_for_other_users(user_install, collector):
    """A shell's umask 022 would make queue.db 0644: telempostd adds 027 to what it inherits."""
    import stat
    import sys

    from telemetry.daemons.store import delivery

    user_install.write_config(settings_text(collector.url))
    spool, journal = user_install.paths.spool_dir, user_install.paths.journal_dir
    assert not os.path.exists(spool)  # telempostd makes it all
    proc = subprocess.Popen([sys.executable, "-m", MODULE], env=user_install.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0o022))
    try:
        wait_until(lambda: os.path.exists(delivery.path(spool)), 30, "the first pass")
        files = [os.path.join(d, n) for top in (spool, journal) for d, dirs, names in os.walk(top)
                 for n in names + dirs]
        assert any(f.endswith(QUEUE_DB) for f in files) and any(f.endswith("journal.db") for f in files)
        for f in files:
            assert stat.S_IMODE(os.stat(f).st_mode) & 0o007 == 0, (f, oct(os.stat(f).st_mode))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
