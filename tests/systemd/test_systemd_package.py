"""The .debs on Debian 12: what the maintainer scripts set up, the programs running with
Debian's own Python packages, their man pages and completions, one line for a missing
module, and a purge that leaves the machine as it was."""

from __future__ import annotations

import pytest
from system import (
    CLIENT_PACKAGE,
    COLLECTOR_PACKAGE,
    SERVICE_USER,
    ensure_installed,
    opted_in_and_started,
    start_collector,
)

PROGRAMS = ("hprobe", "telem-record-gen", "klogscanner", "journalprobe", "pstoreprobe", "pstoreclean", "crashprobe",
            "telemctl", "telempostd", "telemprobd")
WORK_DIRS = ("/var/lib/telemetry", "/var/spool/telemetry", "/var/log/telemetry", "/var/cache/telemetry",
             "/var/cache/telemetry/pstore")
ENABLED = ("telemprobd.socket", "telempostd.path", "hprobe.timer", "klogscanner.service", "journal-probe-tail.service",
           "pstore-probe.service", "pstore-clean.service")


@pytest.fixture
def installed(machine):
    ensure_installed(machine)
    return machine


def test_install_makes_the_user_the_folders_and_enables_the_units(installed):
    m = installed
    entry = m.run("getent", "passwd", SERVICE_USER, check=True).stdout.strip().split(":")
    assert entry[5] == "/var/lib/telemetry" and entry[6] in ("/usr/sbin/nologin", "/sbin/nologin"), entry
    assert int(entry[2]) < 1000, "a system user"
    for d in WORK_DIRS:
        owner = m.run("stat", "-c", "%U:%G %a", d, check=True).stdout.split()
        assert owner == [f"{SERVICE_USER}:{SERVICE_USER}", "750"], (d, owner)
    for unit in ENABLED:
        assert m.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled", unit
    assert m.run("systemctl", "is-enabled", "crashprobe-journal.service").stdout.strip() == "disabled"
    # journal-probe-tail is the journal probe started at boot; its alternative stays off.
    assert m.run("systemctl", "is-enabled", "journal-probe.service").stdout.strip() == "disabled"
    # Not opted in: every unit's condition keeps it from starting.
    if m.run("test", "-e", "/etc/telemetrics/opt-in").returncode != 0:
        assert m.run("systemctl", "is-active", "telemprobd.socket").stdout.strip() == "inactive"


def test_sysctl_is_left_to_the_host_in_a_container(installed):
    """kernel.core_pattern is the host's: the package installs its sysctl.d file but the
    postinst does not apply it in a container (and could not: /proc/sys is read-only)."""
    m = installed
    assert "crashprobe" in m.run("cat", "/usr/lib/sysctl.d/40-crash-probe.conf", check=True).stdout
    assert "crashprobe" not in m.run("cat", "/proc/sys/kernel/core_pattern", check=True).stdout


def test_units_verify_on_the_installed_system(installed):
    m = installed
    units = m.sh("cd /lib/systemd/system && ls telem* hprobe* klog* journal-probe* pstore-* crashprobe-*").stdout.split()
    # (no man-db in the minimal tree to look the Documentation= pages up with)
    r = m.run("systemd-analyze", "verify", "--man=no", *(f"/lib/systemd/system/{u}" for u in units),
              env={"SYSTEMD_LOG_LEVEL": "notice"})
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_program_runs_with_debians_python_packages(installed, program):
    m = installed
    r = m.run(program, "--version")
    assert (r.returncode, r.stdout.strip()) == (0, "3.0.0"), (program, r.stderr)
    assert m.run("test", "-s", f"/usr/share/man/man1/{program}.1.gz").returncode == 0
    assert m.run("test", "-s", f"/usr/share/bash-completion/completions/{program}").returncode == 0
    assert m.run("test", "-s", f"/usr/share/zsh/vendor-completions/_{program}").returncode == 0
    assert m.run("test", "-s", f"/usr/share/fish/vendor_completions.d/{program}.fish").returncode == 0


def test_collector_runs_with_debians_uvicorn(installed):
    m = installed
    assert m.run("telemetry-collector", "--version", check=True).stdout.strip() == "3.0.0"
    start_collector(m)  # it answers HTTP (uvicorn 0.17, httptools 0.1 here)


def test_bash_completion_answers(installed):
    m = installed
    r = m.run("bash", "-c", "source /usr/share/bash-completion/completions/telemctl && complete -p telemctl "
              "&& COMP_WORDS='telemctl op' COMP_CWORD=1 _TELEMCTL_COMPLETE=bash_complete telemctl")
    assert r.returncode == 0, r.stderr
    assert "plain,opt-in" in r.stdout and "plain,opt-out" in r.stdout, r.stdout


@pytest.mark.parametrize(("command", "module", "package"), [
    (("telemctl", "--user", "status"), "psutil", "python3-psutil"),
    (("timeout", "30", "telempostd"), "pycurl", "python3-pycurl"),  # imported later: checked at start
    (("hprobe", "--help"), "click", "python3-click"),
])
def test_a_missing_module_is_one_line_naming_the_package(installed, command, module, package):
    """The module really gone from the system (moved away for the test), as after a partial
    removal: one line, exit 1, no traceback."""
    m = installed
    where = m.run("python3", "-c", f"import {module}, os; print(os.path.dirname({module}.__file__) "
                  f"if {module}.__file__.endswith('__init__.py') else {module}.__file__)", check=True).stdout.strip()
    m.run("mv", where, "/root/moved-away", check=True)
    try:
        r = m.run(*command, env={"TELEMETRY_MODE": "user"})
    finally:
        m.run("mv", "/root/moved-away", where, check=True)
    assert r.returncode == 1
    program = command[-1] if command[0] == "timeout" else command[0]
    assert r.stderr.splitlines() == [f"{program}: the Python module '{module}' is missing: install the Debian "
                                     f"package {package} (or: pip install {module})"], r.stderr


def test_purge_leaves_the_machine_as_it_was(installed):
    """After opting in and running, purge: no user, no folders, no units, no files of ours;
    then installed again for the other tests."""
    m = installed
    opted_in_and_started(m)
    m.run("hprobe", check=True)
    r = m.run("apt-get", "purge", "-y", "-q", COLLECTOR_PACKAGE, CLIENT_PACKAGE, env={"DEBIAN_FRONTEND": "noninteractive"})
    assert r.returncode == 0, r.stderr
    assert m.run("getent", "passwd", SERVICE_USER).returncode == 2
    assert m.run("getent", "group", SERVICE_USER).returncode == 2
    left = m.sh("find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /var/log/journal -o -path /root -o -path /mnt \\) "
                "-prune -o \\( -name '*telem*' -o -name '*hprobe*' -o -name '*crashprobe*' -o -name 'telemetry' \\) "
                "-print; find / -xdev -nouser -print 2>/dev/null | grep -v '^/proc' || true").stdout.split()
    assert left == [], left
    units = m.run("systemctl", "list-unit-files", "--no-legend", "telem*", "hprobe*", "klogscanner*", "pstore-*",
                  "journal-probe*").stdout
    assert units.strip() == "", units
    assert m.run("test", "-e", "/run/telem-0").returncode == 1
    ensure_installed(m)
