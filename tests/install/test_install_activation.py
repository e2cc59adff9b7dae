"""The daemons as their units start them: socket activation and the sd_notify contract.

telemprobd.socket hands telemprobd a listening socket (LISTEN_FDS); systemd-socket-activate
does the same without systemd.  Type=notify in both service units holds only if the
daemons send READY=1 to NOTIFY_SOCKET, which is checked here on a socket of our own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from telemetry import create_record
from telemetry.client import Client
from telemetry.config import load
from telemetry.daemons.store.queue import WAKEUP_FILE, Queue, queue_dir

WAIT = 60.0  # a bound for a loaded machine, never a measurement


@contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()


def wait_ready(sock: socket.socket, proc: subprocess.Popen) -> list[str]:
    """The notify messages up to READY=1; fails if the daemon exits first."""
    seen: list[str] = []
    deadline = time.monotonic() + WAIT
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            message = sock.recv(4096).decode(errors="replace")
        except TimeoutError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"daemon exited ({proc.returncode}) before READY=1: {err}")
            continue
        seen += message.split("\n")
        if "READY=1" in seen:
            return seen
    pytest.fail(f"no READY=1 within {WAIT} s; got {seen}")


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("daemon did not exit on SIGTERM")


def test_socket_activated_telemprobd_receives_a_record(user_install, short_dir):
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    sock_path = short_dir / "telem-0"
    user_install.write_config(f"socket_path={sock_path}\n")
    user_install.opt_in()
    env_args = [f"-E{k}={v}" for k, v in user_install.env.items() if k.startswith(("XDG_", "TELEMETRY_"))]
    with notify_socket(short_dir / "notify") as ready:
        env_args.append(f"-ENOTIFY_SOCKET={short_dir / 'notify'}")
        proc = subprocess.Popen(
            [activate, "-l", str(sock_path), *env_args, sys.executable, "-m", "telemetry.daemons.probd.main"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + WAIT
            while not sock_path.exists():
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "systemd-socket-activate never listened"
                time.sleep(0.05)
            client = Client(user_install.paths, load(user_install.paths))
            # The first connection is what starts telemprobd; it is served once it is up.
            ack = client.send(create_record("org.example/install/activation", 1, "socket activated"), timeout=WAIT)
            messages = wait_ready(ready, proc)
        finally:
            code = stop(proc)
            err = proc.stderr.read().decode()
    assert code == 0, err
    assert ack.kept and ack.record_id
    assert any(m.startswith("STATUS=") for m in messages)
    cfg = load(user_install.paths)
    queue = Queue(cfg.spool_dir, readonly=True)
    try:
        record = queue.get(ack.record_id)
    finally:
        queue.close()
    assert record is not None and record.payload == b"socket activated"
    # The wake-up file telempostd.path watches (PathModified=) is written after the commit.
    assert (Path(queue_dir(cfg.spool_dir)) / WAKEUP_FILE).exists()
    assert sock_path.exists(), "the socket belongs to the activator; telemprobd must not remove it"


def test_telempostd_tells_systemd_it_is_ready(user_install, short_dir):
    user_install.write_config("server=http://127.0.0.1:9/v2/collector\n")
    user_install.opt_in()
    with notify_socket(short_dir / "notify") as ready:
        env = {**user_install.env, "NOTIFY_SOCKET": str(short_dir / "notify")}
        proc = subprocess.Popen([sys.executable, "-m", "telemetry.daemons.postd.main"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            messages = wait_ready(ready, proc)
        finally:
            code = stop(proc)
            err = proc.stderr.read().decode()
    assert code == 0, err
    assert "READY=1" in messages
    assert os.environ.get("TELEMETRY_MODE") == "user"
