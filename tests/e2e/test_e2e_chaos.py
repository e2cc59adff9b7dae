"""kill -9 of both daemons at random instants while records flow: nothing acknowledged
is lost, each acknowledged record is stored once, and the daemons never crash on their
own.  bench/chaos.py runs the same scenario with 100+ kills."""

from __future__ import annotations

from pipeline import table
from scenarios import ChaosPlan, chaos


def test_kill_9_at_random_instants_loses_nothing_acknowledged(user_install, tmp_path):
    out = chaos(user_install, tmp_path, ChaosPlan(kills=10, seed=20241))
    print("\n" + table([out.result]) + f"\n{out.result.note}")
    assert sum(out.kills.values()) == 10
    assert out.result.acked > 0
    assert out.legacy == 0
    assert not out.lost, f"{len(out.lost)} acknowledged records never reached the collector"
    assert not out.mismatched
    # A telempostd kill repeats at most the requests that were in flight or answered and
    # not yet settled: max_in_flight of them (the collector counts repeats by record id).
    assert out.collector_duplicates <= 4 * out.kills["telempostd"], out.result.note
    assert out.health.ok, out.health
