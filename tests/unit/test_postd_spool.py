"""Spool policy: expiry, what happens to a row, when to wake, when to exit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from telemetry.daemons.postd.backoff import Gate
from telemetry.daemons.postd.spool import (
    Disposition,
    QueueView,
    disposition,
    expires_at,
    expiry_cutoff,
    idle_deadline,
    is_expired,
    next_wake,
    should_exit_idle,
)

NOW = 1_700_000_000.0
times = st.floats(min_value=1e9, max_value=2e9, allow_nan=False)
minutes = st.integers(min_value=0, max_value=10**6)


@given(times, times, minutes)
def test_cutoff_and_expires_at_agree_with_is_expired(received, now, expiry):
    assert is_expired(received, now, expiry) == (int(received) < expiry_cutoff(now, expiry))
    assert is_expired(received, expires_at(received, expiry), expiry)
    assert not is_expired(received, expires_at(received, expiry) - 1, expiry)


def test_expiry_counts_whole_seconds_like_the_original():
    assert not is_expired(NOW, NOW + 1200 * 60, 1200)
    assert is_expired(NOW, NOW + 1200 * 60 + 1, 1200)
    assert not is_expired(NOW, NOW + 0.9, 0)


@given(st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_disposition_order(expired, readable, acceptable, enabled):
    d = disposition(received_at=NOW - (10**6 if expired else 0), now=NOW, record_expiry_minutes=60,
                    readable=readable, acceptable=acceptable, delivery_enabled=enabled)
    if expired:
        assert d is Disposition.EXPIRE
    elif not readable:
        assert d is Disposition.SET_ASIDE
    elif not enabled:
        assert d is Disposition.KEEP_LOCAL
    elif not acceptable:
        assert d is Disposition.REJECT_LOCAL
    else:
        assert d is Disposition.SEND


def test_wake_for_the_gate_the_due_row_the_expiry_or_the_idle_exit():
    view = QueueView(rows=3, next_due=NOW, oldest_received=NOW - 60)
    closed = Gate(NOW + 500, 1)
    assert next_wake(NOW, view, closed, record_expiry_minutes=1200, delivery_enabled=True,
                     idle_deadline=None) == NOW + 500
    assert next_wake(NOW, view, closed, record_expiry_minutes=5, delivery_enabled=True,
                     idle_deadline=None) == expires_at(NOW - 60, 5)
    assert next_wake(NOW, view, Gate(), record_expiry_minutes=1200, delivery_enabled=True,
                     idle_deadline=None) == NOW
    empty = QueueView(0, None, None)
    assert next_wake(NOW, empty, Gate(), record_expiry_minutes=1200, delivery_enabled=True,
                     idle_deadline=None) is None
    assert next_wake(NOW, empty, Gate(), record_expiry_minutes=1200, delivery_enabled=True,
                     idle_deadline=NOW + 300) == NOW + 300


@given(st.booleans(), st.booleans(), st.integers(min_value=0, max_value=3), st.floats(min_value=0, max_value=1000))
def test_idle_exit_needs_systemd_recycling_and_an_empty_queue(recycling, systemd, rows, idle):
    exits = should_exit_idle(NOW + idle, last_activity=NOW, idle_after=300, recycling=recycling,
                             started_by_systemd=systemd, queued_rows=rows)
    assert exits == (recycling and systemd and rows == 0 and idle >= 300)
    deadline = idle_deadline(last_activity=NOW, idle_after=300, recycling=recycling, started_by_systemd=systemd,
                             queued_rows=rows)
    assert (deadline is not None) == (recycling and systemd and rows == 0)
