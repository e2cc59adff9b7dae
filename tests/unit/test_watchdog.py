"""When the daemons ping systemd's watchdog (daemons/watchdog.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.daemons.runtime.watchdog import Watchdog, interval_from


@pytest.mark.parametrize("env, interval", [
    ({}, None),
    ({"WATCHDOG_USEC": "60000000"}, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "42"}, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "43"}, None),  # another process's
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "1.5"}, None),
    ({"WATCHDOG_USEC": ""}, None),
])
def test_interval_is_half_the_timeout_systemd_gives_this_process(env, interval):
    assert interval_from(env, 42) == interval


def test_without_a_watchdog_no_ping_is_ever_due():
    w = Watchdog(None, 0.0)
    assert not w.due(1e12)
    w.pinged(5.0)
    assert not w.due(1e12)


@given(st.floats(0.001, 1e6), st.floats(0, 1e9), st.floats(0, 1e6))
def test_a_ping_is_due_at_once_then_one_interval_after_each(interval, start, later):
    w = Watchdog(interval, start)
    assert w.due(start)
    w.pinged(start + later)
    assert not w.due(start + later + interval * 0.99)
    assert w.due(start + later + interval)
