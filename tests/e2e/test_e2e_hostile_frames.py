"""Random and mutated frames on the socket (bench/chaos.py sends 10^5)."""

from __future__ import annotations

from pipeline import table
from scenarios import FramesPlan, hostile_frames

RSS_GROWTH_MAX = 50 * 2**20  # generous: a leak of one buffer per frame would be far above


def test_ten_thousand_hostile_frames(user_install, tmp_path):
    out = hostile_frames(user_install, tmp_path, FramesPlan(frames=10_000))
    print("\n" + table([out.result]) + f"\n{out.result.note}")
    assert out.alive and out.health.ok, out.health
    assert out.no_reply == 0, "every frame with bytes gets an acknowledgement line"
    assert out.mismatched == 0, out.examples
    assert out.replies.get("accepted", 0) > 0 and out.replies.get("invalid", 0) > 0
    assert out.rss_end - out.rss_after_warmup < RSS_GROWTH_MAX
    assert not out.lost, "every accepted record is decided by telempostd"
    assert not out.foreign_headers, out.foreign_headers[:5]
