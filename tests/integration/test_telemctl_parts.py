"""telemctl's I/O parts on real files and processes: opt-out's purge, the systemctl calls,
the user-mode supervisor's liveness rules."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
import textwrap

import pytest

from telemetry.daemons.ctl import purge, supervise, units
from telemetry.hints import systemd_running

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


# --- purge --------------------------------------------------------------------------------------

def tree(root):
    d = root / "spool"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "queue.db").write_bytes(b"x" * 100)
    (d / "machine_id").write_text("0" * 32)
    return d


def test_purge_removes_an_owned_tree(tmp_path):
    d = tree(tmp_path)
    result = purge.remove(purge.Target(str(d), ME, MY_GROUP))
    assert result.outcome is purge.Outcome.REMOVED and result.ok
    assert not d.exists()


def test_purge_missing_is_fine(tmp_path):
    result = purge.remove(purge.Target(str(tmp_path / "nothing"), ME, MY_GROUP))
    assert result.outcome is purge.Outcome.MISSING and result.ok and not result.message
    result = purge.remove(purge.Target(str(tmp_path / "no" / "parent"), ME, MY_GROUP))
    assert result.outcome is purge.Outcome.MISSING


def test_purge_refuses_a_foreign_owner_with_the_originals_message(tmp_path):
    d = tree(tmp_path)
    result = purge.remove(purge.Target(str(d), "telemetry-nobody", MY_GROUP))
    assert result.outcome is purge.Outcome.REFUSED
    assert result.message == f'Not removing "{d}": Incorrect folder owner "{ME}"'
    assert d.exists()
    result = purge.remove(purge.Target(str(d), ME, "telemetry-nogroup"))
    assert result.message == f'Not removing "{d}": Incorrect folder group "{MY_GROUP}"'
    assert (d / "sub" / "queue.db").exists()


def test_purge_never_follows_symlinks(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("keep")
    link = tmp_path / "spool-link"
    link.symlink_to(precious)
    result = purge.remove(purge.Target(str(link), ME, None))
    assert result.outcome is purge.Outcome.REFUSED and "symbolic link" in result.message
    assert (precious / "keep").exists()
    # A symlink inside the tree is removed as a link; its target stays.
    d = tree(tmp_path)
    (d / "sub" / "escape").symlink_to(precious)
    assert purge.remove(purge.Target(str(d), ME, None)).outcome is purge.Outcome.REMOVED
    assert (precious / "keep").read_text() == "keep"


def test_system_targets_read_the_tmpfiles_conf(tmp_path):
    conf = tmp_path / "telemetrics-dirs.conf"
    conf.write_text("d /var/lib/telemetry 0755 telemetry telemetry -\nd /var/spool/telemetry 0750 telemetry telemetry -\n")
    got = purge.system_targets(str(conf))
    assert [t.path for t in got] == ["/var/lib/telemetry", "/var/spool/telemetry"]
    assert all(t.owner == "telemetry" and t.group == "telemetry" for t in got)
    with pytest.raises(purge.PurgeError, match="^Could not open file "):
        purge.system_targets(str(tmp_path / "missing.conf"))


def test_user_targets_keep_logs_and_config(user_install):
    got = {t.path for t in purge.user_targets(user_install.paths)}
    p = user_install.paths
    assert got == {p.spool_dir, p.journal_dir, p.cache_dir, p.machine_id_file}
    assert p.config_dir not in got and p.state_dir not in got


# --- systemctl --------------------------------------------------------------------------------------

@pytest.fixture
def fake_systemctl(tmp_path):
    """systemctl itself needs a running systemd and root, which tests must not touch: this
    stand-in script records its argument vector and answers like systemctl would."""
    log = tmp_path / "calls"
    script = tmp_path / "systemctl"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {log}
        case "$1 $2" in
          "start klogscanner.service") echo "notice on stdout"; exit 5;;
          "is-active telemprobd.socket") echo active; exit 0;;
          "is-active "*) echo inactive; exit 3;;
          "show telempostd.path") echo LoadState=not-found;;
          "show "*) echo LoadState=loaded;;
          "start "*) echo "harmless notice";;
        esac
        exit 0
        """))
    script.chmod(0o755)
    return units.Systemctl(binary=str(script)), log


def test_start_tries_every_trigger_unit_and_reports_failures(fake_systemctl):
    ctl, log = fake_systemctl
    said: list[str] = []
    assert units.start(ctl, "", said.append) == 1
    assert log.read_text().splitlines() == [f"start {u}" for u in units.TRIGGER_UNITS]
    # Only a non-zero status is a failure (not the original's "any stdout output").
    assert said == ["notice on stdout", "Failed to start klogscanner.service. Continuing..."]


def test_stop_disable_enable_order(fake_systemctl):
    ctl, log = fake_systemctl
    assert units.stop(ctl, print) == 0
    assert units.disable(ctl, print) == 0
    calls = log.read_text().splitlines()
    everything = units.TRIGGER_UNITS + units.SERVICE_UNITS + ("pstore-clean.service", "crashprobe-journal.service")
    assert calls == [f"stop {u}" for u in everything] + [f"disable {u}" for u in everything]
    log.write_text("")
    assert units.enable(ctl, print) == 0
    enabled = log.read_text().splitlines()
    assert "enable crashprobe-journal.service" not in enabled  # the admin's choice
    # Two journal probes that conflict: only the one started at boot is enabled.
    assert "enable journal-probe-tail.service" in enabled and "enable journal-probe.service" not in enabled


def test_is_active_and_missing_units(fake_systemctl):
    ctl, _ = fake_systemctl
    assert ctl.is_active("telemprobd.socket") == "active"
    assert ctl.is_active("telempostd.path") == "inactive"
    assert units.missing_units(ctl, ["telemprobd.socket", "telempostd.path"]) == ("telempostd.path",)


def test_no_shell_is_involved(fake_systemctl):
    ctl, log = fake_systemctl
    ctl.unit("start", "x; touch /tmp/telemctl-injected")
    assert log.read_text().splitlines() == ["start x; touch /tmp/telemctl-injected"]
    assert not os.path.exists("/tmp/telemctl-injected")


def test_a_slow_systemctl_call_says_what_it_waits_for(tmp_path):
    """The stand-in systemctl blocks until the notice is out (a FIFO it reads), so the
    test waits on the event, not on a clock."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\nread line < {fifo}\n")
    script.chmod(0o755)
    said: list[str] = []

    def say(message: str) -> None:
        said.append(message)
        with open(fifo, "w") as f:
            f.write("go\n")

    ctl = units.Systemctl(binary=str(script), say=say)
    assert ctl.unit("stop", "telempostd.service").ok
    assert said == ["waiting for 'systemctl stop telempostd.service'"]
    said.clear()
    units.Systemctl(binary="/bin/true", say=said.append).unit("stop", "x")  # quick: nothing said
    assert said == []


def test_missing_systemctl_is_an_error():
    with pytest.raises(units.SystemdError, match="is not installed"):
        units.Systemctl(binary="/nonexistent/systemctl")


def test_systemd_detection(tmp_path):
    assert not systemd_running(str(tmp_path / "absent"))
    assert systemd_running(str(tmp_path))


# --- supervisor liveness -----------------------------------------------------------------------------

def test_recycled_pid_is_not_our_daemon(user_install):
    """A pid file naming a live process that is not the daemon: inactive, never signalled."""
    sup = supervise.Supervisor(user_install.paths)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(user_install.paths.run_dir, exist_ok=True)
        with open(sup.pid_file("telemprobd"), "w") as f:
            f.write(f"{other.pid}\n")
        assert sup.status("telemprobd").state is supervise.DaemonState.FAILED
        # Written before the machine booted: the daemon did not die, the machine restarted.
        os.utime(sup.pid_file("telemprobd"), (0, 0))
        assert sup.status("telemprobd").state is supervise.DaemonState.INACTIVE
        assert sup.stop("telemprobd").outcome is supervise.StopOutcome.NOT_RUNNING
        assert other.poll() is None
        assert not os.path.exists(sup.pid_file("telemprobd"))
        assert sup.status("telemprobd").state is supervise.DaemonState.INACTIVE
    finally:
        other.kill()
        other.wait()


def test_daemon_command_line_with_our_module_counts(user_install):
    sup = supervise.Supervisor(user_install.paths)
    # A process whose command line is the daemon's: python -m <module> (it only sleeps).
    fake_root = user_install.root / "pkg"
    (fake_root / "telemetry" / "daemons" / "postd").mkdir(parents=True)
    (fake_root / "telemetry" / "__init__.py").write_text("")
    (fake_root / "telemetry" / "daemons" / "__init__.py").write_text("")
    (fake_root / "telemetry" / "daemons" / "postd" / "__init__.py").write_text("")
    (fake_root / "telemetry" / "daemons" / "postd" / "main.py").write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "telemetry.daemons.postd.main"], cwd=fake_root,
                            env={**user_install.env, "PYTHONPATH": str(fake_root)})
    try:
        os.makedirs(user_install.paths.run_dir, exist_ok=True)
        with open(sup.pid_file("telempostd"), "w") as f:
            f.write(str(proc.pid))
        st = sup.status("telempostd")
        assert st.state is supervise.DaemonState.ACTIVE and st.pid == proc.pid
        assert sup.stop("telempostd").outcome is supervise.StopOutcome.STOPPED
        proc.wait(timeout=30)  # ended (psutil may already have reaped it)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- status over a real queue ---------------------------------------------------------------------

def test_status_reads_the_queue_beside_a_writer(user_install):
    from telemetry.daemons.ctl import status as status_mod
    from telemetry.daemons.store.queue import NewRecord, Queue, Sender
    from telemetry.record import create_record, new_event_id

    spool = user_install.paths.spool_dir
    info, counters = status_mod.read_queue(spool, 5120, now=1000.0)
    assert (info.records, info.error, counters) == (0, None, {})

    queue = Queue(spool)  # the writer stays open, as a running daemon's would
    rec = create_record("org.example/status/test", 1, "x" * 100)
    rows = [NewRecord(new_event_id(), 900.0 + i, Sender(1, 1, 1), rec.header_block(), rec.payload,
                      deferred_until=2000.0 if i == 2 else 0.0) for i in range(3)]
    queue.insert_many(rows, counters={("telemprobd", "received"): 3, ("telemprobd", "staged"): 3})
    queue.reschedule(rows[0].record_id, 1, 1300.0, "connection refused")
    queue.bump({("telempostd", "retried"): 1})

    info, counters = status_mod.read_queue(spool, 1, now=1000.0)
    size = rows[0].size
    assert (info.records, info.bytes) == (3, 3 * size)
    assert (info.staged_records, info.staged_bytes) == (2, 2 * size)
    assert (info.spooled_records, info.spooled_bytes) == (1, size)
    assert info.deferred_records == 1 and info.cap_bytes == 1024
    assert info.next_retry == 1300.0  # the failed row's retry, not the staged row held behind it
    assert counters == {("telemprobd", "received"): 3, ("telemprobd", "staged"): 3, ("telempostd", "retried"): 1}
    queue.close()

    info, _ = status_mod.read_queue(spool, -1, now=1000.0)
    assert info.cap_bytes is None


def test_status_of_a_damaged_queue_says_so(user_install):
    from telemetry.daemons.ctl import status as status_mod

    os.makedirs(os.path.join(user_install.paths.spool_dir, "queue"))
    with open(os.path.join(user_install.paths.spool_dir, "queue", "queue.db"), "wb") as f:
        f.write(b"garbage" * 1000)
    info, counters = status_mod.read_queue(user_install.paths.spool_dir, 5120, now=0.0)
    assert info.error and counters == {}
    assert "cannot read" in status_mod.format_queue(info)[0]
