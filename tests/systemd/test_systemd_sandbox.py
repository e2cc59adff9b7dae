"""Every sandboxing option of the daemons' units holds while the daemons work.

For each daemon: the running process is checked from outside (its credentials,
capabilities, seccomp, umask, namespaces and mounts), then its own view of the system is
tried from inside its namespaces as its user (writes outside ReadWritePaths fail, home
folders are hidden, /dev is private, the network is its own), and the daemons keep
working (records flow to the collector with every option in force, which the other
tests show too).
"""

from __future__ import annotations

import pytest
from system import (
    SERVICE_USER,
    hprobe_ok,
    main_pid,
    opted_in_and_started,
    prop,
    restart,
    show,
    start_collector,
    wait_for,
    write_config,
)

# What each unit sets, in the terms /proc shows (the units' own lines are the source).
DAEMONS = {
    "telemprobd.service": {"rw": ("/var/spool/telemetry", "/var/lib/telemetry", "/var/log/telemetry"),
                           "private_network": True, "private_users": False},
    "telempostd.service": {"rw": ("/var/spool/telemetry", "/var/log/telemetry"),
                           "private_network": False, "private_users": True},
}


@pytest.fixture(scope="module")
def running(machine):
    """Both daemons up, started once for the module (no exit for recycling meanwhile)."""
    m = machine
    opted_in_and_started(m)
    start_collector(m)
    write_config(m, daemon_idle_time=600)
    restart(m, *DAEMONS)
    yield m
    write_config(m)
    restart(m, *DAEMONS)


def status(m, pid: int) -> dict[str, str]:
    text = m.run("cat", f"/proc/{pid}/status", check=True).stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def uid_of(m) -> int:
    return int(m.run("id", "-u", SERVICE_USER, check=True).stdout)


@pytest.mark.parametrize("unit", sorted(DAEMONS))
def test_process_credentials_capabilities_and_filters(running, unit):
    m = running
    pid = main_pid(m, unit)
    st = status(m, pid)
    uid = str(uid_of(m))
    assert st["Uid"].split() == [uid] * 4 and st["Gid"].split()[0] == uid  # User=, Group=
    assert st["NoNewPrivs"] == "1"  # NoNewPrivileges=
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):  # CapabilityBoundingSet= (empty)
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["Seccomp"] == "2"  # SystemCallFilter=, RestrictAddressFamilies=, MemoryDenyWriteExecute=, ...
    assert int(st.get("Seccomp_filters", "1")) >= 1
    assert st["Umask"] == "0077"  # UMask=


@pytest.mark.parametrize("unit", sorted(DAEMONS))
def test_namespaces(running, unit):
    m = running
    pid = main_pid(m, unit)
    ns = {kind: m.run("readlink", f"/proc/{pid}/ns/{kind}").stdout.strip() for kind in ("mnt", "net", "user", "ipc")}
    init = {kind: m.run("readlink", f"/proc/1/ns/{kind}").stdout.strip() for kind in ns}
    assert ns["mnt"] != init["mnt"]  # ProtectSystem=, PrivateTmp=, PrivateDevices=, ... need their own mounts
    assert (ns["net"] != init["net"]) == DAEMONS[unit]["private_network"]  # PrivateNetwork=
    assert (ns["user"] != init["user"]) == DAEMONS[unit]["private_users"]  # PrivateUsers=
    if DAEMONS[unit]["private_network"]:
        links = m.run("cat", f"/proc/{pid}/net/dev", check=True).stdout
        assert [line.split(":")[0].strip() for line in links.splitlines()[2:]] == ["lo"]


@pytest.mark.parametrize("unit", sorted(DAEMONS))
def test_the_daemons_view_of_the_file_system(running, unit):
    m = running
    pid = main_pid(m, unit)
    mounts = [line.split() for line in m.run("cat", f"/proc/{pid}/mountinfo", check=True).stdout.splitlines()]

    def options(path: str) -> set[str]:
        """The per-mount options of the mount `path` is on, as the daemon sees it."""
        points = [f for f in mounts if path == f[4] or path.startswith(f[4].rstrip("/") + "/")]
        return set(max(points, key=lambda f: len(f[4]))[5].split(","))

    assert "ro" in options("/usr") and "ro" in options("/etc")  # ProtectSystem=strict
    for path in DAEMONS[unit]["rw"]:  # ReadWritePaths=
        assert "rw" in options(path), path
    assert "ro" in options("/proc/sys")  # ProtectKernelTunables=
    assert "ro" in options("/sys/fs/cgroup")  # ProtectControlGroups=
    uid = str(uid_of(m))
    script = ("for p in /usr/t /etc/t /var/t /t; do touch $p 2>/dev/null && echo WROTE $p; done; "
              "for p in " + " ".join(DAEMONS[unit]["rw"]) + "; do "
              "touch $p/.sandbox-test && rm $p/.sandbox-test && echo OK $p; done; "
              "for p in /root /home /run/user; do ls $p >/dev/null 2>&1 && echo VISIBLE $p; done; "
              "echo DEV $(ls /dev)")
    out = m.run("nsenter", "-t", str(pid), "-m", f"--setuid={uid}", f"--setgid={uid}", "sh", "-c", script).stdout
    assert "WROTE" not in out, out
    assert all(f"OK {p}" in out for p in DAEMONS[unit]["rw"]), out
    assert "VISIBLE" not in out, out  # ProtectHome=yes
    devices = set(next(line for line in out.splitlines() if line.startswith("DEV ")).split()[1:])
    assert "null" in devices and not devices & {"vda", "kmsg", "mem", "sda", "tty1"}, devices  # PrivateDevices=
    if unit == "telempostd.service":  # ProtectProc=invisible
        proc = next(f for f in mounts if f[4] == "/proc" and "proc" in f)
        assert "hidepid=invisible" in " ".join(proc), proc


def test_daemons_work_with_every_option(running):
    """Records go through both sandboxed daemons, and neither logged a warning about its
    sandbox (a denied syscall or path shows up as an error in its log)."""
    m = running
    before = m.run("journalctl", "-q", "-n", "0", "--show-cursor").stdout.strip().removeprefix("-- cursor: ")
    hprobe_ok(m)
    wait_for(lambda: int(prop(m, "telempostd.service", "MainPID")) > 0, what="telempostd running")
    for unit in DAEMONS:
        bad = m.run("journalctl", "-q", "-o", "cat", "-p", "warning", "-u", unit, "--after-cursor", before).stdout
        assert not bad.strip(), f"{unit}: {bad}"
        assert show(m, unit, "Result")["Result"] == "success"


def test_reload_reads_the_configuration_again(running):
    """ExecReload= (a SIGHUP) under the daemons' own sandbox: both read the file again and
    keep running."""
    m = running
    pids = {unit: main_pid(m, unit) for unit in DAEMONS}
    cursor = m.run("journalctl", "-q", "-n", "0", "--show-cursor").stdout.strip().removeprefix("-- cursor: ")
    m.run("systemctl", "reload", *DAEMONS, check=True)
    for unit, said in (("telemprobd.service", "settings now:"), ("telempostd.service", "configuration reloaded")):
        wait_for(lambda u=unit, s=said: s in m.run("journalctl", "-q", "-o", "cat", "-u", u, "--after-cursor",
                                                   cursor).stdout, what=f"{unit} reloaded")
        assert main_pid(m, unit) == pids[unit]


def test_exposure(ready, figures):
    """systemd-analyze security of the installed units, as the container's systemd sees them."""
    m = ready
    for unit in sorted(DAEMONS):
        r = m.run("systemd-analyze", "security", "--no-pager", unit)
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()
        figures.add(f"systemd-analyze security {unit}", line.split("Overall exposure level for")[-1].strip())


def test_metrics_textfile_where_the_units_allow_it(running):
    """metrics_textfile in a folder both daemons may write (their ReadWritePaths=); elsewhere
    the sandbox refuses it, and each daemon says so once."""
    m = running
    allowed, refused = "/var/log/telemetry/telemetrics.prom", "/var/lib/node-exporter/telemetrics.prom"
    m.run("mkdir", "-p", "/var/lib/node-exporter", check=True)
    for path in (allowed, refused):
        m.run("rm", "-f", path)
        write_config(m, daemon_idle_time=600, metrics_textfile=path)
        cursor = m.run("journalctl", "-q", "-n", "0", "--show-cursor").stdout.strip().removeprefix("-- cursor: ")
        restart(m, *DAEMONS)
        hprobe_ok(m)
        if path == allowed:
            text = wait_for(lambda: m.run("cat", allowed).stdout, what="the metrics file")
            assert "telemetry" in text, text
        else:
            for unit in DAEMONS:
                wait_for(lambda u=unit, c=cursor: "metrics_textfile: cannot write" in m.run(
                    "journalctl", "-q", "-o", "cat", "-u", u, "--after-cursor", c).stdout,
                    what=f"{unit} saying it cannot write {refused}")
    write_config(m, daemon_idle_time=600)
