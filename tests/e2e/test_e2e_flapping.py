"""A collector that flaps between every kind of failure and health."""

from __future__ import annotations

from pipeline import table
from scenarios import FlapPlan, flapping


def test_flapping_collector_loses_nothing_and_does_not_spin(user_install, tmp_path):
    out = flapping(user_install, tmp_path, FlapPlan())
    print("\n" + table([out.result]) + f"\n{out.result.note}")
    assert out.result.acked > 0
    assert out.failed_requests > 0, "the collector was meant to fail some requests"
    assert not out.lost, f"{len(out.lost)} acknowledged records never stored"
    assert out.failed_requests <= out.failed_request_bound, "failures were retried in a hot loop"
    assert out.health.ok, out.health
