"""telemprobd → queue → telempostd → collector, all real processes."""

from __future__ import annotations

import time

from postd_support import Daemon
from support import wait_until
from telemprobd_harness import Probd, c_frame, good_headers

from telemetry.daemons.store import journal as journal_mod
from telemetry.daemons.store.journal import Outcome


def frame(n: int) -> bytes:
    return c_frame(good_headers(event_id=f"{n:032x}", classification=f"org.example/pipeline/r{n}"),
                   f"payload {n}\n".encode() + b"x" * 600)


def outcomes(inst) -> list[tuple[str, Outcome]]:
    return [(e.classification, e.outcome) for e in journal_mod.query(inst.paths.journal_dir)]


def test_records_flow_from_probe_to_collector(user_install, collector):
    with Probd(user_install, f"server={collector.url}\n") as probd:
        before = [probd.send_raw(frame(i)) for i in range(3)]  # queued while telempostd is not running
        assert all(r.startswith(b"TM/1 accepted") for r in before)
        with Daemon(user_install) as postd:
            collector.wait_for(3)
            after = [probd.send_raw(frame(i)) for i in range(3, 6)]  # telemprobd's commit wakes telempostd
            assert all(r.startswith(b"TM/1 accepted") for r in after)
            collector.wait_for(6)
            assert postd.stop() == 0
    got = collector.accepted()
    assert sorted(r.header("Classification") for r in got) == [f"org.example/pipeline/r{i}" for i in range(6)]
    assert {r.header("Machine-Id") for r in got} != {"FFFFFFFF"}  # telemprobd put the machine id in
    ids = sorted(r.record_id for r in got)
    assert ids == sorted(reply.split()[2].decode() for reply in before + after)
    assert [o for _, o in outcomes(user_install)] == [Outcome.DELIVERED] * 6


def test_spool_cap_drops_new_records_and_delivery_makes_room(user_install, collector):
    # One sender here: its share of the spool is the whole spool.
    with Probd(user_install, f"server={collector.url}\nspool_max_size=3\nrate_limit_uid_share=100\n") as probd:
        replies = [probd.send_raw(frame(i)) for i in range(3)]
        assert [r.split()[1] for r in replies] == [b"accepted", b"accepted", b"no-space"]
        wait_until(lambda: outcomes(user_install), what="the refusal's journal entry")
        with Daemon(user_install) as postd:
            collector.wait_for(2)
            wait_until(lambda: len(outcomes(user_install)) == 3, what="journal entries")
            # Delivered records left the queue: there is room again, once telemprobd measures
            # the queue anew (it does when a record seems not to fit, at most every 0.25 s).
            time.sleep(0.5)
            assert probd.send_raw(frame(3)).split()[1] == b"accepted"
            collector.wait_for(3)
            assert postd.stop() == 0
    journal = outcomes(user_install)
    assert ("org.example/pipeline/r2", Outcome.DROPPED) in journal
    assert sorted(c for c, o in journal if o is Outcome.DELIVERED) == [
        "org.example/pipeline/r0", "org.example/pipeline/r1", "org.example/pipeline/r3"]
