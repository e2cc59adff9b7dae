"""telemprobd's listening socket, bound directly: what is taken for a stale socket."""

from __future__ import annotations

import os
import socket

import pytest

from telemetry.daemons.probd.listener import ListenerError, bind


def test_a_listener_with_a_full_backlog_is_not_taken_for_a_stale_socket(short_dir):
    path = os.path.join(short_dir, "telem-0")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting:
        busy.bind(path)
        busy.listen(0)
        waiting.connect(path)  # never accepted: the backlog is full
        inode = os.stat(path).st_ino
        with pytest.raises(ListenerError, match="already listening"):
            bind(path, create_dir=False)
        assert os.stat(path).st_ino == inode


def test_a_stale_socket_is_replaced_by_a_listening_one(short_dir):
    path = os.path.join(short_dir, "telem-0")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)  # the file stays, nobody listens
    listener = bind(path, create_dir=False)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
    finally:
        listener.close()
    assert not os.path.exists(path)
