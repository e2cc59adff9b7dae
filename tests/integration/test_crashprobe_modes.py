"""crashprobe as the kernel, an admin and systemd-coredump run it, against a real
telemprobd: identity from /proc and a pidfd, the original's filters, unsafe dumps,
containers, flood control, the time limit, the journal mode, and every bad input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_programs import Lab, shared_lab
from support import no_such_option, wait_until
from telemprobd_harness import Probd, row_headers, rows

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="crashprobe unwinds x86-64 cores")

MODULE = "telemetry.probes.crash"
GARBAGE = b"this is not a core file\n" * 100


@pytest.fixture
def lab(tmp_path_factory) -> Lab:
    return shared_lab(tmp_path_factory)


def bang(path: Path | str) -> str:
    return str(path).replace("/", "!")


def filters_off(inst) -> None:
    path = Path(inst.paths.no_privacy_filters_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def handler(inst, *args: str, core: bytes = b"", **kw) -> subprocess.CompletedProcess:
    """crashprobe started as the kernel starts it: arguments from core_pattern, core on a pipe."""
    return subprocess.run([sys.executable, "-m", MODULE, *args], input=core, capture_output=True,
                          env=kw.pop("env", inst.env), timeout=120, **kw)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.decode().strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 1, err
    return err or r.stdout.decode().strip()


# --- the kernel's invocation ----------------------------------------------------------

@pytest.fixture
def live(lab):
    """A process of the test program that is still alive, and a gcore of it, as the kernel
    has both while it pipes a core to its handler."""
    if shutil.which("gcore") is None:
        pytest.skip("gdb's gcore is not installed")
    exe = lab.exe("O0")
    proc = subprocess.Popen([str(exe), "wait"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        base = lab.root / f"live-{proc.pid}"
        subprocess.run(["gcore", "-o", str(base), str(proc.pid)], capture_output=True, timeout=60)
        produced = sorted(lab.root.glob(f"live-{proc.pid}*"))
        if not produced:
            pytest.skip("gcore could not attach to a live process (ptrace restricted)")
        yield proc, exe, produced[0].read_bytes()
    finally:
        proc.kill()
        proc.wait()


def kernel_args(proc, exe: Path, pidfd: int | None, **over: str) -> list[str]:
    values = {"pid": str(proc.pid), "uid": str(os.getuid()), "gid": str(os.getgid()), "dump-mode": "1",
              "time": str(int(time.time())), "pidfd": "" if pidfd is None else str(pidfd)}
    values.update(over)
    return ["-p", "crasher", "-E", bang(exe), "-s", "11", *(f"--{k}={v}" for k, v in values.items())]


def test_kernel_invocation_reports_one_record(user_install, live):
    proc, exe, core = live
    filters_off(user_install)
    pidfd = os.pidfd_open(proc.pid)
    try:
        with Probd(user_install) as probd:
            r = handler(user_install, *kernel_args(proc, exe, pidfd), core=core, pass_fds=(pidfd,))
            assert r.returncode == 0, r.stderr.decode()
            [row] = rows(probd)
    finally:
        os.close(pidfd)
    h = row_headers(row)
    assert (h["classification"], h["severity"]) == ("org.clearlinux/crash/clr", "3")
    payload = row.payload.decode()
    assert payload.startswith(f"Process: {exe}\nPID: {proc.pid}\nSignal: 11\n\nBacktrace (TID {proc.pid}):\n")
    assert f"main() - [{exe}] - " in payload
    assert "Error:" not in payload


def test_kernel_without_the_newer_specifiers(user_install, live):
    """An older kernel expands %F (and others) to nothing: the report is still made."""
    proc, exe, core = live
    filters_off(user_install)
    with Probd(user_install) as probd:
        r = handler(user_install, *kernel_args(proc, exe, None, uid="", gid="", **{"dump-mode": ""}), core=core)
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    assert "main() - [" in row.payload.decode()


def test_recycled_pid_is_detected(user_install, live):
    proc, exe, core = live
    filters_off(user_install)
    with Probd(user_install) as probd:
        # the dump is said to predate this process: its pid must belong to another one now
        r = handler(user_install, *kernel_args(proc, exe, None, time=str(int(time.time()) - 3600)), core=core)
        assert r.returncode == 0
        assert b"reused" in r.stderr
        [row] = rows(probd)  # reported from the core alone
    assert "Backtrace (TID" in row.payload.decode()


def test_pidfd_of_another_process_is_refused(user_install, live):
    proc, exe, core = live
    filters_off(user_install)
    other = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(other.pid)
    try:
        with Probd(user_install) as probd:
            r = handler(user_install, *kernel_args(proc, exe, pidfd), core=core, pass_fds=(pidfd,))
            assert r.returncode == 0
            assert b"does not refer to pid" in r.stderr
            assert len(rows(probd)) == 1
    finally:
        os.close(pidfd)
        other.kill()
        other.wait()


def test_unsafe_dump_gets_a_stub_and_is_never_read(user_install):
    filters_off(user_install)
    with Probd(user_install) as probd:
        r = handler(user_install, "-p", "sudo", "-E", "!usr!bin!sudo", "-s", "11", "--dump-mode=2", core=GARBAGE)
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    assert row_headers(row)["classification"] == "org.clearlinux/crash/clr"
    assert row.payload.decode() == (
        "Process: /usr/bin/sudo\nSignal: 11\n\n"
        "Backtrace: not collected (the kernel marked this dump unsafe (setuid, or dump mode 2))\n"
    )


@pytest.mark.parametrize(
    ("path", "classification", "payload"),
    [
        ("!builddir!build!BUILD!pkg!a.out", "org.clearlinux/crash/clr-build", b"Crash from Clear package build\n"),
        ("/opt/thing/bin/x", "org.clearlinux/crash/unknown", b"Crash from third party\n"),
        ("!usr!local!bin!x", "org.clearlinux/crash/unknown", b"Crash from third party\n"),
    ],
)
def test_path_filters_never_read_the_core(user_install, path, classification, payload):
    with Probd(user_install) as probd:
        r = handler(user_install, "-p", "x", "-E", path, "-s", "6", core=GARBAGE)
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    assert row_headers(row)["classification"] == classification
    assert row_headers(row)["severity"] == "2"
    assert row.payload == payload


def test_garbage_core_gives_an_error_record(user_install):
    with Probd(user_install) as probd:
        r = handler(user_install, "-p", "x", "-E", "!usr!bin!x", "-s", "11", core=GARBAGE)
        assert r.returncode == 0
        [row] = rows(probd)
    assert row_headers(row)["classification"] == "org.clearlinux/crash/error"
    assert row_headers(row)["severity"] == "4"
    assert row.payload == b"Process: /usr/bin/x\nSignal: 11\nError: not an ELF core: bad magic\n"


@pytest.fixture
def contained():
    """A process in a mount namespace of its own, as a container's processes are."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a process in another mount namespace needs root (unshare -m)")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.skip("unshare could not create a mount namespace here")
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_foreign_mount_namespace_is_not_read_from_the_host(user_install, contained):
    with Probd(user_install) as probd:
        r = handler(user_install, "-p", "sleep", "-E", "!usr!bin!sleep", "-s", "11", f"--pid={contained.pid}",
                    f"--time={int(time.time())}", core=GARBAGE)
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    assert row_headers(row)["classification"] == "org.clearlinux/crash/unknown"
    assert row.payload == b"Crash from third party\n"
    assert b"another mount namespace" in r.stderr


def test_foreign_mount_namespace_read_through_its_root(user_install, contained, tmp_path):
    """With the privacy filters off, a container's crash is analysed with the container's
    own files, opened through /proc/PID/root (openat2 RESOLVE_IN_ROOT)."""
    if shutil.which("gcore") is None:
        pytest.skip("gdb's gcore is not installed")
    where = tmp_path / "gcore"
    where.mkdir()
    subprocess.run(["gcore", "-o", str(where / "c"), str(contained.pid)], capture_output=True, timeout=60)
    produced = list(where.glob("c*"))
    if not produced:
        pytest.skip("gcore could not attach to the contained process")
    filters_off(user_install)
    with Probd(user_install) as probd:
        r = handler(user_install, "-p", "sleep", "-E", "!usr!bin!sleep", "-s", "11", f"--pid={contained.pid}",
                    f"--time={int(time.time())}", "--debug-dir", "", core=produced[0].read_bytes())
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    payload = row.payload.decode()
    assert row_headers(row)["classification"] == "org.clearlinux/crash/clr"
    assert "nanosleep() - [/usr/lib/x86_64-linux-gnu/libc.so.6]" in payload or "nanosleep() - [/lib/" in payload


# --- flood control ------------------------------------------------------------------------

def test_crash_loop_gives_one_report_per_window(user_install, lab):
    core = lab.core("O0", "segv").read_bytes()
    filters_off(user_install)
    with Probd(user_install, "crash_flood_window=3600\ncrash_daily_cap=10") as probd:
        results = [handler(user_install, "-p", "crasher", "-E", "!usr!bin!crasher", "-s", "11", core=core)
                   for _ in range(3)]
        assert [r.returncode for r in results] == [0, 0, 0]
        assert len(rows(probd)) == 1
    assert b"within-window" in results[2].stderr
    state = json.loads(Path(user_install.paths.state_dir, "crashprobe-flood.json").read_text())
    assert (state["reported"], state["suppressed_window"]) == (1, 2)


def test_daily_cap_per_executable(user_install):
    with Probd(user_install, "crash_flood_window=0\ncrash_daily_cap=2") as probd:
        for _ in range(4):
            assert handler(user_install, "-p", "x", "-E", "!opt!a", "-s", "11", core=GARBAGE).returncode == 0
        assert handler(user_install, "-p", "x", "-E", "!opt!b", "-s", "11", core=GARBAGE).returncode == 0
        assert len(rows(probd)) == 3  # two of a, one of b
    state = json.loads(Path(user_install.paths.state_dir, "crashprobe-flood.json").read_text())
    assert state["suppressed_cap"] == 2


def test_damaged_flood_state_is_replaced(user_install):
    Path(user_install.paths.state_dir).mkdir(parents=True, exist_ok=True)
    Path(user_install.paths.state_dir, "crashprobe-flood.json").write_bytes(b"\x00{not json")
    with Probd(user_install) as probd:
        assert handler(user_install, "-p", "x", "-E", "!opt!c", core=GARBAGE).returncode == 0
        assert len(rows(probd)) == 1


def plant(path: Path, kind: str, victim: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":
        path.symlink_to(victim)
    else:
        os.mkfifo(path)


@pytest.mark.parametrize(
    ("name", "kind", "unavailable"),
    [
        ("crashprobe-flood.json", "link", True),  # never written through: no state to count in
        ("crashprobe-flood.json", "fifo", False),  # never read (no hang), replaced by the state
        ("crashprobe-flood.json.lock", "link", True),
        ("crashprobe-flood.json.lock", "fifo", True),
    ],
)
def test_unusable_flood_state_does_not_silence_the_crash(user_install, tmp_path, name, kind, unavailable):
    """Whoever can write the state directory cannot suppress crash reports with it."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim\n")
    path = Path(user_install.paths.state_dir, name)
    plant(path, kind, victim)
    with Probd(user_install) as probd:
        r = handler(user_install, "-p", "x", "-E", "!opt!x", "-s", "11", core=GARBAGE)
        assert r.returncode == 0, r.stderr.decode()
        assert len(rows(probd)) == 1
    assert (b"flood control unavailable" in r.stderr) is unavailable, r.stderr.decode()
    assert b"Traceback" not in r.stderr
    assert victim.read_bytes() == b"victim\n"


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_unusable_analysis_lock_gives_a_stub(user_install, tmp_path, kind):
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim\n")
    plant(Path(user_install.paths.state_dir, "crashprobe.lock"), kind, victim)
    with Probd(user_install) as probd:
        r = handler(user_install, "-p", "x", "-E", "!usr!bin!x", "-s", "11", core=GARBAGE)
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    assert row.payload.decode().endswith("\nBacktrace: not collected (the analysis lock is unavailable)\n")
    assert b"reported without a backtrace" in r.stderr
    assert victim.read_bytes() == b"victim\n"


# --- limits ------------------------------------------------------------------------------

def test_time_limit_ends_a_stalled_core_with_an_error_record(user_install, lab):
    core = lab.core("O0", "segv").read_bytes()
    filters_off(user_install)
    with Probd(user_install, "crash_time_limit=1") as probd:
        proc = subprocess.Popen([sys.executable, "-m", MODULE, "-p", "crasher", "-E", "!usr!bin!crasher"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=user_install.env)
        proc.stdin.write(core[:8192])  # the headers and notes, then the writer stalls
        proc.stdin.flush()
        try:
            proc.wait(timeout=60)
        finally:
            proc.stdin.close()
        err = proc.stderr.read()
        assert proc.returncode == 0, err.decode()
        [row] = rows(probd)
    assert row_headers(row)["classification"] == "org.clearlinux/crash/error"
    assert "Error: time limit of 1 s reached" in row.payload.decode()


def test_not_opted_in_reads_nothing_sends_nothing(user_install):
    r = handler(user_install, "-p", "x", "-E", "!usr!bin!x", core=GARBAGE)
    assert r.returncode == 0
    assert b"not opted in" in r.stderr


def test_daemon_away_is_a_failure(user_install):
    user_install.opt_in()
    r = handler(user_install, "-p", "x", "-E", "!opt!x", core=GARBAGE)
    assert r.returncode == 1
    assert b"Failed to send record" in r.stderr
    assert b"Traceback" not in r.stderr


def test_original_file_mode_and_verbose(user_install, lab):
    core = lab.core("O0", "segv")
    filters_off(user_install)
    with Probd(user_install) as probd:
        r = user_install.run(MODULE, "-p", "crasher", "-c", str(core), "-v", "--debug-dir", "")
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    assert r.stdout.decode() == row.payload.decode() + "\n"
    assert "#0 leaf() - [" in r.stdout.decode()


def test_offline_send(user_install, lab):
    core = lab.core("O0", "segv")
    with Probd(user_install) as probd:
        r = user_install.run(MODULE, "--core", str(core), "--send", "--debug-dir", "")
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    assert r.stdout == row.payload


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "x", "-s", "abc"], "invalid signal number 'abc': must be an integer"),
        (["-p", "x", "-s", "11", "--pid=12x"], "--pid='12x' is not a number"),
        (["-p", "x", "--dump-mode=7"], "--dump-mode=7 is out of range (0..2)"),
        (["-p", "x", "--pidfd=-3"], "--pidfd=-3 is out of range"),
        ([], "Missing required -p option. See --help output"),
        (["--core", "/nonexistent/core"], "Failed to open input core file /nonexistent/core: No such file"),
        (["--follow"], "--follow needs --journal"),
        (["-p", "x", "--send"], "--send goes with --core"),
        (["-p", "x", "-f", "relative.conf"], "must be absolute"),
        (["--bogus"], no_such_option("--bogus")),
    ],
)
def test_bad_arguments_one_line_and_exit_1(user_install, args, message):
    r = handler(user_install, *args)
    assert message in one_line_error(r)


def test_core_through_a_symlink_is_refused(user_install, lab, tmp_path):
    link = tmp_path / "core-link"
    link.symlink_to(lab.core("O0", "segv"))
    for args in (["--core", str(link)], ["-p", "x", "-c", str(link)]):
        user_install.opt_in()
        err = one_line_error(user_install.run(MODULE, *args))
        assert "symbolic link" in err


def test_stdin_that_is_not_a_core_source(user_install):
    user_install.opt_in()
    with open(os.devnull, "rb") as null:
        r = subprocess.run([sys.executable, "-m", MODULE, "-p", "x"], stdin=null, capture_output=True,
                           env=user_install.env, timeout=60)
    assert r.returncode == 1
    assert r.stdout.decode() == "Cannot process core file. Use the -c option, or pass the core file on stdin.\n"


def test_bad_config_value(user_install):
    user_install.write_config("crash_time_limit=abc\n")
    err = one_line_error(handler(user_install, "-p", "x", core=GARBAGE))
    assert "crash_time_limit" in err and "not an integer" in err


def test_help_and_version(user_install):
    r = handler(user_install, "--help")
    assert r.returncode == 0 and b"--core PATH" in r.stdout
    r = handler(user_install, "-V")
    assert r.returncode == 0 and r.stdout.strip()


def test_closed_stdout_and_stderr_as_the_kernel_leaves_them(user_install, lab):
    """The kernel starts the handler with only stdin open; nothing may fail for that."""
    core = lab.core("O0", "segv").read_bytes()
    filters_off(user_install)
    with Probd(user_install) as probd:
        proc = subprocess.run(
            [sys.executable, "-c", "import os,sys,runpy; os.close(1); os.close(2); "
             f"sys.argv=['crashprobe','-p','crasher','-E','!usr!bin!crasher','-s','11']; "
             f"runpy.run_module('{MODULE}', run_name='__main__')"],
            input=core, env=user_install.env, timeout=120, capture_output=False,
        )
        assert proc.returncode == 0
        assert len(rows(probd)) == 1


# --- beside systemd-coredump: the journal mode ----------------------------------------------

JOURNAL_REMOTE = next(
    (p for p in ("/usr/lib/systemd/systemd-journal-remote", "/lib/systemd/systemd-journal-remote")
     if os.access(p, os.X_OK)),
    shutil.which("systemd-journal-remote"),
)


def export_entry(fields: dict[str, str | bytes]) -> bytes:
    out = b""
    for key, value in fields.items():
        if isinstance(value, str) and "\n" in value:
            value = value.encode()
        if isinstance(value, bytes):
            out += key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += f"{key}={value}\n".encode()
    return out


def coredump_entry(exe: Path, pid: int, **extra) -> dict[str, str | bytes]:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    return {
        "__REALTIME_TIMESTAMP": str(int(time.time() * 1e6)),
        "__MONOTONIC_TIMESTAMP": str(int(time.monotonic() * 1e6)),
        "_BOOT_ID": boot,
        "_UID": "0",
        "_GID": "0",
        "_EXE": "/usr/lib/systemd/systemd-coredump",
        "_COMM": "systemd-coredum",
        "MESSAGE_ID": "fc2e22bc6ee647b6b90729ab34a250b1",
        "MESSAGE": f"Process {pid} (crasher) of user 0 dumped core.",
        "COREDUMP_PID": str(pid),
        "COREDUMP_UID": str(os.getuid()),
        "COREDUMP_GID": str(os.getgid()),
        "COREDUMP_SIGNAL": "11",
        "COREDUMP_COMM": "crasher",
        "COREDUMP_EXE": str(exe),
        "COREDUMP_PROC_STATUS": f"Name:\tcrasher\nUid:\t{os.getuid()}\t{os.getuid()}\t{os.getuid()}\t{os.getuid()}\n",
        **extra,
    }


def write_journal(directory: Path, name: str, entries: list[dict]) -> None:
    directory.mkdir(exist_ok=True)
    data = b"\n".join(export_entry(e) for e in entries) + b"\n"
    subprocess.run([JOURNAL_REMOTE, f"--output={directory / name}", "-"], input=data, check=True,
                   capture_output=True, timeout=30)


@pytest.mark.skipif(JOURNAL_REMOTE is None, reason="systemd-journal-remote (Debian package "
                    "systemd-journal-remote) is needed to write journal files")
def test_journal_mode_reports_each_coredump_once(user_install, lab, tmp_path):
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed (systemd-coredump's compression)")
    exe = lab.exe("O0")
    core = lab.core("O0", "segv")
    stored = tmp_path / "core.crasher.zst"
    subprocess.run(["zstd", "-q", "-o", str(stored), str(core)], check=True)
    filters_off(user_install)
    jdir = tmp_path / "journal"
    write_journal(jdir, "a.journal", [
        coredump_entry(exe, 4242, COREDUMP_FILENAME=str(stored)),
        coredump_entry(exe, 4243, _UID=str(os.getuid() + 1), _EXE="/usr/bin/python3"),  # forged by a user
        coredump_entry(exe, 4244, COREDUMP=core.read_bytes()),
        coredump_entry(Path("/usr/bin/containerized"), 4245, COREDUMP_CONTAINER_CMDLINE="runc"),
    ])
    with Probd(user_install, "crash_flood_window=0") as probd:
        t = time.time() - 60  # opted in before these crashes: they are reported
        os.utime(user_install.paths.opt_in_file, (t, t))
        r = user_install.run(MODULE, "--journal", "--journal-dir", str(jdir), "--debug-dir", "")
        assert r.returncode == 0, r.stderr.decode()
        got = rows(probd)
        assert len(got) == 3, r.stderr.decode()
        first, second, third = (row.payload.decode() for row in got)
        assert first.startswith(f"Process: {exe}\nPID: ") and "#0 leaf() - [" in first
        assert "#0 leaf() - [" in second
        assert third == ("Process: /usr/bin/containerized\nPID: 4245\nSignal: 11\n\n"
                         "Backtrace: not collected (systemd-coredump kept no core (Storage=none or too large))\n")
        again = user_install.run(MODULE, "--journal", "--journal-dir", str(jdir))
        assert again.returncode == 0
        assert len(rows(probd)) == 3  # the cursor remembered what was reported
        write_journal(jdir, "b.journal", [coredump_entry(exe, 4246)])  # no core stored
        user_install.run(MODULE, "--journal", "--journal-dir", str(jdir))
        latest = rows(probd)[-1].payload.decode()
        assert len(rows(probd)) == 4
        assert "Backtrace: not collected (systemd-coredump kept no core" in latest


@pytest.mark.skipif(JOURNAL_REMOTE is None, reason="systemd-journal-remote is needed to write journal files")
def test_journal_mode_trusts_the_coredump_service_logging_as_the_crashed_user(user_install, lab, tmp_path):
    """systemd-coredump@.service drops to the crashed user before it logs (systemd 252): the
    entry's _UID is that user's, its _SYSTEMD_UNIT the service's.  The same fields with a
    user's own unit (systemd-coredump --backtrace run by hand) are a forgery."""
    exe = lab.exe("O0")
    filters_off(user_install)
    user = str(os.getuid() + 1)
    jdir = tmp_path / "journal"
    write_journal(jdir, "a.journal", [
        coredump_entry(exe, 4260, _UID=user, COREDUMP_UID=user, _SYSTEMD_UNIT="systemd-coredump@0-401-0.service"),
        coredump_entry(exe, 4261, _UID=user, COREDUMP_UID=user, _SYSTEMD_UNIT=f"user@{user}.service"),
        coredump_entry(exe, 4262, _UID=user, COREDUMP_UID=user),
    ])
    with Probd(user_install, "crash_flood_window=0") as probd:
        t = time.time() - 60
        os.utime(user_install.paths.opt_in_file, (t, t))
        r = user_install.run(MODULE, "--journal", "--journal-dir", str(jdir))
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
        assert row.payload.decode().startswith(f"Process: {exe}\nPID: 4260\n")
        said = r.stderr.decode()
        assert said.count("passed over a coredump journal entry that systemd-coredump did not write") == 2, said
        assert f"(uid {user}, unit user@{user}.service, executable /usr/lib/systemd/systemd-coredump)" in said


@pytest.mark.skipif(JOURNAL_REMOTE is None, reason="systemd-journal-remote is needed to write journal files")
def test_journal_follow_reports_a_crash_logged_after_it_started_waiting(user_install, lab, tmp_path):
    """--follow with nothing to report yet: an entry logged while it waits is read.  (The
    live journal's case, where sd-journal does not go on from a seek that found nothing, is
    tests/systemd/test_systemd_crash.py's: journal files written here do not show it.)"""
    exe = lab.exe("O0")
    filters_off(user_install)
    jdir = tmp_path / "journal"
    write_journal(jdir, "a.journal", [{**coredump_entry(exe, 4270), "MESSAGE_ID": "0" * 32}])  # not a crash
    with Probd(user_install, "crash_flood_window=0") as probd:
        t = time.time() - 60
        os.utime(user_install.paths.opt_in_file, (t, t))
        proc = user_install.popen(MODULE, "--journal", "--follow", "--journal-dir", str(jdir),
                                  stderr=subprocess.PIPE)
        try:
            def reading() -> bool:  # it has the journal open: what comes now comes while it waits
                fds = Path(f"/proc/{proc.pid}/fd")
                return any(os.readlink(fd).endswith("a.journal") for fd in fds.iterdir() if fd.is_symlink())
            wait_until(reading, what="crashprobe reading the journal")
            time.sleep(1)
            write_journal(jdir, "a.journal", [coredump_entry(exe, 4271)])  # appended, as journald does
            [row] = wait_until(lambda: rows(probd), what="the crash logged later, reported")
            assert "\nPID: 4271\n" in row.payload.decode()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.stderr.read().decode()
            proc.stderr.close()


@pytest.mark.skipif(JOURNAL_REMOTE is None, reason="systemd-journal-remote is needed to write journal files")
def test_journal_mode_damaged_cursor_starts_from_the_opt_in(user_install, lab, tmp_path):
    exe = lab.exe("O0")
    jdir = tmp_path / "journal"
    write_journal(jdir, "a.journal", [coredump_entry(exe, 4250)])
    cursor = Path(user_install.paths.state_dir, "crashprobe-journal.cursor")
    cursor.parent.mkdir(parents=True, exist_ok=True)
    cursor.write_bytes(b"\x00not a cursor\n")
    with Probd(user_install) as probd:
        t = time.time() - 60
        os.utime(user_install.paths.opt_in_file, (t, t))
        r = user_install.run(MODULE, "--journal", "--journal-dir", str(jdir))
        assert r.returncode == 0, r.stderr.decode()
        assert b"no valid journal cursor" in r.stderr
        assert len(rows(probd)) == 1
    assert cursor.read_bytes().startswith(b"s=")  # replaced by the entry's own


@pytest.mark.skipif(JOURNAL_REMOTE is None, reason="systemd-journal-remote is needed to write journal files")
def test_journal_mode_bad_directory(user_install, tmp_path):
    user_install.opt_in()
    r = user_install.run(MODULE, "--journal", "--journal-dir", str(tmp_path / "missing"))
    assert r.returncode in (0, 1)
    assert b"Traceback" not in r.stderr


# --- the analysis child -----------------------------------------------------------------

def test_kernel_path_never_imports_the_cli_framework(user_install, lab):
    core = lab.core("O0", "segv").read_bytes()
    filters_off(user_install)
    check = ("import atexit, runpy, sys; "
             "atexit.register(lambda: sys.stderr.write('click loaded: %s\\n' % ('click' in sys.modules))); "
             f"sys.argv = ['crashprobe', '-p', 'crasher', '-E', '!usr!bin!crasher', '-s', '11']; "
             f"runpy.run_module('{MODULE}', run_name='__main__')")
    with Probd(user_install) as probd:
        r = subprocess.run([sys.executable, "-c", check], input=core, capture_output=True, env=user_install.env,
                           timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    assert b"click loaded: False" in r.stderr
    assert "#0 leaf() - [" in row.payload.decode()


def test_stopped_analysis_is_killed_and_never_holds_the_lock(user_install, lab):
    """The crashed user can stop the analysis (it runs as them); the parent notices, reports
    without a backtrace, and the next crash is analysed at once."""
    import psutil

    core = lab.core("O0", "segv").read_bytes()
    filters_off(user_install)
    with Probd(user_install, "crash_flood_window=0") as probd:
        proc = subprocess.Popen([sys.executable, "-m", MODULE, "-p", "crasher", "-E", "!usr!bin!crasher"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=user_install.env)
        proc.stdin.write(core[:4096])  # the child reads this, then waits for more
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        children = []
        while not children and time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children()
            time.sleep(0.02)
        assert children, "no analysis child appeared"
        time.sleep(0.2)
        os.kill(children[0].pid, signal.SIGSTOP)
        try:
            proc.wait(timeout=30)
        finally:
            proc.stdin.close()
        err = proc.stderr.read().decode()
        assert proc.returncode == 0, err
        assert "stopped by a signal" in err
        second = handler(user_install, "-p", "crasher", "-E", "!usr!bin!crasher", core=core)
        assert second.returncode == 0, second.stderr.decode()
        first_row, second_row = rows(probd)
    assert first_row.payload.decode().endswith("Backtrace: not collected (the analysis was stopped by a signal)\n")
    assert "#0 leaf() - [" in second_row.payload.decode()  # the lock was free


def test_each_users_crash_loop_is_counted_for_that_user(user_install, lab):
    core = lab.core("O0", "segv").read_bytes()
    filters_off(user_install)
    with Probd(user_install, "crash_flood_window=3600") as probd:
        for uid in ("1000", "1000", "1001"):
            r = handler(user_install, "-p", "x", "-E", "!usr!bin!x", f"--uid={uid}", "--gid=100", core=core)
            assert r.returncode == 0, r.stderr.decode()
        got = rows(probd)
        assert len(got) == 2  # 1000's second crash is within its window; 1001's is its first
    if os.geteuid() == 0:  # sent on behalf of the crashed user: telemprobd counts it for them
        assert sorted(r.sender.uid for r in got) == [1000, 1001]
    state = json.loads(Path(user_install.paths.state_dir, "crashprobe-flood.json").read_text())
    assert sorted((e["uid"], e["suppressed"]) for e in state["executables"]) == [(1000, 1), (1001, 0)]
