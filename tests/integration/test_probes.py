"""hprobe, telem-record-gen, klogscanner, pstoreprobe and pstoreclean run as a user runs
them, against a real user-mode telemprobd; the staged rows are checked field by field.
(journalprobe has its own file: it needs journal files written by systemd-journal-remote.)
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import no_such_option, wait_until
from telemprobd_harness import HEADER_NAMES, Probd, rows

from telemetry.probes.oops import oops_payload, parse_lines

TESTDATA = Path(__file__).resolve().parents[1] / "data" / "oops"


def headers(row) -> dict[str, str]:
    lines = row.headers.decode().rstrip("\n").split("\n")
    assert [line.split(": ", 1)[0] for line in lines] == list(HEADER_NAMES)
    return dict(line.split(": ", 1) for line in lines)


def check_row(row, classification: str, severity: int, payload: bytes, version: int = 1) -> dict[str, str]:
    h = headers(row)
    assert h["record_format_version"] == "4"
    assert h["classification"] == classification
    assert h["severity"] == str(severity)
    assert h["payload_format_version"] == str(version)
    assert len(h["event_id"]) == 32 and int(h["event_id"], 16) >= 0
    assert h["machine_id"] != "FFFFFFFF"  # telemprobd put its own in
    assert h["kernel_version"] == os.uname().release
    assert row.payload == payload
    assert row.sender.uid == os.getuid()
    return h


def run(inst, module: str, *args: str, **kw):
    return inst.run(f"telemetry.probes.{module}", *args, **kw)


def one_line(text: bytes) -> str:
    lines = text.decode().strip().split("\n")
    assert len(lines) == 1, lines
    return lines[0]


# --- hprobe -----------------------------------------------------------------------------

def test_hprobe_heartbeat_with_locale_and_uptime(user_install):
    with Probd(user_install) as probd:
        r = run(user_install, "hprobe", "-Hlu", env={"LC_ALL": "C"})
        assert (r.returncode, r.stdout, r.stderr) == (0, b"Successfully sent record to daemon.\n", b"")
        (row,) = rows(probd)
        lines = row.payload.decode().split("\n")
        assert lines[:2] == ["hello", "LC_ALL: C"]
        assert lines[2].startswith("uptime: ") and int(lines[2][8:]) > 0 and lines[3:] == [""]
        check_row(row, "org.clearlinux/heartbeat/ping", 1, row.payload)


def test_hprobe_hello_and_bundles(user_install, tmp_path):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for name in ("os-core", "editors", ".hidden", "c-basic"):
        (bundles / name).touch()
    with Probd(user_install) as probd:
        assert run(user_install, "hprobe").returncode == 0
        assert run(user_install, "hprobe", "-b", "--bundles-dir", str(bundles)).returncode == 0
        a, b = rows(probd)
        check_row(a, "org.clearlinux/hello/world", 1, b"hello\n")
        check_row(b, "org.clearlinux/hello/world", 1, b"hello\n\nBundles (3):\nc-basic\neditors\nos-core\n")


def test_hprobe_bundle_name_that_is_not_utf8(user_install, tmp_path):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "editors").touch()
    open(os.path.join(os.fsencode(bundles), b"bad\xffname"), "w").close()
    with Probd(user_install) as probd:
        r = run(user_install, "hprobe", "-b", "--bundles-dir", str(bundles))
        assert (r.returncode, r.stderr) == (0, b"")
        (row,) = rows(probd)
        check_row(row, "org.clearlinux/hello/world", 1, "hello\n\nBundles (2):\nbad\ufffdname\neditors\n".encode())


def test_hprobe_bad_input_and_failures(user_install, tmp_path):
    r = run(user_install, "hprobe", "-x")
    assert r.returncode == 1 and one_line(r.stderr) == f"hprobe: {no_such_option('-x')} (see 'hprobe --help')"
    r = run(user_install, "hprobe", "-f", "relative.conf")
    assert r.returncode == 1 and "configuration file path not valid" in one_line(r.stderr)
    user_install.opt_in()
    user_install.write_config(f"socket_path={tmp_path}/absent.sock\n")
    r = run(user_install, "hprobe")
    assert r.returncode == 1
    assert one_line(r.stderr).startswith("Failed to send record to daemon: telemprobd is not listening")
    assert one_line(r.stderr).endswith("start it with 'telemctl --user start'")
    with Probd(user_install):
        r = run(user_install, "hprobe", "-b", "--bundles-dir", str(tmp_path / "none"))
        assert r.returncode == 1 and one_line(r.stderr).startswith("hprobe: scandir failed")


def test_probes_take_user_and_system_like_telemctl(user_install):
    """--user beats TELEMETRY_MODE=system (root's probes reach root's own user-mode daemons);
    both together are refused."""
    with Probd(user_install) as probd:
        r = run(user_install, "hprobe", "--user", env={"TELEMETRY_MODE": "system"})
        assert r.returncode == 0, r.stderr
        assert len(rows(probd)) == 1
    for module in ("hprobe", "klogscanner", "journalprobe", "pstoreprobe", "pstoreclean", "telem_record_gen"):
        r = run(user_install, module, "--user", "--system")
        assert r.returncode == 1, module
        assert one_line(r.stderr).endswith("--user and --system exclude each other; give one of them "
                                           f"(see '{r.stderr.decode().split(':')[0]} --help')"), module


def test_hprobe_help_and_version(user_install):
    r = run(user_install, "hprobe", "-h")
    assert r.returncode == 0 and r.stdout.decode().startswith("hprobe: Usage\n  -f,  --config_file")
    r = run(user_install, "hprobe", "-V")
    assert r.returncode == 0 and r.stdout.strip() and r.stdout.count(b"\n") == 1


def test_every_probe_does_nothing_when_opted_out(user_install, tmp_path):
    pstore = tmp_path / "pstore"
    pstore.mkdir()
    (pstore / "dmesg-ramoops-0").write_text("Oops#1 Part1\nBUG: x\n")
    with Probd(user_install, opt_in=False) as probd:
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-p", "x")
        assert r.returncode == 1  # as the original: its caller asked for this record
        assert one_line(r.stderr) == (f"Unable to send record: not opted in to telemetry "
                                      f"({user_install.paths.opt_in_file} is missing); nothing collected "
                                      "or sent. Run 'telemctl --user opt-in' to opt in")
        for module, args in [
            ("hprobe", ()),
            ("klogscanner", ("--replay", str(TESTDATA / "warning.txt"))),
            ("pstoreprobe", ("--cache-dir", str(pstore))),
            ("pstoreclean", ("--pstore-dir", str(pstore), "--cache-dir", str(tmp_path / "pcache"))),
            ("journalprobe", ("--once",)),
        ]:
            r = run(user_install, module, *args)
            assert r.returncode == 0, (module, r.stderr)
            assert "not opted in" in one_line(r.stderr) and "INFO" in r.stderr.decode(), module
            assert "Run 'telemctl --user opt-in' to opt in" in r.stderr.decode(), module
        assert rows(probd) == []
    assert (pstore / "dmesg-ramoops-0").exists() and not (tmp_path / "pcache").exists()


def test_a_deferred_record_is_reported_as_queued_for_later(user_install):
    """Over the rate limit with strategy spool, telemprobd keeps the record for a later
    window: not "Successfully sent"."""
    with Probd(user_install, "record_burst_limit=2\nrate_limit_uid_share=100\nrate_limit_strategy=spool") as probd:
        r = run(user_install, "hprobe")
        assert (r.returncode, r.stdout) == (0, b"Successfully sent record to daemon.\n")
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-p", "x")
        assert (r.returncode, r.stderr) == (0, b"")
        r = run(user_install, "hprobe")
        assert r.returncode == 0, r.stderr
        assert one_line(r.stdout).startswith("Record queued by the daemon for later: it is over the rate limit")
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-p", "x")
        assert r.returncode == 0 and "queued by the daemon for later" in one_line(r.stderr)
        assert len(rows(probd)) == 4


def test_rate_limited_rejection_is_reported(user_install):
    with Probd(user_install, "record_burst_limit=1\nrate_limit_strategy=drop") as probd:
        assert run(user_install, "hprobe").returncode == 0
        r = run(user_install, "hprobe")
        assert r.returncode == 1
        assert one_line(r.stderr).startswith("Failed to send record to daemon: telemprobd refused the record: "
                                             "rate-limited")
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-p", "x")
        assert r.returncode == 1 and "rate-limited" in one_line(r.stderr)
        assert len(rows(probd)) == 1


# --- telem-record-gen -------------------------------------------------------------------

EID = "0123456789abcdef0123456789abcdef"


def test_record_gen_every_field(user_install, tmp_path):
    payload_file = tmp_path / "p.txt"
    payload_file.write_bytes("from a file \u00e9\n".encode())
    with Probd(user_install) as probd:
        r = run(user_install, "telem_record_gen", "-c", "org.example/gen/test", "-s", "3", "-R", "7", "-e", EID,
                "-p", "inline payload")
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
        r = run(user_install, "telem_record_gen", "--class", "x/y/z", "--payload-file", str(payload_file))
        assert r.returncode == 0, r.stderr
        r = run(user_install, "telem_record_gen", "-c", "x/y/stdin", input=b"from stdin")
        assert r.returncode == 0, r.stderr
        a, b, c = rows(probd)
        assert check_row(a, "org.example/gen/test", 3, b"inline payload", version=7)["event_id"] == EID
        check_row(b, "x/y/z", 1, "from a file \u00e9\n".encode())
        check_row(c, "x/y/stdin", 1, b"from stdin")


def test_record_gen_echo_and_no_post(user_install):
    with Probd(user_install) as probd:
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-p", "body", "-o", "-n", "-e", EID)
        assert r.returncode == 0
        out = r.stdout.decode().split("\n")
        assert [line.split(": ")[0] for line in out[:15]] == list(HEADER_NAMES)
        assert out[1] == "classification: a/b/c" and out[14] == f"event_id: {EID}"
        assert out[15:] == ["body", ""]
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-p", "body", "-o")
        assert r.returncode == 0 and r.stdout.endswith(b"\nbody\n")
        assert len(rows(probd)) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "Error: Classification required. See --help."),
        (("-c", ""), "Error: Valid size for classification is 1-122 chars"),
        (("-c", "a/b/" + "c" * 130), "Error: Valid size for classification is 1-122 chars"),
        (("-c", "a/\u00e9/c"), "Error: Non-ascii characters detected in classification - aborting"),
        (("-c", "a/" + "b" * 41 + "/c"), "Error: Classification strings between slashes should have at most 40 chars"),
        (("-c", "a/b"), "Error: Classification needs to be in most/to/least specific format, 2 '/' required."),
        (("-c", "a/b/c", "-s", "5"), "Error: Valid range for severity is 1-4"),
        (("-c", "a/b/c", "-s", "-1"), "Error: Valid range for severity is 1-4"),
        (("-c", "a/b/c", "-s", "2x"), "Invalid severity number. Must be an integer"),
        (("-c", "a/b/c", "-R", "v2"), "Invalid record-version number. Must be an integer"),
        (("-c", "a/b/c", "-s", "9" * 30), "Failed to convert severity number: Numerical result out of range"),
        (("-c", "a/b/c", "-e", "abc"), "Error: event_id length 3 it should have 32 characters"),
        (("-c", "a/b/c", "-e", "0123456789ABCDEF0123456789abcdef"),
         "Error: event_id contains invalid character 'A' at position 10, valid characters are 0123456789abcdef"),
        (("-c", "a/b/c", "-P", "/nonexistent/file"), "Error: file /nonexistent/file could not be opened for reading"),
        (("-c", "a/b/c", "-p", "x" * 8193), "Error: payload is 8193 bytes; the limit is 8192 (use --truncate to cut it)"),
        (("-c", "a/b\tc/d"), "Error: classification must be printable ASCII"),
        (("-c", "a/b/c", "--zzz"), f"telem-record-gen: {no_such_option('--zzz')} (see 'telem-record-gen --help')"),
    ],
)
def test_record_gen_bad_input(user_install, args, message):
    r = run(user_install, "telem_record_gen", *args, "-n", input=b"")
    assert r.returncode == 1
    assert one_line(r.stderr) == message
    assert r.stdout == b""


def test_record_gen_payload_limit(user_install, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"y" * 9000)
    with Probd(user_install) as probd:
        assert run(user_install, "telem_record_gen", "-c", "a/b/c", "-p", "x" * 8192).returncode == 0
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", input=b"z" * 100_000)
        assert r.returncode == 1 and "larger than 8192 bytes" in one_line(r.stderr)
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-P", str(big))
        assert r.returncode == 1 and "larger than 8192 bytes" in one_line(r.stderr)
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "--truncate", "-p", "\u00e9" * 5000)
        assert r.returncode == 0, r.stderr
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-P", "/dev/stdin", input=b"\xff\xfe")
        assert r.returncode == 1 and "not valid UTF-8" in one_line(r.stderr)
        r = run(user_install, "telem_record_gen", "-c", "a/b/c", "--truncate", "-P", "/dev/stdin",
                input=b"x\xff" + b"y" * 9000)  # cutting does not clean it either
        assert r.returncode == 1 and "not valid UTF-8 (byte 1)" in one_line(r.stderr)
        a, b = rows(probd)
        assert a.payload == b"x" * 8192
        assert b.payload == "\u00e9".encode() * 4096  # cut at 8192 bytes on a character boundary


def test_record_gen_without_daemon(user_install, tmp_path):
    user_install.opt_in()
    user_install.write_config(f"socket_path={tmp_path}/absent.sock\n")
    r = run(user_install, "telem_record_gen", "-c", "a/b/c", "-p", "x")
    assert r.returncode == 1 and one_line(r.stderr).startswith("Unable to send record: telemprobd is not listening")


# --- klogscanner --------------------------------------------------------------------------

def expected_oopses(name: str) -> list[tuple[str, int, bytes]]:
    lines = (TESTDATA / name).read_text(errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [(o.classification, o.severity, oops_payload(o).encode()) for o in parse_lines(lines)]


@pytest.mark.parametrize("name", ["watchdog.txt", "kernel_null_pointer.txt", "two_warnings.txt", "ALSA.txt"])
def test_klogscanner_replay_sends_each_oops_once(user_install, name):
    with Probd(user_install) as probd:
        r = run(user_install, "klogscanner", "--replay", str(TESTDATA / name))
        assert r.returncode == 0, r.stderr
        staged = rows(probd)
        expected = expected_oopses(name)
        assert len(staged) == len(expected) >= 1
        for row, (cls, sev, payload) in zip(staged, expected, strict=True):
            check_row(row, cls, sev, payload)
        r = run(user_install, "klogscanner", "--replay", "-", input=(TESTDATA / name).read_bytes())
        assert r.returncode == 0 and len(rows(probd)) == len(expected)  # already sent


def test_klogscanner_replay_benign_log_sends_nothing(user_install):
    with Probd(user_install) as probd:
        r = run(user_install, "klogscanner", "--replay", str(TESTDATA / "sysctl_check1"))
        assert r.returncode == 0 and rows(probd) == []


def kmsg_record(seq: int, message: str, level: int = 4, facility: int = 0) -> bytes:
    return f"{facility * 8 + level},{seq},{1_000_000 + seq},-;{message}\n".encode()


def kmsg_file(lines: list[str], first_seq: int = 0, facility: int = 0) -> bytes:
    out = b""
    for n, line in enumerate(lines):
        out += kmsg_record(first_seq + n, line, facility=facility)
        if n == 0:
            out += b" SUBSYSTEM=net\n DEVICE=+net:eth0\n"  # continuation lines are not messages
    return out


WARN = ["------------[ cut here ]------------", "WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2",
        "Modules linked in: x", "CPU: 0 PID: 1 Comm: t Not tainted 6.1.0 #1", "Call Trace:", " <TASK>",
        " f+0x1/0x2", " g+0x3/0x4", " </TASK>", "---[ end trace 0000000000000000 ]---"]


def test_klogscanner_kmsg_resumes_and_never_resends(user_install, tmp_path):
    kmsg = tmp_path / "kmsg"
    bug = ["BUG: unable to handle kernel NULL pointer dereference at 0000000000000010", "Call Trace:",
           " h+0x1/0x2"]
    kmsg.write_bytes(kmsg_file(["boot"] + WARN + bug))  # the BUG is still open at the end
    with Probd(user_install) as probd:
        r = run(user_install, "klogscanner", "--kmsg", str(kmsg), "--once")
        assert r.returncode == 0, r.stderr
        (warn,) = rows(probd)
        payload = ("Crash Report:\nReason: WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\nKernel Version : 6.1.0 #1\n"
                   "Tainted : Not tainted\nModules : x\nBacktrace :\n#1 f - [kernel]\n#2 g - [kernel]\n")
        check_row(warn, "org.clearlinux/kernel/warning", 2, payload.encode())
        # More of the log arrives (the ring keeps the old records): the open BUG completes.
        seq = 1 + len(WARN) + len(bug)
        more = kmsg_file(["Code: 00 01", "next"] + WARN, first_seq=seq)
        kmsg.write_bytes(kmsg.read_bytes() + more)
        r = run(user_install, "klogscanner", "--kmsg", str(kmsg), "--once")
        assert r.returncode == 0, r.stderr
        _, bug_row, warn2 = rows(probd)
        check_row(bug_row, "org.clearlinux/kernel/bug", 4,
                  f"Crash Report:\nReason: {bug[0]}\nBacktrace :\n#1 h - [kernel]\n".encode())
        assert headers(warn2)["classification"] == "org.clearlinux/kernel/warning"
        r = run(user_install, "klogscanner", "--kmsg", str(kmsg), "--once")
        assert r.returncode == 0 and len(rows(probd)) == 3


def test_klogscanner_ignores_user_space_records(user_install, tmp_path):
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(kmsg_file(WARN, facility=1))  # what a program writing to /dev/kmsg gets
    with Probd(user_install) as probd:
        assert run(user_install, "klogscanner", "--kmsg", str(kmsg), "--once").returncode == 0
        assert rows(probd) == []


def test_klogscanner_follows_a_stream(user_install):
    with Probd(user_install) as probd:
        proc = user_install.popen("telemetry.probes.klogscanner", "--kmsg", "/dev/stdin",
                                  stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(kmsg_file(WARN[:5]))
        proc.stdin.flush()
        proc.stdin.write(kmsg_file(WARN[5:], first_seq=5))
        proc.stdin.flush()
        wait_until(lambda: rows(probd), what="the warning staged")
        proc.stdin.close()
        assert proc.wait(30) == 0, proc.stderr.read()
        proc.stderr.close()
        assert len(rows(probd)) == 1


# A process names itself like a kernel report, then faults: the kernel logs
# "BUG: x[pid]: segfault at …" (facility kernel, level info).  PR_SET_DUMPABLE 0: no core.
CRASH_NAMED = """
import ctypes, sys
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)
libc.prctl(4, 0, 0, 0, 0)
ctypes.string_at(0)
"""


def crash_named(name: str) -> int:
    proc = subprocess.Popen([sys.executable, "-c", CRASH_NAMED, name], stderr=subprocess.DEVNULL)
    assert proc.wait(30) == -signal.SIGSEGV
    return proc.pid


def kernel_lines_about(pid: int) -> list[bytes]:
    """This process's records in the real /dev/kmsg; [] when it cannot be read here."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    found = []
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: overwritten while read
                continue
            if f"[{pid}]: segfault".encode() in rec:
                found.append(rec if rec.endswith(b"\n") else rec + b"\n")
    finally:
        os.close(fd)
    return found


def test_klogscanner_ignores_a_crashing_process_named_like_a_report(user_install, tmp_path):
    pid = crash_named("BUG: x")
    real = kernel_lines_about(pid)
    forged = real[0].split(b";", 1)[1] if real else (
        f"BUG: x[{pid}]: segfault at 0 ip 00007f3f7b5d1f2d sp 00007ffd3a4b8c18 error 4 in "
        "libc.so.6[7f3f7b4ac000+155000] likely on CPU 1 (core 1, socket 0)\n").encode()
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(kmsg_file(WARN) + f"6,{len(WARN)},2000000,-;".encode() + forged
                     + kmsg_record(len(WARN) + 1, "Code: Unable to access opcode bytes at 0x7f3f7b5d1f03.", 6)
                     + kmsg_file(["Call Trace:", "  f+0x1/0x2", "next"], first_seq=len(WARN) + 2))
    dmesg = tmp_path / "dmesg"
    dmesg.write_bytes(b"<6>[   12.345678] " + forged)
    with Probd(user_install) as probd:
        assert run(user_install, "klogscanner", "--kmsg", str(kmsg), "--once").returncode == 0
        assert [headers(r)["classification"] for r in rows(probd)] == ["org.clearlinux/kernel/warning"]
        r = run(user_install, "klogscanner", "--replay", str(dmesg), "--dry-run")
        assert (r.returncode, r.stdout) == (0, b"")
    if real:  # the real kernel log, read as the service reads it
        r = run(user_install, "klogscanner", "--once", "--dry-run")
        assert r.returncode == 0 and f"BUG: x[{pid}]".encode() not in r.stdout


def test_klogscanner_stopped_while_retrying_sends_the_oops_next_run(user_install, tmp_path):
    """SIGTERM (a service stop) while waiting to retry a send: the position saved is the
    oops' first record, so the next run reads it again and sends it."""
    user_install.opt_in()
    user_install.write_config(f"socket_path={tmp_path}/absent.sock\n")  # telemprobd away
    proc = user_install.popen("telemetry.probes.klogscanner", "--kmsg", "/dev/stdin",
                              stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(kmsg_file(WARN))
    proc.stdin.flush()
    seen = b""
    deadline = time.monotonic() + 30
    while b"retrying in" not in seen and time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 1)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
    assert b"retrying in" in seen, seen
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    proc.stdin.close()
    proc.stderr.close()
    state = json.loads((Path(user_install.paths.state_dir) / "klogscanner.state").read_bytes())
    assert state["next_seq"] == 1  # the WARNING: line, where the oops begins
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(kmsg_file(WARN))
    user_install.write_config("")
    with Probd(user_install) as probd:
        assert run(user_install, "klogscanner", "--kmsg", str(kmsg), "--once").returncode == 0
        assert len(rows(probd)) == 1


def test_klogscanner_dry_run_and_failures(user_install, tmp_path):
    r = run(user_install, "klogscanner", "--replay", str(TESTDATA / "warn_on.txt"), "--dry-run")
    assert r.returncode == 0 and b"classification: org.clearlinux/kernel/warning\n" in r.stdout
    assert r.stdout.endswith(expected_oopses("warn_on.txt")[0][2] + b"\n")
    user_install.opt_in()
    r = run(user_install, "klogscanner", "--replay", str(tmp_path / "missing"))
    assert r.returncode == 1 and one_line(r.stderr).startswith("klogscanner: Cannot read")
    r = run(user_install, "klogscanner", "--kmsg", str(tmp_path / "missing"), "--once")
    assert r.returncode == 1 and one_line(r.stderr).startswith("klogscanner: Cannot read the kernel log")
    user_install.write_config(f"socket_path={tmp_path}/absent.sock\n")
    r = run(user_install, "klogscanner", "--replay", str(TESTDATA / "warn_on.txt"))
    assert r.returncode == 1 and "Failed to send record" in one_line(r.stderr)
    with Probd(user_install) as probd:  # the unsent oops goes on the next run
        assert run(user_install, "klogscanner", "--replay", str(TESTDATA / "warn_on.txt")).returncode == 0
        assert len(rows(probd)) == 1


def test_klogscanner_corrupt_state_is_survivable(user_install, tmp_path):
    state = Path(user_install.paths.state_dir) / "klogscanner.state"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(b"\x00not json")
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(kmsg_file(WARN))
    with Probd(user_install) as probd:
        r = run(user_install, "klogscanner", "--kmsg", str(kmsg), "--once")
        assert r.returncode == 0 and "starting afresh" in r.stderr.decode()
        assert len(rows(probd)) == 1


def test_klogscanner_reads_the_real_kernel_log(user_install):
    """Read-only and sends nothing (--dry-run): just proves /dev/kmsg is read as it is."""
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
    except OSError as e:
        pytest.skip(f"/dev/kmsg not readable here: {e.strerror}")
    r = run(user_install, "klogscanner", "--once", "--dry-run")
    assert r.returncode == 0, r.stderr


# --- pstore ---------------------------------------------------------------------------------

PANIC_PART2 = "Panic#1 Part2\n<4>[  1.0] BUG: unable to handle kernel paging request at 0000000000002658\n" \
              "<4>[  1.0] CPU: 1 PID: 2 Comm: x Tainted: G        W  6.1.0 #1\n<4>[  1.0] Call Trace:\n"
PANIC_PART1 = "Panic#1 Part1\n<4>[  1.0]  <TASK>\n<4>[  1.0]  panic+0x1/0x2\n" \
              "<0>[  1.0] Kernel panic - not syncing: Fatal exception"  # no final newline


def efi_name(count: int, part: int, stamp: int = 1700000000) -> str:
    return f"dmesg-efi-{(stamp * 100 + part) * 1000 + count}"


def test_pstoreprobe_sends_and_then_removes(user_install, tmp_path):
    cache = tmp_path / "pcache"
    cache.mkdir()
    (cache / efi_name(1, 2)).write_text(PANIC_PART2)
    (cache / efi_name(1, 1)).write_text(PANIC_PART1)
    (cache / "dmesg-ramoops-0").write_text("Oops#1 Part1\n" + "\n".join(WARN) + "\n")
    (cache / efi_name(2, 2)).write_text("Oops#2 Part2\nBUG: incomplete\n")  # part 1 missing
    (cache / "console-ramoops-0").write_text("not a dmesg dump\n")
    os.symlink("/etc/passwd", cache / "dmesg-ramoops-7")
    with Probd(user_install) as probd:
        r = run(user_install, "pstoreprobe", "--cache-dir", str(cache))
        assert r.returncode == 0, r.stderr
        assert "dmesg-ramoops-7 is a symbolic link; not followed" in r.stderr.decode()
        bug, panic, warn = rows(probd)
        check_row(bug, "org.clearlinux/kernel/bug", 4, (
            b"Crash Report:\nReason: BUG: unable to handle kernel paging request at 0000000000002658\n"
            b"Kernel Version : 6.1.0 #1\nTainted : G        W  6.1.\nBacktrace :\n#1 panic - [kernel]\n"))
        check_row(panic, "org.clearlinux/kernel/panic", 4,
                  b"Crash Report:\nReason: Kernel panic - not syncing: Fatal exception\n")
        check_row(warn, "org.clearlinux/kernel/warning", 2, warn.payload)
        assert warn.payload.startswith(b"Crash Report:\nReason: WARNING: CPU: 0 PID: 1")
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted(["console-ramoops-0", "dmesg-ramoops-7", efi_name(2, 2)])


def test_pstoreprobe_keeps_dumps_it_could_not_send(user_install, tmp_path):
    cache = tmp_path / "pcache"
    cache.mkdir()
    (cache / "dmesg-ramoops-0").write_text("Oops#1 Part1\n" + "\n".join(WARN) + "\n")
    user_install.opt_in()
    user_install.write_config(f"socket_path={tmp_path}/absent.sock\n")
    r = run(user_install, "pstoreprobe", "--cache-dir", str(cache))
    assert r.returncode == 1 and "kept for the next run" in one_line(r.stderr)
    assert (cache / "dmesg-ramoops-0").exists()
    with Probd(user_install) as probd:
        assert run(user_install, "pstoreprobe", "--cache-dir", str(cache)).returncode == 0
        assert len(rows(probd)) == 1 and not (cache / "dmesg-ramoops-0").exists()


def test_pstoreprobe_bad_directory(user_install, tmp_path):
    user_install.opt_in()
    (tmp_path / "file").touch()
    r = run(user_install, "pstoreprobe", "--cache-dir", str(tmp_path / "file"))
    assert r.returncode == 1 and one_line(r.stderr).startswith("pstoreprobe: Could not open pstore dump directory")
    r = run(user_install, "pstoreprobe", "--cache-dir", str(tmp_path / "none"))
    assert r.returncode == 0


def test_pstoreclean_moves_only_what_it_copied(user_install, tmp_path):
    pstore, cache = tmp_path / "pstore", tmp_path / "pcache"
    pstore.mkdir()
    cache.mkdir()
    (pstore / "dmesg-efi-1").write_bytes(b"Oops#1 Part1\nBUG: a\n")
    (pstore / "dmesg-ramoops-0").write_bytes(b"new dump")
    (cache / "dmesg-ramoops-0").write_bytes(b"older dump, not yet sent")
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", pstore / "dmesg-efi-2")
    user_install.opt_in()
    r = run(user_install, "pstoreclean", "--pstore-dir", str(pstore), "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    copy = cache / "dmesg-efi-1"
    assert copy.read_bytes() == b"Oops#1 Part1\nBUG: a\n" and stat.S_IMODE(copy.stat().st_mode) == 0o444
    assert sorted(p.name for p in pstore.iterdir()) == ["dmesg-efi-2", "dmesg-ramoops-0"]
    assert (cache / "dmesg-ramoops-0").read_bytes() == b"older dump, not yet sent"
    assert not (cache / "dmesg-efi-2").exists()
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) != 0o444
    r = run(user_install, "pstoreclean", "--pstore-dir", str(tmp_path / "none"), "--cache-dir", str(cache))
    assert r.returncode == 0


def test_pstoreclean_then_pstoreprobe(user_install, tmp_path):
    pstore, cache = tmp_path / "pstore", tmp_path / "pcache"
    pstore.mkdir()
    (pstore / efi_name(1, 2)).write_text(PANIC_PART2)
    (pstore / efi_name(1, 1)).write_text(PANIC_PART1)
    with Probd(user_install) as probd:
        assert run(user_install, "pstoreclean", "--pstore-dir", str(pstore), "--cache-dir", str(cache)).returncode == 0
        assert list(pstore.iterdir()) == []
        assert run(user_install, "pstoreprobe", "--cache-dir", str(cache)).returncode == 0
        assert [headers(r)["classification"] for r in rows(probd)] == [
            "org.clearlinux/kernel/bug", "org.clearlinux/kernel/panic"]
        assert list(cache.iterdir()) == []
