"""Who a record is counted for: SO_PEERCRED, or the credentials the sender states with its
first bytes (SCM_CREDENTIALS), which the kernel lets only a privileged sender set to
another process's.  crashprobe, as root, sends each crash report on behalf of the user
whose process crashed, so one user's crashes use that user's share of the rate limits,
not everyone's.  A C probe, which states nothing, is served exactly as before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from telemprobd_harness import Probd, c_frame, good_headers, queued

from telemetry.client import Client, Credentials, RecordRejected

FRAME = c_frame(good_headers(), b"x" * 200)
DROP_4 = "record_burst_limit=4\nrecord_window_length=1\nrate_limit_uid_share=50\nrate_limit_strategy=drop\n"

root_only = pytest.mark.skipif(os.getuid() != 0, reason="stating another user's credentials needs root")


def client(inst, probd: Probd) -> Client:
    return Client(inst.paths, config_file=None)


def status(send) -> str:
    try:
        return str(send().status.value)
    except RecordRejected as e:
        return e.ack.status.value


@root_only
def test_records_sent_on_behalf_of_a_user_count_in_that_users_share(user_install):
    with Probd(user_install, DROP_4) as probd:
        c = client(user_install, probd)
        on_behalf = Credentials(os.getpid(), 4242, 4243)
        got = [status(lambda: c.send_frame(FRAME, on_behalf_of=on_behalf)) for _ in range(3)]
        assert got == ["accepted", "accepted", "rate-limited"]  # 4242's half of the window
        assert status(lambda: c.send_frame(FRAME)) == "accepted"  # root's own share is untouched
        senders = sorted((r.sender.uid, r.sender.gid) for r in queued(probd.spool_dir))
    assert senders == [(0, 0), (4242, 4243), (4242, 4243)]


@root_only
def test_a_process_that_is_gone_is_replaced_by_the_sender(user_install):
    gone = subprocess.Popen(["true"])
    gone.wait()
    with Probd(user_install) as probd:
        ack = client(user_install, probd).send_frame(FRAME, on_behalf_of=Credentials(gone.pid, 4242, 4242))
        assert ack.kept
        [row] = queued(probd.spool_dir)
    assert (row.sender.uid, row.sender.pid) == (4242, os.getpid())


UNPRIVILEGED = textwrap.dedent("""
    import os, socket, sys
    from telemetry.client import Credentials, _read_reply, _send_credentials
    os.setgid(65534); os.setuid(65534)
    frame = sys.stdin.buffer.read()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    sent = _send_credentials(s, frame, Credentials(os.getpid(), 0, 0))
    s.sendall(frame[sent:]); s.shutdown(socket.SHUT_WR)
    import time
    print(sent, _read_reply(s, time.monotonic() + 30).split()[1].decode())
""")


@root_only
def test_an_unprivileged_sender_cannot_claim_another_user(user_install):
    with Probd(user_install) as probd:
        os.chmod(probd.socket_dir, 0o711)
        r = subprocess.run([sys.executable, "-c", UNPRIVILEGED, probd.socket_path], input=FRAME,
                           capture_output=True, env=user_install.env, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().split() == ["0", "accepted"]  # the kernel refused the claim
        [row] = queued(probd.spool_dir)
    assert row.sender.uid == 65534  # counted as who it is


C_PROBE = r"""
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(int argc, char **argv) {
    static char frame[1 << 16];
    size_t n = fread(frame, 1, sizeof frame, stdin);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    for (size_t off = 0; off < n; ) { ssize_t w = write(s, frame + off, n - off); if (w <= 0) return 1; off += w; }
    shutdown(s, SHUT_WR);
    char reply[513] = {0};
    ssize_t got = read(s, reply, 512);
    fwrite(reply, 1, got > 0 ? got : 0, stdout);
    return 0;
}
"""


def test_a_c_probe_sees_no_difference(user_install, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src, exe = tmp_path / "probe.c", tmp_path / "probe"
    src.write_text(C_PROBE)
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    with Probd(user_install) as probd:
        r = subprocess.run([str(exe), probd.socket_path], input=FRAME, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.startswith(b"TM/1 accepted ")
        [row] = queued(probd.spool_dir)
    assert (row.sender.uid, row.sender.gid) == (os.getuid(), os.getgid())
    assert row.sender.pid > 0 and Path(f"/proc/{os.getpid()}").exists()
