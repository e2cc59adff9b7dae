"""The library's send path against real unix-socket peers.

The peers here stand in for the two daemons the library must work with: an original C
telemprobd (reads one frame, never replies, closes) — unreachable here, so its socket
behaviour from spec/wire-and-records.md section 3 is reproduced — and the replies our
telemprobd writes (telemetry.ack).  Our own telemprobd is exercised by its own tests.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import threading

import pytest

import telemetry
from telemetry.ack import Ack, AckStatus
from telemetry.client import Client, DaemonUnavailable, NotOptedIn, RecordRejected, SendError
from telemetry.record import create_record
from telemetry.wire import FrameDecoder


class Peer:
    """A listening socket served by a thread running `behaviour(conn)` per connection."""

    def __init__(self, path: str, behaviour):
        self.path = path
        self.frames = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.behaviour = behaviour
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def read_frame(self, conn):
        dec = FrameDecoder()
        while True:
            chunk = conn.recv(min(4096, max(1, dec.wanted())))
            if not chunk:
                dec.eof()
            frame = dec.feed(chunk)
            if frame is not None:
                self.frames.append(frame)
                return frame

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.behaviour(self, conn)

    def close(self):
        self.sock.close()


@pytest.fixture
def client(user_install):
    user_install.opt_in()
    os.makedirs(os.path.dirname(user_install.paths.socket_path), exist_ok=True)
    return Client(user_install.paths)


@pytest.fixture
def record():
    return create_record("org.example/client/test", 2, "payload ✓")


def serve(client, behaviour):
    peer = Peer(client.socket_path, behaviour)
    return peer


def test_original_daemon_reads_and_closes(client, record):
    peer = serve(client, lambda p, c: p.read_frame(c))
    ack = client.send(record)
    assert ack.legacy and ack.kept
    assert peer.frames[0].header_block == record.header_block()
    assert peer.frames[0].payload == record.payload
    peer.close()


def test_our_daemon_acknowledges(client, record):
    def accept(p, c):
        p.read_frame(c)
        c.sendall(Ack(AckStatus.ACCEPTED, "ab" * 16).encode())

    peer = serve(client, accept)
    ack = client.send(record)
    assert ack.status is AckStatus.ACCEPTED and ack.record_id == "ab" * 16
    peer.close()


@pytest.mark.parametrize("status", [s for s in AckStatus if not s.kept])
def test_refusals_raise_with_the_reason(client, record, status):
    def refuse(p, c):
        p.read_frame(c)
        c.sendall(Ack(status, "because").encode())

    peer = serve(client, refuse)
    with pytest.raises(RecordRejected, match=f"refused the record: {status.value}: because") as e:
        client.send(record)
    assert e.value.ack.status is status
    peer.close()


def test_daemon_refusing_before_reading_everything(client, record):
    def early(p, c):
        c.recv(4)
        c.sendall(Ack(AckStatus.INVALID, "record size too large").encode())
        c.shutdown(socket.SHUT_RDWR)

    peer = serve(client, early)
    big = record.with_payload("x" * 8000)
    with pytest.raises(RecordRejected, match="record size too large"):
        client.send(big)
    peer.close()


def test_config_file_travels_as_cfg_field(user_install, record):
    user_install.opt_in()
    os.makedirs(os.path.dirname(user_install.paths.socket_path), exist_ok=True)
    conf = user_install.root / "probe.conf"
    conf.write_text("[settings]\n")
    c = Client(user_install.paths, config_file=str(conf))
    peer = serve(c, lambda p, conn: p.read_frame(conn))
    c.send(record)
    assert peer.frames[0].cfg_path == str(conf)
    peer.close()


def test_not_opted_in_refuses_before_connecting(user_install, record):
    c = Client(user_install.paths)
    with pytest.raises(NotOptedIn, match="telemctl --user opt-in"):
        c.send(record)


def test_no_daemon(client, record):
    with pytest.raises(DaemonUnavailable, match="not listening on .*telem-0"):
        client.send(record)


def test_silent_daemon_times_out(client, record):
    hold = threading.Event()

    def silent(p, c):
        p.read_frame(c)
        hold.wait(5)

    peer = serve(client, silent)
    with pytest.raises(SendError, match="no acknowledgement"):
        client.send(record, timeout=0.3)
    hold.set()
    peer.close()


def test_garbage_reply(client, record):
    def garbage(p, c):
        p.read_frame(c)
        c.sendall(b"HTTP/1.0 200 OK\r\n\r\n")

    peer = serve(client, garbage)
    with pytest.raises(SendError, match="unknown format"):
        client.send(record)
    peer.close()


def test_socket_path_too_long(user_install, record):
    user_install.opt_in()
    user_install.write_config("socket_path=/" + "x" * 120 + "\n")
    with pytest.raises(SendError, match="longer than 107 bytes"):
        Client(user_install.paths).send(record)


def test_package_names_load_on_first_use():
    """`from telemetry import X` works for every public name, and importing one submodule
    does not import the others behind the package's names."""
    assert set(telemetry.__all__) == {*telemetry._EXPORTS, "__version__"}
    for name, module in telemetry._EXPORTS.items():
        assert getattr(telemetry, name) is getattr(sys.modules[f"telemetry.{module}"], name)
    with open(telemetry.__file__) as f:
        (block,) = (n for n in ast.parse(f.read()).body
                    if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    assert {a.name for node in block.body for a in node.names} == set(telemetry._EXPORTS)
    code = ("import sys, telemetry.errors; assert 'telemetry.client' not in sys.modules, sorted(sys.modules); "
            "from telemetry import *; assert send and Record and __version__")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        telemetry.nothing  # noqa: B018
