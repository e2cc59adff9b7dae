"""crashprobe beside systemd-coredump, as the package ships it (crashprobe-journal.service).

kernel.core_pattern is the host's, not the container's, so a crash inside the container
goes to whatever handler the host has; the test leaves it alone.  Instead it starts
systemd-coredump the way the kernel starts it (50-coredump.conf's arguments, the core on
stdin, the crashed process still there): the core is a real one, made with gdb's gcore of
a program compiled here and running in the container as a service of its own, and the
crash is then systemd-coredump's to record (journal entry, compressed core file) and
crashprobe's to report, through telemprobd and telempostd, to the collector.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from crash_programs import Unavailable, build
from system import (
    ASSETS,
    collector_records,
    journal,
    main_pid,
    prop,
    restart,
    systemctl,
    wait_for,
    wait_state,
)

COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"
RLIMIT_UNLIMITED = "9223372036854775808"  # what 50-coredump.conf passes for the core size limit


# Below /usr, as a distribution's program: crashprobe's privacy filters report crashes of
# other programs as "third party" without a backtrace.
INSTALLED = "/usr/libexec/test-crasher"


@pytest.fixture(scope="module")
def crasher(machine, tmp_path_factory):
    """The test program, installed in the container (from the host's assets folder)."""
    if shutil.which("gcore") is None:
        pytest.skip("gdb's gcore is not installed (Debian package gdb)")
    try:
        exe = build(tmp_path_factory.mktemp("crash"), "O0")
    except Unavailable as e:
        pytest.skip(str(e))
    target = machine.assets / "crash"
    shutil.copytree(exe.parent, target)
    target.chmod(0o755)
    machine.run("cp", "-r", f"{ASSETS}/crash", INSTALLED, check=True)
    yield f"{INSTALLED}/{exe.name}"
    machine.run("rm", "-rf", INSTALLED)


def crash_records(m) -> list[dict]:
    return [r for r in collector_records(m) if r["classification"].startswith("org.clearlinux/crash/")]


@pytest.fixture
def journal_mode(ready):
    """crashprobe-journal.service enabled and running, as an admin sets it up, and already
    waiting for entries (the crash comes while it follows the journal)."""
    m = ready
    systemctl(m, "enable", "--now", "crashprobe-journal.service")
    wait_for(lambda: ".journal" in m.sh(f"ls -l /proc/{main_pid(m, 'crashprobe-journal.service')}/fd").stdout,
             what="crashprobe following the journal")
    yield m
    ready.run("systemctl", "disable", "--now", "crashprobe-journal.service")


def test_systemd_coredump_crash_is_reported(journal_mode, crasher, tmp_path):
    m = journal_mode
    wait_state(m, "crashprobe-journal.service", "active")
    before = len(crash_records(m))
    m.run("systemctl", "reset-failed", "crasher.service")
    m.run("systemd-run", "--unit=crasher", "--property=User=nobody", crasher, "wait", check=True)
    try:
        wait_for(lambda: "ready" in m.run("journalctl", "-q", "-o", "cat", "-u", "crasher.service").stdout,
                 what="the program waiting")
        pid = main_pid(m, "crasher.service")
        uid = m.run("id", "-u", "nobody", check=True).stdout.strip()
        gid = m.run("id", "-g", "nobody", check=True).stdout.strip()
        done = subprocess.run(["gcore", "-o", str(tmp_path / "core"), str(m.host_pid(pid))], capture_output=True,
                              text=True, timeout=120)
        cores = sorted(tmp_path.glob("core*"))
        if not cores:
            pytest.skip(f"gcore could not attach to the program in the container: {done.stderr.strip()[-200:]}")
        core = cores[0].read_bytes()
        hostname = m.run("hostname", check=True).stdout.strip()
        r = m.run("/lib/systemd/systemd-coredump", str(pid), uid, gid, "11", str(int(time.time())),
                  RLIMIT_UNLIMITED, hostname, "1", input=core, timeout=120)
        assert r.returncode == 0, r.stderr
        entry = wait_for(lambda: m.run("journalctl", "-q", "-o", "export", "--output-fields=COREDUMP_UNIT,COREDUMP_FILENAME",
                                       f"MESSAGE_ID={COREDUMP_MESSAGE_ID}", f"COREDUMP_PID={pid}").stdout,
                         what="systemd-coredump's journal entry")
        assert "COREDUMP_UNIT=crasher.service" in entry and "COREDUMP_FILENAME=/var/lib/systemd/coredump/" in entry
        try:
            got = wait_for(lambda: len(crash_records(m)) > before and crash_records(m)[-1], timeout=120,
                           what="the crash record at the collector")
        except AssertionError as e:
            said = "".join(f"\n{unit} said:\n{journal(m, unit)}" for unit in (
                "crashprobe-journal.service", "telemprobd.service", "telempostd.service"))
            status = m.run("telemctl", "status").stdout
            raise AssertionError(f"{e};{said}\ntelemctl status:\n{status}") from None
    finally:
        m.run("systemctl", "stop", "crasher.service")
    payload = got["payload"]
    assert f"Process: {crasher}" in payload, payload
    assert "Signal: 11" in payload
    assert "main() - [" in payload, payload  # symbolized from the program, read in the container
    assert prop(m, "crashprobe-journal.service", "ActiveState") == "active"
    said = journal(m, "crashprobe-journal.service")
    assert "unavailable" not in said and "cannot create" not in said, said  # its own folders are writable
    # Reported once: a restart resumes after the entry it handled (given a moment to not
    # send it again).
    restart(m, "crashprobe-journal.service")
    time.sleep(2)
    m.run("systemctl", "start", "telempostd.service")
    assert len(crash_records(m)) == before + 1


def test_the_hosts_core_pattern_is_untouched(machine):
    """Installing the package in a container applied no sysctl on the host."""
    assert "crashprobe" not in open("/proc/sys/kernel/core_pattern").read()
