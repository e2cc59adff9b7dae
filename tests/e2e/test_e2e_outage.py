"""The collector away for a long stretch while records keep coming."""

from __future__ import annotations

from pipeline import table
from scenarios import OutagePlan, outage


def test_outage_keeps_cap_and_expiry_then_delivers_the_rest_in_order(user_install, tmp_path):
    out = outage(user_install, tmp_path, OutagePlan())
    print("\n" + table([out.result]) + f"\n{out.result.note}")
    assert out.refused_no_space > 0, "the outage was meant to reach the spool cap"
    assert out.max_queued_bytes <= out.cap_bytes
    assert len(out.expired) > 0
    assert not out.lost, f"{len(out.lost)} acknowledged, unexpired records not delivered"
    assert out.out_of_order == 0
    assert out.health.ok, out.health
