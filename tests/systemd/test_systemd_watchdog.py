"""systemd's watchdog restarts a hung daemon.  The daemon is hung with SIGSTOP; a drop-in
shortens WatchdogSec (60 s in the shipped units) and TimeoutAbortSec (a stopped process
cannot act on the watchdog's SIGABRT, so systemd kills it when that runs out), so that
the test takes seconds, not minutes."""

from __future__ import annotations

import pytest
from system import (
    hprobe_ok,
    journal,
    journal_cursor,
    main_pid,
    prop,
    restart,
    systemctl,
    wait_for,
    wait_state,
    write_config,
)

DROPIN = "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=3s\n"


@pytest.fixture
def short_watchdog(ready):
    m = ready
    paths = [f"/run/systemd/system/{unit}.d/50-test-watchdog.conf" for unit in ("telemprobd.service",
                                                                             "telempostd.service")]
    for path in paths:
        m.sh(f"mkdir -p {path.rsplit('/', 1)[0]} && cat > {path}", input=DROPIN, check=True)
    systemctl(m, "daemon-reload")
    write_config(m, daemon_idle_time=600)  # no exit for recycling in the middle of the test
    yield m
    m.run("rm", "-f", *paths)
    systemctl(m, "daemon-reload")
    write_config(m)


@pytest.mark.parametrize("unit", ["telemprobd.service", "telempostd.service"])
def test_watchdog_restarts_a_hung_daemon(short_watchdog, unit):
    m = short_watchdog
    restart(m, unit)  # with the drop-in's WatchdogSec
    assert prop(m, unit, "WatchdogUSec") == "3s"
    hung = main_pid(m, unit)
    restarts = int(prop(m, unit, "NRestarts"))
    cursor = journal_cursor(m)
    systemctl(m, "kill", "--signal=SIGSTOP", "--kill-who=main", unit)
    wait_for(lambda: main_pid(m, unit) not in (0, hung), timeout=90, what=f"{unit} restarted")
    assert int(prop(m, unit, "NRestarts")) == restarts + 1
    log = journal(m, unit, cursor)
    assert "Watchdog timeout" in log, log
    wait_state(m, unit, "active")
    if unit == "telemprobd.service":
        hprobe_ok(m)  # the restarted daemon serves
