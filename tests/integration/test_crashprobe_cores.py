"""crashprobe on real cores of programs compiled here, compared with gdb frame by frame.

Every program is built with gcc in the test (PIE and not, -O0 and -O2 -fomit-frame-pointer,
stripped, threads, abort() in libc, a crash in a signal handler, a crash in a shared
library of the test, a call through a null pointer, recursion past the frame cap); its
core is the kernel's (RLIMIT_CORE raised, core_pattern writing files) or gdb's gcore.
crashprobe reads every core through a pipe, as the kernel hands it over.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from crash_programs import (
    UNKNOWN,
    Lab,
    gdb_backtraces,
    libc_debug_file,
    payload_threads,
    same_function,
    shared_lab,
    source_line,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                reason="crashprobe unwinds x86-64 cores")


@pytest.fixture
def lab(tmp_path_factory) -> Lab:
    return shared_lab(tmp_path_factory)


def crashprobe(inst, core: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`crashprobe --core -` with the core written into a pipe."""
    return inst.run("telemetry.probes.crash", "--core", "-", *args, input=core.read_bytes(), env=env)


def our_threads(inst, core: Path, *args: str) -> list:
    r = crashprobe(inst, core, *args)
    assert r.returncode == 0, r.stderr.decode()
    assert b"Traceback" not in r.stderr
    return payload_threads(r.stdout.decode())


def assert_same_as_gdb(ours: list, gdbs: list[str]) -> None:
    names = [f.name for f in ours]
    assert len(names) >= len(gdbs), f"ours {names} vs gdb {gdbs}"
    for i, g in enumerate(gdbs):
        assert same_function(names[i], g), f"frame #{i}: ours {names[i]!r}, gdb {g!r}\nours {names}\ngdb  {gdbs}"


CASES = [
    ("O0", "segv", ["leaf", "middle", "top", "main"]),
    ("O0", "abort", [UNKNOWN, "raise", "abort", "do_abort", "main"]),
    ("O0", "handler", ["on_usr1", "<signal>", UNKNOWN, "raise", "raise_usr1", "in_handler", "main"]),
    ("O0", "nullcall", [UNKNOWN, "call_null", "main"]),
    ("O0", "lib", ["lib_inner", "lib_crash", "in_lib", "main"]),
    ("O2", "segv", ["leaf", "middle", "top", "main"]),
    ("O2", "handler", None),
    ("O2", "lib", ["lib_inner", "lib_crash", "in_lib", "main"]),
    ("nopie", "segv", ["leaf", "middle", "top", "main"]),
    ("nopie", "abort", None),
    ("stripped", "segv", None),
    ("debugframe", "segv", ["leaf", "middle", "top", "main"]),
    ("fponly", "segv", ["leaf", "middle", "top", "main"]),
]


@pytest.mark.parametrize(("variant", "mode", "expected"), CASES, ids=[f"{v}-{m}" for v, m, _ in CASES])
def test_crashing_thread_matches_gdb(user_install, lab, variant, mode, expected):
    core = lab.core(variant, mode)
    exe = lab.exe(variant)
    gdb = gdb_backtraces(exe, core, debug_dir=str(lab.empty_debug_dir))[0]
    if not gdb:
        pytest.skip("gdb printed no backtrace")
    if expected is not None:
        assert gdb[: len(expected)] == expected  # the program crashed where the test meant it to
    threads = our_threads(user_install, core, "--debug-dir", "")
    assert_same_as_gdb(threads[0][1], gdb)


def test_stripped_binary_keeps_modules_and_offsets(user_install, lab):
    threads = our_threads(user_install, lab.core("stripped", "segv"), "--debug-dir", "")
    frames = threads[0][1]
    assert frames[0].name == UNKNOWN
    exe = str(lab.exe("stripped"))
    assert frames[0].line.startswith(f"#0 ??? - [{exe}] (+0x")
    assert len(frames) >= 4  # CFI still walks the stripped frames: leaf, middle, top, main


def test_every_thread_matches_gdb(user_install, lab):
    core = lab.core("O2", "thread")
    gdb = gdb_backtraces(lab.exe("O2"), core, debug_dir=str(lab.empty_debug_dir), all_threads=True)
    crashing = gdb_backtraces(lab.exe("O2"), core, debug_dir=str(lab.empty_debug_dir))[0]
    threads = our_threads(user_install, core, "--debug-dir", "")
    assert len(threads) == 3 == len(gdb)
    tid, frames = threads[0]
    assert [f.name for f in frames][:5] == ["leaf", "middle", "top", "crash_thread", UNKNOWN]
    assert_same_as_gdb(frames, crashing)  # the thread that crashed comes first
    for tid, frames in threads:
        assert_same_as_gdb(frames, gdb[tid])
    assert {f.name for _, fr in threads for f in fr} >= {"idle_thread", "threads", "main"}


def test_gdb_core_with_notes_after_memory(user_install, lab):
    """gcore writes the notes last: the reader keeps memory speculatively, then prunes."""
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed")
    for mode in ("segv", "thread"):
        core = lab.core("O0", mode, method="gcore")
        gdb = gdb_backtraces(lab.exe("O0"), core, debug_dir=str(lab.empty_debug_dir))[0]
        threads = our_threads(user_install, core, "--debug-dir", "")
        assert_same_as_gdb(threads[0][1], gdb)
        assert [f.name for f in threads[0][1]][:3] == ["leaf", "middle", "top"]


def test_frame_cap_truncates_and_says_so(user_install, lab):
    core = lab.core("O0", "deep")
    r = crashprobe(user_install, core, "--debug-dir", "")
    payload = r.stdout.decode()
    assert "Too many frames. Backtrace truncated.\n" in payload
    frames = payload_threads(payload)[0][1]
    assert len(frames) == 64 or len(payload.encode()) > 8000  # the frame cap, or the payload limit first
    gdb = gdb_backtraces(lab.exe("O0"), core, debug_dir=str(lab.empty_debug_dir))[0]
    assert len(gdb) > 100
    assert_same_as_gdb(frames, gdb[: len(frames)])


def test_debug_info_gives_source_lines_and_libc_internals(user_install, lab):
    core = lab.core("O0", "abort")
    threads = our_threads(user_install, core)
    frames = threads[0][1]
    by_name = {f.name: f.line for f in frames}
    assert by_name["do_abort"].endswith(f"crasher.c:{source_line('void do_abort(void)')}")
    assert by_name["main"].split(" - ")[-1].startswith(str(lab.exe("O0").parent / "crasher.c:"))
    if libc_debug_file() is None:
        pytest.skip("libc's debug file is not installed (libc6-dbg)")
    gdb = gdb_backtraces(lab.exe("O0"), core, debug_dir=None)[0]
    # The debug file's symbol table names libc's static functions, as gdb does; gdb adds
    # frames for inlined and tail-called functions, which a core's stack does not hold.
    assert frames[0].name == "__pthread_kill_implementation" == gdb[0]
    assert frames[0].line.endswith("pthread_kill.c:44")
    assert [f.name for f in frames[1:5]] == ["raise", "abort", "do_abort", "main"]
    assert all("(+0x" not in f.line for f in frames[:5])  # every one of them has a source line


def test_payload_header_and_layout(user_install, lab):
    """The documented offline form on a local build: no path filter (that is for what the
    kernel reports), and a relative --exe resolved, so every frame is named."""
    core = lab.core("O0", "segv")
    exe = lab.exe("O0")
    r = subprocess.run([sys.executable, "-m", "telemetry.probes.crash", "--core", str(core), "--exe", "./crasher",
                        "-s", "11", "--debug-dir", ""], cwd=exe.parent, env=user_install.env, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().split("\n")
    threads = payload_threads(r.stdout.decode())
    tid = threads[0][0]
    assert lines[:5] == [f"Process: {exe}", f"PID: {tid}", "Signal: 11", "", f"Backtrace (TID {tid}):"]
    assert lines[5] == f"#0 leaf() - [{exe}] - {exe.parent / 'crasher.c'}:{source_line('int leaf(int *p)')}"
    assert lines[-1] == ""
    assert all(line.startswith("#") for line in lines[5:-1])


def test_core_streams_through_a_pipe_with_bounded_memory(lab):
    """A 64 MB heap is skipped unread: the reader keeps a few stacks and pages only."""
    from telemetry.probes.crash.source import read_core

    core = lab.core("O0", "heap")
    size = core.stat().st_size
    assert size > 64 << 20
    r, w = os.pipe()

    def writer():
        with open(core, "rb") as f, os.fdopen(w, "wb") as out:
            try:
                shutil.copyfileobj(f, out, 1 << 20)
            except BrokenPipeError:
                pass

    t = threading.Thread(target=writer)
    t.start()
    try:
        dump = read_core(r)
    finally:
        os.close(r)
        t.join()
    assert not dump.problems
    assert len(dump.threads) == 1
    assert len(dump.memory) < 2 << 20
    assert dump.bytes_read > size // 2  # it did go past the heap to the stack


def test_truncated_cores_give_partial_reports(user_install, lab):
    data = lab.core("O0", "segv").read_bytes()
    cuts = [0, 10, 64, 100, 700, 2000, 8192, len(data) // 2, len(data) - 1]
    for cut in cuts:
        r = user_install.run("telemetry.probes.crash", "--core", "-", "--debug-dir", "", input=data[:cut])
        assert b"Traceback" not in r.stderr
        if cut < 64:  # not even an ELF header: no core at all, one line and exit 1
            assert r.returncode == 1 and r.stdout == b"", (cut, r.stderr)
            assert r.stderr.decode().splitlines()[-1].startswith("crashprobe: -: not an ELF core"), r.stderr
            continue
        assert r.returncode == 0, (cut, r.stderr)
        payload = r.stdout.decode()
        assert payload.startswith("Process: ")
        if cut < len(data) // 2:
            assert "\nError: " in payload, (cut, payload)


def test_max_core_size_caps_what_is_read(user_install, lab):
    user_install.write_config("crash_max_core_size=1\n")
    core = lab.core("O0", "heap")
    r = crashprobe(user_install, core, "--debug-dir", "")
    assert r.returncode == 0
    assert "Error: core larger than the 1 MiB read limit" in r.stdout.decode()


def test_gcore_of_a_live_process(user_install, lab):
    """What the kernel-mode tests use: a process still alive while its core is read."""
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed")
    proc = subprocess.Popen([str(lab.exe("O0")), "wait"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        target = lab.root / f"live-{proc.pid}.core"
        subprocess.run(["gcore", "-o", str(target.with_suffix("")), str(proc.pid)], capture_output=True, timeout=60)
        produced = list(lab.root.glob(f"live-{proc.pid}*"))
        if not produced:
            pytest.skip("gcore could not attach (ptrace restricted)")
        threads = our_threads(user_install, produced[0], "--debug-dir", "")
        names = [f.name for f in threads[0][1]]
        assert "main" in names and names[0] in ("pause", "__libc_pause", UNKNOWN)
    finally:
        proc.kill()
        proc.wait()


def test_separate_debug_file_found_by_build_id(user_install, lab, tmp_path):
    """A stripped program whose debug file sits in a .build-id tree gets its names and lines back."""
    if shutil.which("objcopy") is None:
        pytest.skip("binutils' objcopy is not installed")
    exe = lab.exe("O0")
    core = lab.core("O0", "segv")
    out = subprocess.run(["readelf", "-n", str(exe)], capture_output=True, text=True).stdout
    build_id = out.split("Build ID: ", 1)[1].split()[0]
    debug_dir = tmp_path / "debug"
    target = debug_dir / ".build-id" / build_id[:2] / (build_id[2:] + ".debug")
    target.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(target)], check=True)
    stripped = tmp_path / "crasher"
    subprocess.run(["objcopy", "--strip-all", str(exe), str(stripped)], check=True)
    # the core maps the original path; --exe points at the stripped copy with the same build id
    Path(user_install.paths.no_privacy_filters_file).parent.mkdir(parents=True, exist_ok=True)
    Path(user_install.paths.no_privacy_filters_file).touch()
    plain = our_threads(user_install, core, "--exe", str(stripped), "--debug-dir", "")
    assert [f.name for f in plain[0][1]][:4] == [UNKNOWN] * 4
    found = our_threads(user_install, core, "--exe", str(stripped), "--debug-dir", str(debug_dir))
    frames = found[0][1]
    assert [f.name for f in frames][:4] == ["leaf", "middle", "top", "main"]
    assert frames[0].line.endswith(f"crasher.c:{source_line('int leaf(int *p)')}")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzzed_real_cores_through_the_cli(user_install, lab, data):
    """A real core with bytes flipped in its headers and notes, cut anywhere, on a pipe:
    always one bounded payload, never a traceback."""
    core = bytearray(lab.core("O0", "segv").read_bytes())
    for _ in range(data.draw(st.integers(1, 12), label="flips")):
        pos = data.draw(st.integers(0, 8192), label="at")
        core[pos] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.sampled_from([len(core), len(core) // 2, 4096, 300]), label="cut")
    r = user_install.run("telemetry.probes.crash", "--core", "-", "--debug-dir", "", input=bytes(core[:cut]))
    assert b"Traceback" not in r.stderr
    if r.returncode == 1:  # the flips hit the ELF header: no core at all, said in one line
        assert r.stdout == b"" and r.stderr.decode().splitlines()[-1].startswith("crashprobe: -: not a")
        return
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"Process: ") and len(r.stdout) <= 8192
    r.stdout.decode("utf-8")


def test_offline_as_root_analyses_as_the_service_account_and_says_nothing_of_the_cache(lab):
    """Root's offline run drops to the service account before it parses the core; that
    account may not write root's cache, so it does not try (no message on every run)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: system mode drops privileges only as root")
    from telemetry.probes.crash.privileges import service_account

    if service_account() is None:
        pytest.skip("neither the telemetry account nor nobody exists: root would write its cache")
    core = lab.core("O0", "segv")
    with tempfile.TemporaryDirectory(dir="/tmp") as shared:  # the service account reads the program
        os.chmod(shared, 0o755)
        exe = Path(shutil.copy(lab.exe("O0"), shared))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEM", "XDG_"))}
        r = subprocess.run([sys.executable, "-m", "telemetry.probes.crash", "--core", str(core), "--exe", str(exe),
                            "--debug-dir", ""], env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""
    assert r.stdout.decode().startswith(f"Process: {exe}\n")
