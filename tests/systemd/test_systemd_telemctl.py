"""telemctl in system mode drives the real units: stop, start, is-active, opt-out (which
also disables them and removes the data) and opt-in (which enables them again)."""

from __future__ import annotations

from system import (
    AS_NOBODY,
    OPT_IN,
    active_state,
    hprobe_ok,
    wait_state,
)

TRIGGERS = ("hprobe.timer", "telemprobd.socket", "telempostd.path")
SERVICES = ("telemprobd.service", "telempostd.service")
DATA = ("/var/spool/telemetry/queue/queue.db", "/var/lib/telemetry/machine_id", "/var/log/telemetry/journal.db")


def enabled(m, unit: str) -> str:
    return m.run("systemctl", "is-enabled", unit).stdout.strip()


def test_stop_and_start(ready):
    m = ready
    hprobe_ok(m)
    r = m.run("telemctl", "stop")
    assert r.returncode == 0, r.stderr
    for unit in TRIGGERS + SERVICES:
        wait_state(m, unit, "inactive")
    r = m.run("telemctl", "is-active")
    assert r.returncode == 3
    assert r.stdout.splitlines() == ["telemprobd : inactive", "telempostd : inactive"]
    # (root: system mode whatever the socket; another user's probe with the system socket
    # gone runs in user mode, as that user's own pipeline)
    r = m.run("hprobe")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "/run/telem-0" in r.stderr
    r = m.run("telemctl", "start")
    assert r.returncode == 0, r.stderr
    for unit in TRIGGERS:
        assert active_state(m, unit) == "active", unit
    r = m.run("telemctl", "is-active")
    assert (r.returncode, r.stdout.splitlines()) == (0, ["telemprobd : active", "telempostd : active"])
    hprobe_ok(m)


def test_opt_out_stops_disables_and_removes_the_data_and_opt_in_enables_again(ready):
    m = ready
    hprobe_ok(m)
    m.run("telemctl", "journal")  # the journal exists once telempostd has run
    assert m.run("test", "-e", DATA[0]).returncode == 0
    m.run("systemctl", "enable", "--now", "crashprobe-journal.service", check=True)  # an admin's choice
    r = m.run("telemctl", "opt-out")
    assert r.returncode == 0, r.stderr
    assert m.run("test", "-e", OPT_IN).returncode == 1
    for unit in TRIGGERS + SERVICES:
        assert active_state(m, unit) == "inactive", unit
    for unit in (*TRIGGERS, "crashprobe-journal.service"):
        assert enabled(m, unit) == "disabled", unit
    assert active_state(m, "crashprobe-journal.service") == "inactive"
    for path in DATA:
        assert m.run("test", "-e", path).returncode == 1, f"{path} is left after opt-out"
    r = m.run(*AS_NOBODY, "hprobe")
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)  # not opted in: nothing sent
    r = m.run("telemctl", "opt-out")
    assert r.returncode == 0 and "already" in (r.stdout + r.stderr).lower()
    r = m.run("telemctl", "opt-in")
    assert r.returncode == 0, r.stderr
    for unit in TRIGGERS:
        assert enabled(m, unit) == "enabled", unit
    assert enabled(m, "crashprobe-journal.service") == "disabled"  # left to the admin again
    m.run("telemctl", "start", check=True)
    hprobe_ok(m)
