"""Reserved classifications: the system probes' prefixes (org.clearlinux/crash, kernel,
journal, bert) are refused from any other local user, with a clear reply, a log line and
a counter; what root and the service account send, and what crashprobe sends for a
crashed user, goes through.  telemprobd runs as root here (user mode), and the other
user is a child process that became `nobody`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from support import wait_until
from telemprobd_harness import Probd, c_frame, counters, good_headers, queued

from telemetry.client import Client, Credentials

root_only = pytest.mark.skipif(os.getuid() != 0, reason="sending as another user needs root")
NOBODY = 65534

AS_NOBODY = textwrap.dedent("""
    import os, socket, sys, time
    from telemetry.client import _read_reply
    os.setgid(65534); os.setuid(65534)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR)
    sys.stdout.write(_read_reply(s, time.monotonic() + 30).decode())
""")


def frame(classification: str) -> bytes:
    return c_frame(good_headers(classification=classification), b"payload")


def as_nobody(inst, probd: Probd, classification: str) -> str:
    os.chmod(probd.socket_dir, 0o711)
    r = subprocess.run([sys.executable, "-c", AS_NOBODY, probd.socket_path], input=frame(classification),
                       capture_output=True, env=inst.env, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@root_only
def test_another_user_cannot_send_the_system_probes_classifications(user_install):
    with Probd(user_install) as probd:
        for cls in ("org.clearlinux/crash/clr", "org.clearlinux/kernel/bug", "ORG.clearlinux/Kernel/warning",
                    "org.clearlinux/journal/error"):
            reply = as_nobody(user_install, probd, cls)
            assert reply == (f"TM/1 forbidden classification {cls} is reserved for the system's probes "
                             f"({cls.lower().rsplit('/', 1)[0]}/*: root); uid {NOBODY} may not send it\n"), reply
        # Its other records, and names that only look alike, are served.
        assert as_nobody(user_install, probd, "org.example/any/thing").startswith("TM/1 accepted ")
        assert as_nobody(user_install, probd, "org.clearlinux/crashy/x").startswith("TM/1 accepted ")
        # Root sends them; so does crashprobe (root) for a crashed user, counted in that user's share.
        c = Client(user_install.paths, config_file=None)
        assert c.send_frame(frame("org.clearlinux/kernel/bug")).kept
        assert c.send_frame(frame("org.clearlinux/crash/clr"), on_behalf_of=Credentials(os.getpid(), 4242, 4242)).kept
        got = sorted((r.sender.uid, r.headers.split(b"\n")[1].decode()) for r in queued(probd.spool_dir))
        assert got == [(0, "classification: org.clearlinux/kernel/bug"),
                       (4242, "classification: org.clearlinux/crash/clr"),
                       (NOBODY, "classification: org.clearlinux/crashy/x"),
                       (NOBODY, "classification: org.example/any/thing")]
        wait_until(lambda: counters(probd.spool_dir).get("rejected:forbidden") == 4, what="the counter")
        assert f"refused a record from uid {NOBODY}" in probd.log() and "forbidden" in probd.log()


@root_only
def test_the_reservation_is_configurable(user_install):
    config = "reserved_classifications=org.example/fleet\nreserved_classification_uids=nobody\n"
    with Probd(user_install, config) as probd:
        assert as_nobody(user_install, probd, "org.example/fleet/ping").startswith("TM/1 accepted ")
        assert as_nobody(user_install, probd, "org.clearlinux/crash/clr").startswith("TM/1 accepted ")
    with Probd(user_install, "reserved_classifications=\n") as probd:
        assert as_nobody(user_install, probd, "org.clearlinux/kernel/bug").startswith("TM/1 accepted ")


@pytest.mark.parametrize("line, message", [
    ("reserved_classification_uids=no-such-user-here", "reserved_classification_uids: no user 'no-such-user-here'"),
    ("reserved_classifications=crash", "reserved_classifications: 'crash' is not a classification prefix"),
])
def test_a_bad_reservation_is_one_line_and_no_start(user_install, line, message):
    probd = Probd(user_install, line, start=False)
    probd.start(wait=False)
    assert probd.proc.wait(30) == 1
    wait_until(lambda: message in probd.log(), what="the error line")
    lines = [ln for ln in probd.log().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in probd.log(), probd.log()
