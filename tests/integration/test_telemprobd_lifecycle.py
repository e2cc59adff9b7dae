"""telemprobd's life: flags, start-up errors, reload, socket activation, sd_notify, idle exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from support import wait_until
from telemprobd_harness import Probd, c_frame, good_headers

from telemetry.version import __version__

FRAME = c_frame(good_headers(), b"x" * 100)
MODULE = "telemetry.daemons.probd.main"


def test_version_and_help(user_install):
    r = user_install.run(MODULE, "-V")
    assert r.returncode == 0 and r.stdout.decode().strip() == __version__
    r = user_install.run(MODULE, "--help")
    out = r.stdout.decode()
    assert r.returncode == 0
    for flag in ("-f, --config_file", "-h, --help", "-V, --version"):
        assert flag in out


@pytest.mark.parametrize("args, config, message", [
    (("-f", "relative.conf"), "", "must be absolute"),
    (("-f", "/nonexistent/telemetrics.conf"), "", "not valid"),
    ((), "record_burst_limit=abc", "record_burst_limit"),
    (("--bogus",), "", "No such option"),
])
def test_bad_invocations_fail_with_one_line(user_install, args, config, message):
    user_install.write_config(config)
    r = user_install.run(MODULE, *args, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def _start_fails(user_install, socket_path: str) -> str:
    user_install.write_config(f"socket_path={socket_path}")
    r = user_install.run(MODULE, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Traceback" not in err
    return err


def test_refuses_a_symlink_at_the_socket_path(short_dir, user_install):
    d = short_dir
    target = os.path.join(d, "elsewhere")
    os.symlink(target, os.path.join(d, "telem-0"))
    assert "symbolic link" in _start_fails(user_install, os.path.join(d, "telem-0"))
    assert not os.path.exists(target)


def test_refuses_to_remove_a_file_that_is_not_a_socket(short_dir, user_install):
    d = short_dir
    path = os.path.join(d, "telem-0")
    open(path, "w").write("precious")
    assert "not a socket" in _start_fails(user_install, path)
    assert open(path).read() == "precious"


def test_refuses_to_start_twice_on_one_socket(user_install):
    with Probd(user_install) as probd:
        assert "already listening" in _start_fails(user_install, probd.socket_path)
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")


def test_a_stale_socket_is_replaced(short_dir, user_install):
    d = short_dir
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.path.join(d, "telem-0"))
    stale.close()  # the file stays, nobody listens
    with Probd(user_install, socket_dir=d) as probd:
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")


def test_sighup_applies_a_good_config_and_keeps_the_old_on_a_bad_one(user_install):
    limit = "rate_limit_strategy=drop\nrate_limit_uid_share=100\nrecord_window_length=1\n"
    with Probd(user_install, limit + "record_burst_limit=1") as probd:
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        assert probd.send_raw(FRAME).startswith(b"TM/1 rate-limited")

        probd.write_config(limit + "record_burst_limit=3")
        probd.send_signal(signal.SIGHUP)
        probd.wait_for_log("configuration reloaded")
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")

        probd.write_config(limit + "record_burst_limit=oops")
        probd.send_signal(signal.SIGHUP)
        log = probd.wait_for_log("keeping the previous settings")
        assert "record_burst_limit" in log.splitlines()[-1]
        # Still the limit of 3 (two used): one more, then refused.
        assert probd.send_raw(FRAME).startswith(b"TM/1 accepted")
        assert probd.send_raw(FRAME).startswith(b"TM/1 rate-limited")
        assert probd.proc.poll() is None


def _activated(user_install, fd_obj, extra_env=None) -> subprocess.Popen:
    """Start telemprobd the way systemd's socket activation does: the socket as fd 3."""
    env = {**user_install.env, "LISTEN_FDS": "1", **(extra_env or {})}
    script = f'LISTEN_PID=$$; export LISTEN_PID; exec "{sys.executable}" -m {MODULE}'
    return subprocess.Popen(["sh", "-c", script], env=env, pass_fds=(3,), stderr=subprocess.PIPE,
                            preexec_fn=lambda: os.dup2(fd_obj.fileno(), 3))


def test_socket_activation_uses_the_passed_socket(short_dir, user_install):
    user_install.opt_in()
    d = short_dir
    path = os.path.join(d, "activated")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    user_install.write_config(f"socket_path={d}/unused")
    proc = _activated(user_install, listener)
    try:
        def send() -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(path)
                s.sendall(FRAME)
                s.shutdown(socket.SHUT_WR)
                return s.recv(512)
        assert send().startswith(b"TM/1 accepted")
        assert not os.path.exists(f"{d}/unused")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert os.path.exists(path)  # systemd's socket: not ours to remove
    assert b"passed by systemd" in proc.stderr.read()


def test_socket_activation_with_something_else_than_a_socket_fails(user_install):
    r, w = os.pipe()
    with os.fdopen(r) as pipe_r:
        proc = _activated(user_install, pipe_r)
        err = proc.communicate(timeout=30)[1].decode()
    os.close(w)
    assert proc.returncode == 1
    assert "not a listening unix stream socket" in err and "Traceback" not in err


def test_sd_notify_ready_and_status_counters(short_dir, user_install):
    d = short_dir
    notify_path = os.path.join(d, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    messages: list[str] = []

    def received(text: str) -> bool:
        while not any(text in m for m in messages):
            messages.append(notify.recv(4096).decode())
        return True

    with Probd(user_install, env={"NOTIFY_SOCKET": notify_path}) as probd:
        assert received("READY=1")
        probd.send_raw(FRAME)
        probd.send_raw(b"\x05\x00\x00\x00")
        assert received("STATUS=received=2 staged=1 deferred=0 rejected:invalid=1")
    notify.close()


def test_pings_the_watchdog_systemd_asks_for(short_dir, user_install):
    notify_path = os.path.join(short_dir, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(10)
        # WatchdogSec=0.2: a ping every 0.1 s while nothing else happens.
        with Probd(user_install, env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}):
            pings = 0
            while pings < 3:
                pings += notify.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("env, recycling, exits", [
    ({"INVOCATION_ID": "0123456789abcdef"}, "true", True),
    ({}, "true", False),  # not started by systemd: nothing would start it again
    ({"INVOCATION_ID": "0123456789abcdef"}, "false", False),
])
def test_idle_exit_only_when_systemd_can_restart_it(short_dir, user_install, env, recycling, exits):
    """The real daemon, with the idle time (daemon_idle_time) set to 1 s."""
    user_install.opt_in()
    d = short_dir
    user_install.write_config(f"socket_path={d}/telem-0\ndaemon_recycling_enabled={recycling}\n"
                              "daemon_idle_time=1")
    proc = subprocess.Popen([sys.executable, "-m", "telemetry.daemons.probd.main"], env={**user_install.env, **env},
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.exists(f"{d}/telem-0"), what="socket")
        if exits:
            assert proc.wait(15) == 0  # (its log went to the journal: INVOCATION_ID is set)
            assert not os.path.exists(f"{d}/telem-0")
        else:
            time.sleep(2.5)
            assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
