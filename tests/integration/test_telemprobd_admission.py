"""telemprobd's admission control: opt-in, rate limits (both strategies, per uid, persisted), quota."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from support import wait_until
from telemprobd_harness import Probd, c_frame, counters, good_headers, queued

from telemetry.daemons.store.queue import Queue

FRAME = c_frame(good_headers(), b"x" * 1000)
LIMIT_3 = "record_burst_limit=3\nrecord_window_length=1\nrate_limit_uid_share=100\n"


def statuses(replies: list[bytes]) -> list[str]:
    return [r.split()[1].decode() for r in replies]


def test_not_opted_in_is_refused_and_nothing_is_staged(user_install):
    with Probd(user_install, opt_in=False) as probd:
        reply = probd.send_raw(FRAME)
        assert reply.startswith(b"TM/1 not-opted-in "), reply
        assert queued(probd.spool_dir) == []
        user_install.opt_in()  # takes effect without a restart
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        user_install.opt_out()
        assert probd.send_raw(FRAME).startswith(b"TM/1 not-opted-in")
        wait_until(lambda: counters(probd.spool_dir).get("rejected:not-opted-in") == 2, what="counter")
        assert len(queued(probd.spool_dir)) == 1


def test_record_limit_with_strategy_drop_refuses_the_excess(user_install):
    with Probd(user_install, LIMIT_3 + "rate_limit_strategy=drop") as probd:
        replies = [probd.send_raw(FRAME) for _ in range(5)]
        assert statuses(replies) == ["accepted"] * 3 + ["rate-limited"] * 2
        assert b"over the limit of 3 records per 1 min" in replies[3]
        assert len(queued(probd.spool_dir)) == 3
        wait_until(lambda: counters(probd.spool_dir).get("rejected:rate-limited") == 2, what="counter")


def test_record_limit_with_strategy_spool_defers_the_excess(user_install):
    with Probd(user_install, LIMIT_3 + "rate_limit_strategy=spool") as probd:
        before = time.time()
        replies = [probd.send_raw(FRAME) for _ in range(5)]
        assert statuses(replies) == ["accepted"] * 3 + ["deferred"] * 2
        rows = {r.record_id: r for r in queued(probd.spool_dir)}
        deferred = [rows[r.split()[2].decode()] for r in replies[3:]]
        for row in deferred:
            assert before + 55 < row.deferred_until < before + 70
        assert all(rows[r.split()[2].decode()].deferred_until == 0 for r in replies[:3])
        wait_until(lambda: counters(probd.spool_dir).get("deferred") == 2, what="deferred counter")
        assert counters(probd.spool_dir)["staged"] == 5


def test_byte_limit_counts_real_sizes(user_install):
    config = "record_burst_limit=-1\nbyte_burst_limit=4500\nbyte_window_length=1\nrate_limit_uid_share=100\n" \
             "rate_limit_strategy=drop"
    with Probd(user_install, config) as probd:
        # Each record is about 1.43 KB: three fit in 4500 bytes, the fourth does not.
        assert statuses([probd.send_raw(FRAME) for _ in range(4)]) == ["accepted"] * 3 + ["rate-limited"]
        assert probd.send_raw(c_frame(good_headers(), b"")).startswith(b"TM/1 rate-limited")


def test_rate_limit_enabled_false_turns_limits_off(user_install):
    with Probd(user_install, LIMIT_3 + "rate_limit_enabled=false\nrate_limit_strategy=drop") as probd:
        assert statuses([probd.send_raw(FRAME) for _ in range(6)]) == ["accepted"] * 6


def test_limits_survive_a_restart(user_install):
    probd = Probd(user_install, LIMIT_3 + "rate_limit_strategy=drop")
    with probd:
        assert statuses([probd.send_raw(FRAME) for _ in range(2)]) == ["accepted"] * 2
    probd.start()
    with probd:
        assert statuses([probd.send_raw(FRAME) for _ in range(2)]) == ["accepted", "rate-limited"]


SEND_AS = textwrap.dedent("""
    import os, socket, sys
    os.setgid(65534); os.setuid(65534)
    frame = sys.stdin.buffer.read()
    out = []
    for _ in range(int(sys.argv[2])):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sys.argv[1]); s.sendall(frame); s.shutdown(socket.SHUT_WR)
        out.append(s.recv(512).split()[1].decode()); s.close()
    print(" ".join(out))
""")


def test_one_uid_cannot_exhaust_the_window_for_others(user_install):
    if os.getuid() != 0:
        pytest.skip("sending as a second uid needs root (setuid to nobody)")
    config = "record_burst_limit=4\nrecord_window_length=1\nrate_limit_uid_share=50\nrate_limit_strategy=drop"
    with Probd(user_install, config) as probd:
        os.chmod(probd.socket_dir, 0o711)
        assert statuses([probd.send_raw(FRAME) for _ in range(4)]) == ["accepted"] * 2 + ["rate-limited"] * 2
        other = subprocess.run([sys.executable, "-c", SEND_AS, probd.socket_path, "3"], input=FRAME,
                               capture_output=True, timeout=30)
        assert other.returncode == 0, other.stderr.decode()
        assert other.stdout.decode().split() == ["accepted", "accepted", "rate-limited"]
        uids = sorted(r.sender.uid for r in queued(probd.spool_dir))
    assert uids == [0, 0, 65534, 65534]


def test_spool_quota_refuses_with_no_space_and_journals_the_refusal(user_install):
    # 3 KiB holds two records of about 1.43 KB.
    with Probd(user_install, "spool_max_size=3\nrate_limit_uid_share=100") as probd:
        replies = [probd.send_raw(FRAME) for _ in range(3)]
        assert statuses(replies) == ["accepted", "accepted", "no-space"]
        assert b"spool full" in replies[2]
        wait_until(lambda: counters(probd.spool_dir).get("rejected:no-space") == 1, what="counter")

        from telemetry.daemons.store.journal import query

        entries = wait_until(lambda: query(user_install.paths.journal_dir), what="journal entry")
        assert entries[0].outcome.value == "dropped" and "spool full" in entries[0].detail
        assert entries[0].classification == "org.example/probd/test"

        # Delivery (telempostd) frees space: new records fit again.
        q = Queue(probd.spool_dir)
        q.delete([r.record_id for r in q.all()])
        q.close()
        time.sleep(0.3)
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")


@pytest.mark.skipif(os.getuid() != 0, reason="sending for another user needs root")
def test_one_user_fills_at_most_their_share_of_the_spool(user_install):
    """rate_limit_uid_share (50 %) of spool_max_size per sending uid: while the collector is
    away one user cannot fill the spool and leave everyone else with no-space."""
    from telemetry.client import Client, Credentials

    def send(uid: int | None) -> str:
        c = Client(user_install.paths, config_file=None)
        ack = c.send_frame(FRAME) if uid is None else c.send_frame(FRAME, on_behalf_of=Credentials(os.getpid(), uid, uid))
        return ack.status.value if ack.kept else str(ack)

    # 6 KiB: each uid's half holds two records of about 1.43 KB.
    with Probd(user_install, "spool_max_size=6") as probd:
        flood = [send(None) for _ in range(4)]
        assert flood[:2] == ["accepted", "accepted"]
        assert flood[2] == flood[3], flood
        assert re.fullmatch(r"no-space: spool share full: uid 0 has 28\d\d bytes queued; one user may fill 50% of "
                            r"the spool \(3072 bytes\)", flood[2]), flood
        assert [send(4242), send(4242)] == ["accepted", "accepted"]  # the others still have room
        assert send(4243).startswith("no-space: spool full")  # the whole spool is the limit after that
        # Delivery (telempostd) frees the flooder's rows: its share has room again.
        q = Queue(probd.spool_dir)
        q.delete([r.record_id for r in q.all() if r.sender.uid == 0])
        q.close()
        time.sleep(0.3)
        assert send(None) == "accepted"
        wait_until(lambda: counters(probd.spool_dir).get("rejected:no-space") == 3, what="counter")


@pytest.mark.skipif(os.getuid() != 0, reason="sending for another user needs root")
def test_with_spool_a_user_within_their_share_is_not_held_behind_a_flood(user_install):
    from telemetry.client import Client, Credentials

    def send(uid: int | None) -> str:
        c = Client(user_install.paths, config_file=None)
        ack = c.send_frame(FRAME) if uid is None else c.send_frame(FRAME, on_behalf_of=Credentials(os.getpid(), uid, uid))
        return ack.status.value

    config = "record_burst_limit=4\nrecord_window_length=1\nrate_limit_uid_share=50\nrate_limit_strategy=spool\n"
    with Probd(user_install, config) as probd:
        assert [send(None) for _ in range(4)] == ["accepted", "accepted", "deferred", "deferred"]
        assert [send(4242), send(4242), send(4242)] == ["accepted", "accepted", "deferred"]
        rows = {r.sender.uid: r for r in queued(probd.spool_dir) if r.deferred_until == 0}
        assert set(rows) == {0, 4242}


def test_quota_minus_one_means_no_cap(user_install):
    with Probd(user_install, "spool_max_size=-1") as probd:
        assert statuses([probd.send_raw(FRAME) for _ in range(5)]) == ["accepted"] * 5
