"""telemprobd end to end: frames packed by hand per spec, our library, many senders, crashes."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time

import pytest
from support import wait_until
from telemprobd_harness import (
    Probd,
    c_frame,
    counters,
    good_headers,
    header_bytes,
    queued,
    read_reply,
)

from telemetry import create_record
from telemetry.client import Client


def test_frames_from_a_c_client_are_staged_with_identity_and_machine_id(user_install):
    with Probd(user_install) as probd:
        probd.send_and_close(c_frame(good_headers(), b"hello"))
        probd.send_and_close(c_frame(good_headers(severity="4"), b"with cfg", cfg=b"/etc/t.conf"))
        rows = wait_until(lambda: len(queued(probd.spool_dir)) == 2 and queued(probd.spool_dir), what="2 rows")
    by_payload = {r.payload: r for r in rows}
    plain, with_cfg = by_payload[b"hello"], by_payload[b"with cfg"]
    machine_id = open(user_install.paths.machine_id_file).read()
    assert len(machine_id) == 32
    expected = header_bytes(good_headers(machine_id=machine_id))
    assert plain.headers == expected
    assert plain.cfg_path is None and with_cfg.cfg_path == "/etc/t.conf"
    assert plain.sender.uid == os.getuid() and plain.sender.gid == os.getgid()
    assert plain.sender.pid == os.getpid()
    assert len(plain.record_id) == 32 and plain.record_id != with_cfg.record_id
    assert plain.size == len(expected) + len(b"hello")
    assert counters(probd.spool_dir) == {"received": 2, "staged": 2}


def test_the_spec_worked_example_frame_is_accepted(user_install):
    frame = c_frame(good_headers(classification="org.example/demo/test"), b"hello")
    assert len(frame) == 416 and frame[:8] == bytes.fromhex("a001000092010000")
    with Probd(user_install) as probd:
        reply = probd.send_raw(frame)
        assert reply.startswith(b"TM/1 accepted ") and reply.endswith(b"\n")
        record_id = reply.split()[2].decode()
        assert [r.record_id for r in queued(probd.spool_dir)] == [record_id]


def test_library_client_gets_the_record_id_it_was_queued_under(user_install):
    with Probd(user_install):
        client = Client(user_install.paths)
        ack = client.send(create_record("org.example/probd/lib", 1, "payload ✓ utf-8"))
        row = queued(user_install.paths.spool_dir)[0]
    assert ack.status.value == "accepted" and ack.record_id == row.record_id
    assert row.payload == "payload ✓ utf-8".encode()


def test_a_frame_arriving_in_pieces_is_kept(user_install):
    frame = c_frame(good_headers(), b"slow but steady")
    with Probd(user_install) as probd, probd.connect() as s:
        for i in range(0, len(frame), 100):
            s.sendall(frame[i:i + 100])
            time.sleep(0.02)
        assert read_reply(s).startswith(b"TM/1 accepted")


def test_many_concurrent_senders_all_get_acknowledged(user_install):
    per_sender, senders = 40, 8
    replies: list[bytes] = []
    lock = threading.Lock()

    def sender(n: int, probd: Probd) -> None:
        for i in range(per_sender):
            r = probd.send_raw(c_frame(good_headers(), f"sender {n} record {i}".encode()))
            with lock:
                replies.append(r)

    with Probd(user_install) as probd:
        threads = [threading.Thread(target=sender, args=(n, probd)) for n in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = queued(probd.spool_dir)
    assert all(r.startswith(b"TM/1 accepted ") for r in replies), set(replies)
    acked = {r.split()[2].decode() for r in replies}
    assert len(acked) == per_sender * senders
    assert {r.record_id for r in rows} == acked
    assert {r.payload for r in rows} == {f"sender {n} record {i}".encode()
                                          for n in range(senders) for i in range(per_sender)}


MALFORMED = {
    "short (size field below the minimum)": (struct.pack("<I", 3) + b"\0" * 8, "record size 3"),
    "truncated (closed before record_size bytes)": (c_frame(good_headers(), b"x")[:100], "closed after 100 bytes"),
    "oversized": (struct.pack("<I", 20000) + b"\0" * 64, "record size 20000"),
    "header_size larger than the frame": (c_frame(good_headers(), b"x", header_size=5000), "header_size 5000"),
    "missing header": (c_frame(good_headers()[:-1], b"x"), "expected 15 header lines"),
    "extra header": (c_frame(good_headers() + [("extra", "1")], b"x"), "expected 15 header lines"),
    "misordered headers": (c_frame([good_headers()[1], good_headers()[0]] + good_headers()[2:], b"x"),
                           "expected header 'record_format_version'"),
    "bad severity": (c_frame(good_headers(severity="9"), b"x"), "severity"),
    "bad classification": (c_frame(good_headers(classification="no-slashes"), b"x"), "classification"),
    "classification too long": (c_frame(good_headers(classification="a" * 50 + "/b/c"), b"x"), "classification"),
    "non-UTF-8 header": (c_frame(header_bytes(good_headers()).replace(b"blank", b"bl\xffnk"), b"x"), "UTF-8"),
    "NUL inside headers": (c_frame(header_bytes(good_headers()).replace(b"blank", b"bl\0nk"), b"x"), "NUL"),
    "newline injected in a value": (c_frame(good_headers(cpu_model="a\nmachine_id: 0"), b"x"), "header lines"),
    "control character in a value": (c_frame(good_headers(cpu_model="a\x1bb"), b"x"), "control character"),
    "empty event_id": (c_frame(good_headers(event_id=""), b"x"), "event_id"),
    "NUL inside payload": (c_frame(good_headers(), b"a\0b"), "NUL"),
    "non-UTF-8 payload": (c_frame(good_headers(), b"\xc3\x28"), "UTF-8"),
    "payload over 8192 bytes": (c_frame(good_headers(), b"p" * 8193), "payload"),
    "missing terminator": (c_frame(good_headers(), b"x", terminator=b""), "NUL terminator"),
    "bytes after the frame": (c_frame(good_headers(), b"x") + b"junk", "follow"),
    "relative CFG path": (c_frame(good_headers(), b"x", cfg=b"etc/t.conf"), "CFG"),
}


def test_every_malformed_frame_class_is_refused_with_a_reason(user_install):
    with Probd(user_install) as probd:
        for name, (frame, reason) in MALFORMED.items():
            reply = probd.send_raw(frame)
            assert reply.startswith(b"TM/1 invalid "), (name, reply)
            assert reason.encode() in reply, (name, reply)
        # Still serving, nothing staged from the bad ones.
        assert probd.send_raw(c_frame(good_headers(), b"fine")).startswith(b"TM/1 accepted")
        assert [r.payload for r in queued(probd.spool_dir)] == [b"fine"]
        wait_until(lambda: counters(probd.spool_dir).get("rejected:invalid") == len(MALFORMED),
                   what="rejected:invalid counter")
        assert probd.proc.poll() is None
        log = probd.log()
    assert "Traceback" not in log
    assert "refused a record from uid" in log


def test_malformed_frames_from_a_c_client_that_does_not_read_do_not_disturb(user_install):
    with Probd(user_install) as probd:
        for frame, _ in MALFORMED.values():
            try:
                probd.send_and_close(frame)
            except (BrokenPipeError, ConnectionResetError):
                pass
        assert probd.send_raw(c_frame(good_headers(), b"after")).startswith(b"TM/1 accepted")


def test_slow_and_silent_peers_are_dropped_while_others_are_served(user_install):
    with Probd(user_install, "connection_timeout=1") as probd:
        silent = probd.connect()
        slow = probd.connect()
        slow.sendall(c_frame(good_headers(), b"x")[:50])
        assert probd.send_raw(c_frame(good_headers(), b"meanwhile")).startswith(b"TM/1 accepted")
        assert read_reply(slow).startswith(b"TM/1 invalid frame not complete within 1 s (50 bytes")
        assert read_reply(silent).startswith(b"TM/1 invalid frame not complete within 1 s (nothing")
        slow.close()
        silent.close()


def test_connections_beyond_the_cap_are_told_busy(user_install):
    with Probd(user_install, "max_connections=2\nconnection_timeout=5") as probd:
        held = [probd.connect(), probd.connect()]
        time.sleep(0.2)
        reply = probd.send_raw(c_frame(good_headers(), b"x"))
        assert reply.startswith(b"TM/1 busy "), reply
        for s in held:
            s.close()
        wait_until(lambda: probd.send_raw(c_frame(good_headers(), b"y")).startswith(b"TM/1 accepted"),
                   what="a free slot")


def test_an_idle_connect_and_close_is_not_a_record(user_install):
    with Probd(user_install) as probd:
        probd.connect().close()
        assert probd.send_raw(c_frame(good_headers(), b"x")).startswith(b"TM/1 accepted")
        wait_until(lambda: counters(probd.spool_dir).get("received") == 1, what="one received")


def test_static_machine_id_override_replaces_the_header(user_install):
    path = user_install.paths.static_machine_id_file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("pinned-machine\nignored")
    with Probd(user_install) as probd:
        probd.send_raw(c_frame(good_headers(), b"x"))
        row = queued(probd.spool_dir)[0]
    assert b"\nmachine_id: pinned-machine\n" in row.headers


def test_kill_9_during_a_burst_loses_no_acknowledged_record(user_install):
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n: int, probd: Probd) -> None:
        i = 0
        while not stop.is_set():
            payload = f"burst {n}-{i} ".encode() * 20
            i += 1
            try:
                reply = probd.send_raw(c_frame(good_headers(), payload), timeout=5)
            except OSError:
                return
            if reply.startswith(b"TM/1 accepted "):
                with lock:
                    acked[reply.split()[2].decode()] = payload

    with Probd(user_install) as probd:
        threads = [threading.Thread(target=sender, args=(n, probd)) for n in range(6)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 400, timeout=30, what="400 acknowledged records")
        probd.proc.send_signal(signal.SIGKILL)
        probd.proc.wait()
        stop.set()
        for t in threads:
            t.join()
        rows = {r.record_id: r for r in queued(probd.spool_dir)}
    missing = set(acked) - set(rows)
    assert not missing, f"{len(missing)} acknowledged records lost"
    for record_id, payload in acked.items():
        assert rows[record_id].payload == payload
        assert rows[record_id].headers.startswith(b"record_format_version: 4\n")


def test_sigterm_finishes_in_flight_records_and_exits_0(user_install):
    with Probd(user_install) as probd:
        s = probd.connect()
        frame = c_frame(good_headers(), b"in flight")
        s.sendall(frame[:60])
        time.sleep(0.1)
        probd.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        s.sendall(frame[60:])
        assert read_reply(s).startswith(b"TM/1 accepted")
        assert probd.proc.wait(10) == 0
        s.close()
        assert not os.path.exists(probd.socket_path)
        assert counters(probd.spool_dir) == {"received": 1, "staged": 1}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signals_exit_cleanly(user_install, sig):
    with Probd(user_install) as probd:
        probd.send_raw(c_frame(good_headers(), b"x"))
        assert probd.stop(sig) == 0
        assert "Traceback" not in probd.log()


def test_the_socket_is_world_writable_and_its_directory_private(user_install):
    with Probd(user_install) as probd:
        st = os.stat(probd.socket_path)
        assert oct(st.st_mode & 0o777) == oct(0o666)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(probd.socket_path)
        sock.close()
