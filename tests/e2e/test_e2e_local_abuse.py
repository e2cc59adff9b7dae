"""Local abuse: a user flooding the socket cannot starve another user; symlinks planted
where the daemons and crashprobe write are refused."""

from __future__ import annotations

import pytest
from pipeline import table
from scenarios import FairnessPlan, Unavailable, fairness


def test_one_uid_flooding_cannot_starve_another(user_install, tmp_path):
    try:
        out = fairness(user_install, tmp_path, FairnessPlan())
    except Unavailable as e:
        pytest.skip(str(e))
    print("\n" + table([out.result]) + f"\n{out.result.note}")
    assert not out.child_errors, out.child_errors
    assert out.victim == {"accepted": FairnessPlan().victim}, out.victim
    assert out.flooder.get("accepted", 0) <= out.share
    assert out.flooder.get("rate-limited", 0) >= FairnessPlan().flood - out.share
    assert not out.victim_lost
    assert out.health.ok, out.health


def test_one_uid_holding_every_connection_cannot_lock_another_out(user_install):
    from scenarios import connection_hog

    try:
        out = connection_hog(user_install)
    except Unavailable as e:
        pytest.skip(str(e))
    assert not out.errors, out.errors
    assert out.held >= 8, "the hog was meant to hold connections open"
    assert out.victim == {"accepted": 5}, out.victim
    assert out.health.ok, out.health


def test_symlinks_planted_where_the_programs_write_are_refused(user_install, tmp_path):
    from scenarios import planted_symlinks

    result, planted = planted_symlinks(user_install, tmp_path)
    print(f"\n{result.note}")
    for p in planted:
        print(f"  {p.name}: {p.told}")
    assert [p.name for p in planted if not p.victim_intact] == []
    assert [(p.name, p.tracebacks) for p in planted if p.tracebacks] == []
