"""Backoff with full jitter, Retry-After, and the collector gate."""

from __future__ import annotations

import email.utils

from hypothesis import given
from hypothesis import strategies as st

from telemetry.daemons.postd.backoff import (
    MIN_DELAY,
    Gate,
    full_jitter,
    next_attempt_at,
    parse_retry_after,
)

NOW = 1_700_000_000.0
bases = st.integers(min_value=120, max_value=300).map(float)
caps = st.integers(min_value=1, max_value=86400).map(float)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
attempts = st.integers(min_value=0, max_value=10_000)


@given(attempts, bases, caps, draws)
def test_full_jitter_stays_within_the_exponential_ceiling(n, base, cap, rand):
    d = full_jitter(n, base, cap, rand)
    ceiling = max(MIN_DELAY, min(cap, base * 2 ** min(max(n, 1) - 1, 62)))
    assert MIN_DELAY <= d <= ceiling


def test_full_jitter_starts_at_spool_process_time_and_doubles():
    assert full_jitter(1, 120, 3600, 0.999999) < 120
    assert full_jitter(1, 120, 3600, 0.5) == 60
    assert full_jitter(2, 120, 3600, 0.5) == 120
    assert full_jitter(3, 120, 3600, 0.5) == 240
    assert full_jitter(30, 120, 3600, 0.5) == 1800
    assert full_jitter(1, 120, 3600, 0.0) == MIN_DELAY


@given(st.integers(min_value=0, max_value=10**12))
def test_retry_after_seconds(n):
    assert parse_retry_after(str(n), NOW) == n
    assert parse_retry_after(f"  {n} ", NOW) == n


@given(st.integers(min_value=0, max_value=10**7))
def test_retry_after_http_date(delta):
    text = email.utils.formatdate(NOW + delta, usegmt=True)
    assert parse_retry_after(text, NOW) == delta


def test_retry_after_in_the_past_is_zero_and_garbage_is_none():
    assert parse_retry_after(email.utils.formatdate(NOW - 100, usegmt=True), NOW) == 0
    for bad in (None, "", "soon", "-5", "1.5", "Tue, 99 Foo 2024", "9" * 101):
        assert parse_retry_after(bad, NOW) is None
    assert parse_retry_after("9" * 40, NOW) == 10.0**12


@given(st.text(max_size=60))
def test_retry_after_never_raises(text):
    r = parse_retry_after(text, NOW)
    assert r is None or r >= 0


def test_first_failure_closes_the_gate_later_ones_of_the_round_do_not_extend_it():
    g = Gate().after_failure(NOW, base=120, cap=3600, rand=0.5)
    assert g.streak == 1 and g.open_at == NOW + 60 and not g.is_open(NOW)
    same_round = g.after_failure(NOW + 1, base=120, cap=3600, rand=0.99)
    assert same_round == g
    next_round = g.after_failure(g.open_at, base=120, cap=3600, rand=0.5)
    assert next_round.streak == 2 and next_round.open_at == g.open_at + 120


def test_success_reopens_a_soft_gate_but_not_a_retry_after():
    soft = Gate().after_failure(NOW, base=120, cap=3600, rand=0.5)
    assert soft.after_success() == Gate()
    hard = Gate().after_failure(NOW, base=120, cap=3600, rand=0.5, retry_after=30)
    assert hard.open_at == NOW + 30 and hard.hard
    assert hard.after_success().open_at == NOW + 30
    assert hard.after_success().streak == 0


def test_retry_after_is_capped_and_extends_a_closed_gate():
    g = Gate().after_failure(NOW, base=120, cap=600, rand=0.1)
    g2 = g.after_failure(NOW + 1, base=120, cap=600, rand=0.1, retry_after=10**9)
    assert g2.open_at == NOW + 1 + 600


def test_hold_is_a_configuration_error_wait():
    g = Gate().hold(NOW, 3600)
    assert g.open_at == NOW + 3600 and g.hard
    assert g.after_success().open_at == NOW + 3600


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=50), draws, draws)
def test_a_record_never_comes_due_before_the_gate_opens(n, streak, r1, r2):
    gate = Gate(NOW + 100, streak)
    t = next_attempt_at(n, gate, NOW, base=120, cap=3600, rand=r2)
    assert t >= gate.open_at
    if n <= streak:
        assert t == gate.open_at  # part of an outage: due with everyone else, in queue order
