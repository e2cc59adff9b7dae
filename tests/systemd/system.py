"""What the tests do inside the booted machine: install the packages, configure, opt in,
read units' state from systemctl and journalctl, run the collector and read its records."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from machine import Machine

T = TypeVar("T")

CLIENT_PACKAGE = "telemetrics-client"
COLLECTOR_PACKAGE = "telemetry-collector"
ASSETS = "/mnt/telemetry-test"  # the host's directory of .debs and programs, read-only
CONFIG = "/etc/telemetrics/telemetrics.conf"
OPT_IN = "/etc/telemetrics/opt-in"
COLLECTOR_UNIT = "test-collector.service"
COLLECTOR_PORT = 8080
COLLECTOR_URL = f"http://127.0.0.1:{COLLECTOR_PORT}"
# Short enough that a test sees a daemon exit when idle, long enough that it does not exit
# between two steps of a test.
IDLE_SECONDS = 4
SERVICE_USER = "telemetry"


@dataclass
class Figures:
    lines: list[str] = field(default_factory=list)

    def add(self, what: str, value: str) -> None:
        self.lines.append(f"{what}: {value}")


def wait_for(predicate: Callable[[], T], timeout: float = 60, what: str = "the condition",
             interval: float = 0.1) -> T:
    """Poll until `predicate` gives something true (a bound for a loaded machine, never a
    measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


# --- packages ---------------------------------------------------------------------------

def installed(m: Machine, package: str) -> bool:
    r = m.run("dpkg-query", "-W", "-f=${db:Status-Status}", package)
    return r.stdout.strip() == "installed"


def ensure_installed(m: Machine) -> None:
    """Both packages installed from the .debs, as apt installs local packages (the tree
    already holds every dependency, so no mirror is needed)."""
    if installed(m, CLIENT_PACKAGE) and installed(m, COLLECTOR_PACKAGE):
        return
    # apt takes local packages from a folder it can write to, not from the read-only mount.
    m.sh(f"mkdir -p /root/debs && cp {ASSETS}/debs/*.deb /root/debs/", check=True)
    debs = m.sh("ls /root/debs/*.deb").stdout.split()
    m.run("apt-get", "install", "-y", "-q", *debs, check=True, timeout=300,
          env={"DEBIAN_FRONTEND": "noninteractive"})


# --- units --------------------------------------------------------------------------------

def show(m: Machine, unit: str, *properties: str) -> dict[str, str]:
    r = m.run("systemctl", "show", unit, "--property=" + ",".join(properties), check=True)
    values = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    return values


def prop(m: Machine, unit: str, name: str) -> str:
    return show(m, unit, name)[name]


def active_state(m: Machine, unit: str) -> str:
    return prop(m, unit, "ActiveState")


def wait_state(m: Machine, unit: str, *states: str, timeout: float = 60) -> str:
    return wait_for(lambda: (s := active_state(m, unit)) in states and s, timeout,
                    f"{unit} {' or '.join(states)}")


def main_pid(m: Machine, unit: str) -> int:
    return int(prop(m, unit, "MainPID"))


def systemctl(m: Machine, *args: str) -> None:
    m.run("systemctl", *args, check=True)


def restart(m: Machine, *units: str) -> None:
    """Restart units, clearing their start-limit count first (see opted_in_and_started); a
    unit that fails to start is reported with the end of its journal."""
    m.run("systemctl", "reset-failed", *units)
    done = m.run("systemctl", "restart", *units)
    if done.returncode != 0:
        logs = "\n".join(f"--- {unit}:\n" + m.run("journalctl", "--no-pager", "-q", "-n", "40", "-u", unit).stdout
                         for unit in units)
        raise AssertionError(f"systemctl restart {' '.join(units)} exited with {done.returncode}: "
                             f"{done.stderr.strip()}\n{logs}")


def journal(m: Machine, unit: str, since: str = "") -> str:
    """The unit's journal (messages only), from a cursor when given."""
    args = ["journalctl", "--no-pager", "-q", "-o", "cat", "-u", unit]
    if since:
        args += ["--after-cursor", since]
    return m.run(*args).stdout


def journal_cursor(m: Machine) -> str:
    r = m.run("journalctl", "--no-pager", "-q", "-n", "0", "--show-cursor")
    return r.stdout.strip().removeprefix("-- cursor: ")


# --- configuration and opt-in ---------------------------------------------------------------

def write_config(m: Machine, **settings: object) -> None:
    """/etc/telemetrics/telemetrics.conf: the collector in the container, short idle time."""
    values = {"server": f"{COLLECTOR_URL}/v2/collector", "daemon_idle_time": IDLE_SECONDS, **settings}
    text = "[settings]\n" + "".join(f"{k}={v}\n" for k, v in values.items())
    m.run("sh", "-ec", f"mkdir -p /etc/telemetrics && cat > {CONFIG}", input=text, check=True)


def opted_in_and_started(m: Machine) -> None:
    """The state an admin leaves after `telemctl opt-in` and `telemctl start`.  The tests
    start the services far more often than systemd's start limit (5 in 10 s) allows, so
    every test begins with the units' failure counts reset."""
    ensure_installed(m)
    m.run("systemctl", "reset-failed")
    write_config(m)
    if m.run("test", "-e", OPT_IN).returncode != 0:
        m.run("telemctl", "opt-in", check=True)
    m.run("telemctl", "start", check=True)
    wait_state(m, "telemprobd.socket", "active")
    wait_state(m, "telempostd.path", "active")


def stop_daemons(m: Machine) -> None:
    """Both services stopped, their triggers still armed: the cold state."""
    m.run("systemctl", "stop", "telemprobd.service", "telempostd.service", check=True)
    for unit in ("telemprobd.service", "telempostd.service"):
        wait_state(m, unit, "inactive", "failed")
    m.run("systemctl", "reset-failed", "telemprobd.service", "telempostd.service")


# --- probes ---------------------------------------------------------------------------------

# A local user who is neither root nor the telemetry user.
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def hprobe_ok(m: Machine, *args: str, as_nobody: bool = True) -> str:
    """hprobe as a local user runs it; its output once telemprobd kept the record."""
    r = m.run(*(AS_NOBODY if as_nobody else ()), "hprobe", *args)
    assert r.returncode == 0 and "Successfully sent record" in r.stdout, (r.returncode, r.stdout, r.stderr)
    return r.stdout


# --- the collector --------------------------------------------------------------------------

COLLECTOR_DATABASE = "sqlite:////var/lib/test-collector/records.db"
TOKEN_FILE = "/root/collector-token"
# A GET with the read token: the collector's read routes need a credential.
_GET = ("import sys, urllib.request\n"
        "token = open(sys.argv[2]).read().strip()\n"
        "request = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + token})\n"
        "print(urllib.request.urlopen(request, timeout=10).read().decode())\n")


def start_collector(m: Machine) -> None:
    """The packaged collector as a transient service, and a read token for the tests."""
    if active_state(m, COLLECTOR_UNIT) == "active":
        return
    m.sh("mkdir -p /var/lib/test-collector", check=True)
    if m.run("test", "-s", TOKEN_FILE).returncode != 0:
        token = m.run("telemetry-collector", "token", "add", "systemd-tests", "--scope", "read", "--database",
                      COLLECTOR_DATABASE, check=True).stdout.strip()
        m.run("sh", "-c", f"umask 077 && cat > {TOKEN_FILE}", input=token, check=True)
    m.run("systemd-run", f"--unit={COLLECTOR_UNIT}", "/usr/bin/telemetry-collector", "serve", "--listen",
          f"127.0.0.1:{COLLECTOR_PORT}", "--database", COLLECTOR_DATABASE, check=True)
    wait_for(lambda: m.run("python3", "-c", _GET, f"{COLLECTOR_URL}/api/stats", TOKEN_FILE).returncode == 0,
             what="the collector answering")


def collector_records(m: Machine, **query: object) -> list[dict]:
    params = "&".join(f"{k}={v}" for k, v in {"limit": 1000, **query}.items())
    r = m.run("python3", "-c", _GET, f"{COLLECTOR_URL}/api/records?{params}", TOKEN_FILE, check=True)
    data = json.loads(r.stdout)
    return data["records"] if isinstance(data, dict) else data
