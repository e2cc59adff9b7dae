"""crashprobe against gdb where a backtrace is easy to get wrong: compilers that write no
`.debug_aranges` (clang, Go), gdb's own cores (notes after the memory), hundreds of
threads, a pc outside every function, aliases, walks that end early, a module without a
build id.  Every core is made here by crashing a program compiled here."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import elftools
import pytest
from crash_programs import (
    GO_MAIN,
    UNKNOWN,
    gdb_backtraces,
    gdb_source_lines,
    libc_debug_file,
    payload_threads,
    shared_lab,
    source_line,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                reason="crashprobe unwinds x86-64 cores")
MODULE = "telemetry.probes.crash"

# What the minimums of the dependencies (Debian 12's) do not give: reading DWARF 5 line
# tables as clang and Go write them takes pyelftools 0.30; Rust names take the extra "rust".
ELFTOOLS_0_30 = pytest.mark.skipif(
    tuple(int(p) for p in elftools.__version__.split(".")[:2]) < (0, 30),
    reason="pyelftools before 0.30 (Debian 12 has 0.29) reads no line tables of clang- and Go-built code")
RUST_DEMANGLER = pytest.mark.skipif(
    importlib.util.find_spec("rust_demangler") is None,
    reason="rust-demangler (the extra 'rust') is not installed: Rust names stay mangled")


@pytest.fixture
def lab(tmp_path_factory):
    return shared_lab(tmp_path_factory)


def offline(inst, core: Path, *args: str, pipe: bool = False, env: dict | None = None) -> str:
    """`crashprobe --core` on the core file (seekable) or through a pipe, as the kernel hands it."""
    if pipe:
        r = inst.run(MODULE, "--core", "-", *args, input=core.read_bytes(), env=env)
    else:
        r = inst.run(MODULE, "--core", str(core), *args, env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert b"Traceback" not in r.stderr
    return r.stdout.decode()


def frames_of(payload: str, thread: int = 0) -> list:
    return payload_threads(payload)[thread][1]


def our_source(line: str) -> str | None:
    m = re.search(r" - (\S+:\d+)(?: \(inlined\))?$", line)
    return m.group(1) if m else None


@ELFTOOLS_0_30
def test_clang_build_has_every_source_line_gdb_has(user_install, lab):
    """clang writes no .debug_aranges and DWARF 5 directories relative to the build's."""
    exe, core = lab.exe("clang"), lab.core("clang", "segv")
    gdb = gdb_source_lines(exe, core)
    ours = [our_source(f.line) for f in frames_of(offline(user_install, core, "--debug-dir", ""))]
    own = [i for i, g in enumerate(gdb) if g and g.startswith(str(exe.parent))]
    assert len(own) >= 4  # leaf, middle, top, main
    for i in own:
        assert ours[i] == gdb[i], (i, ours, gdb)


@ELFTOOLS_0_30
def test_go_panic_has_source_lines(user_install, lab):
    exe, core = lab.program("go"), lab.program_core("go")
    payload = offline(user_install, core)
    names = [f.name for f in frames_of(payload)]
    assert "main.(*registry).add()" in [f"{n}()" for n in names] or "main.(*registry).add" in names
    add = next(f for f in frames_of(payload) if f.name == "main.(*registry).add")
    assert add.line.endswith(f"{exe.parent / 'main.go'}:{source_line('r.m[key] =', GO_MAIN)}"), add.line
    main = next(f for f in frames_of(payload) if f.name == "main.main")
    assert main.line.endswith(f"main.go:{source_line('r.add(', GO_MAIN)}"), main.line


def test_gdb_core_file_is_read_where_the_stack_is(user_install, lab):
    """gcore writes the notes last: a file is read where it needs to be, so a deep stack
    gives as many frames as the kernel's core of the same crash."""
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed")
    kernel = frames_of(offline(user_install, lab.core("O0", "deepbig"), "--debug-dir", ""))
    gcore = lab.core("O0", "deepbig", method="gcore")
    from_file = frames_of(offline(user_install, gcore, "--debug-dir", ""))
    assert [f.name for f in from_file] == [f.name for f in kernel]
    assert len(from_file) > 50  # the frame cap (64) or the payload limit, whichever comes first
    piped = offline(user_install, gcore, "--debug-dir", "", pipe=True)
    assert len(frames_of(piped)) < 64
    stop = [line for line in piped.splitlines() if line.startswith("Backtrace stopped: ")]
    assert stop and "as gdb writes cores" in stop[0] and "pipe" in stop[0], piped


def test_many_threads_budget_goes_to_the_crashing_thread(user_install, lab):
    """300 threads of 256 KiB stacks and a crash in the sixth: through a pipe, within the
    memory budget, the crashing thread comes first and whole, and the others keep frames."""
    core = lab.core("O0", "many")
    payload = offline(user_install, core, "--debug-dir", "", pipe=True)
    assert "\nError:" not in payload
    threads = payload_threads(payload)
    assert [f.name for f in threads[0][1]][:4] == ["leaf", "middle", "top", "many_thread"]
    assert all(len(frames) >= 2 for _, frames in threads[1:-1]), payload  # the last one may be cut by the size limit


def test_sparse_core_over_the_read_limit_still_yields_the_crashing_thread(user_install, lab):
    user_install.write_config("crash_max_core_size=8\n")
    core = lab.core("O0", "many")
    assert core.stat().st_size > 32 << 20
    payload = offline(user_install, core, "--debug-dir", "")
    assert "\nError:" not in payload
    assert [f.name for f in frames_of(payload)][:4] == ["leaf", "middle", "top", "many_thread"]
    piped = offline(user_install, core, "--debug-dir", "", pipe=True)  # a pipe cannot skip for free
    assert "Error: core larger than the 8 MiB read limit" in piped


def test_pc_in_data_is_named_after_the_data_object(user_install, lab):
    exe, core = lab.exe("O0"), lab.core("O0", "data")
    gdb = gdb_backtraces(exe, core, debug_dir=str(lab.empty_debug_dir))[0]
    names = [f.name for f in frames_of(offline(user_install, core, "--debug-dir", ""))]
    assert gdb[:3] == ["code_buf", "call_data", "main"]
    assert names[:3] == gdb[:3]  # not the last unsized symbol before it (_fini)


def test_wild_pc_shows_its_address(user_install, lab):
    frames = frames_of(offline(user_install, lab.core("O0", "wild"), "--debug-dir", ""))
    assert frames[0].line == "#0 (no symbols) at 0xdead0000"
    assert [f.name for f in frames[1:3]] == ["call_null", "main"]


def test_alias_choice_and_early_stop_as_gdb(user_install, lab):
    """A smashed stack: __stack_chk_fail (global) over __stack_chk_fail_local, and the walk
    that ends in the overwritten return address says why."""
    if libc_debug_file() is None:
        pytest.skip("libc's debug file is not installed (libc6-dbg): the local alias is in its symbols")
    core = lab.core("O0", "smash")
    payload = offline(user_install, core)
    names = [f.name for f in frames_of(payload)]
    assert "__stack_chk_fail" in names and "__stack_chk_fail_local" not in names
    assert names[names.index("__stack_chk_fail") + 1] == "smash"
    assert payload.splitlines()[-1].startswith("Backtrace stopped: return address outside user space (0x")


def test_truncated_core_says_where(user_install, lab, tmp_path):
    data = lab.core("O0", "segv").read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:2000])
    for payload in (offline(user_install, cut), offline(user_install, cut, pipe=True)):
        assert "Error: core truncated at byte 2000\n" in payload, payload


def test_module_without_build_id_matched_by_its_first_page(user_install, lab):
    """The kernel's handler without /proc (no --pid): files are opened only when the core
    proves they are the ones mapped; without a build id its copy of the first page does."""
    from telemprobd_harness import Probd, rows

    exe, core = lab.exe("nobuildid"), lab.core("nobuildid", "segv")
    Path(user_install.paths.no_privacy_filters_file).parent.mkdir(parents=True, exist_ok=True)
    Path(user_install.paths.no_privacy_filters_file).touch()
    with Probd(user_install) as probd:
        r = subprocess.run([sys.executable, "-m", MODULE, "-p", "crasher", "-s", "11", "--debug-dir", ""],
                           input=core.read_bytes(), capture_output=True, env=user_install.env, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        [row] = rows(probd)
    names = [f.name for f in frames_of(row.payload.decode())]
    assert names[:4] == ["leaf", "middle", "top", "main"], row.payload.decode()
    other = lab.exe("O0")  # a different file at the mapped path is refused
    assert other.read_bytes()[:4096] != exe.read_bytes()[:4096]


def test_offline_relative_exe_needs_no_filter_override(user_install, lab):
    core, exe = lab.core("O0", "segv"), lab.exe("O0")
    r = subprocess.run([sys.executable, "-m", MODULE, "--core", str(core), "--exe", "crasher", "--debug-dir", ""],
                       cwd=exe.parent, env=user_install.env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert out.startswith(f"Process: {exe}\n") and "Crash from third party" not in out
    assert UNKNOWN not in [f.name for f in frames_of(out)][:4]


@pytest.mark.parametrize("content", [b"hello\n", b"", "program"])
def test_offline_input_that_is_no_core_is_one_line_and_exit_1(user_install, lab, tmp_path, content):
    """The person at the keyboard gave the wrong file: say so, exit 1, print no report."""
    path = tmp_path / "not-a-core"
    path.write_bytes(lab.exe("O0").read_bytes() if content == "program" else content)
    r = user_install.run(MODULE, "--core", str(path), "--debug-dir", "")
    err = r.stderr.decode()
    errors = [line for line in err.splitlines() if not line.startswith("crashprobe: INFO: ")]
    assert r.returncode == 1 and r.stdout == b"", err
    assert len(errors) == 1 and errors[0].startswith(f"crashprobe: {path}: not a"), err


# --- names as gdb shows them ------------------------------------------------------------

def bare(name: str) -> str:
    """A demangled C++ name without its parameter list, as gdb names a frame with debug info."""
    depth = 0
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and i:
            return name[:i]
    return name


def test_cxx_names_are_demangled_as_gdb_shows_them(user_install, lab):
    exe, core = lab.program("cxx"), lab.program_core("cxx", "box")
    payload = offline(user_install, core, "--debug-dir", "")
    frames = frames_of(payload)
    gdb = gdb_backtraces(exe, core, debug_dir=str(lab.empty_debug_dir))[0]
    assert gdb[:3] == ["shapes::Box<int>::open", "run_box", "main"]
    assert [bare(f.name) for f in frames[:3]] == gdb[:3]
    assert frames[0].line.startswith("#0 shapes::Box<int>::open(int) const - [")
    lines = payload.splitlines()
    assert lines[lines.index(frames[0].line) + 1] == "    mangled: _ZNK6shapes3BoxIiE4openEi"


@RUST_DEMANGLER
def test_rust_names_are_demangled(user_install, lab):
    core = lab.program_core("rust")
    payload = offline(user_install, core, "--debug-dir", "")
    names = [f.name for f in frames_of(payload)]
    for expected in ("main::shapes::Crate::pick", "main::run", "main::main"):
        assert expected in names, payload
    assert "    mangled: _ZN4main3run17h" in payload
    assert "std::rt::lang_start_internal" in names  # a v0-mangled name of the standard library


def test_inline_frames_as_gdb_shows_them(user_install, lab):
    """Two always-inline functions inside a method: three frames at one address, the two
    inlined ones marked, each line the one gdb gives (the call site in its caller)."""
    exe, core = lab.program("cxx"), lab.program_core("cxx", "inline")
    frames = frames_of(offline(user_install, core, "--debug-dir", ""))
    gdb = gdb_backtraces(exe, core, debug_dir=str(lab.empty_debug_dir))[0]
    gdb_lines = gdb_source_lines(exe, core, debug_dir=str(lab.empty_debug_dir))
    assert gdb[:5] == ["shapes::poke", "shapes::nudge", "shapes::Crate::shake", "run_inline", "main"]
    assert [bare(f.name) for f in frames[:5]] == gdb[:5]
    assert [our_source(f.line) for f in frames[:5]] == gdb_lines[:5]
    assert [f.line.endswith(" (inlined)") for f in frames[:4]] == [True, True, False, False]


DWZ_COMMON_H = """struct pair { int *p; int n; };
static inline __attribute__((always_inline)) int poke(struct pair *x) { return *x->p + x->n; }
"""
DWZ_MAIN_C = """#include "common.h"
#include <stdio.h>
int __attribute__((noinline)) %s(struct pair *x) { return poke(x) * 2; }
int main(int argc, char **argv) { struct pair x = { %s, 3 }; printf("%%d\\n", %s(&x)); return 0; }
"""


@ELFTOOLS_0_30
def test_an_inline_call_described_in_dwzs_common_file_is_a_frame(user_install, lab, tmp_path):
    """Distributions run dwz over their debug files: what two programs share moves to a common
    file that `.gnu_debugaltlink` names (its path relative to the program, and its build id).
    The inline function's name lives there; gdb follows the link, and so does crashprobe."""
    if shutil.which("dwz") is None:
        pytest.skip("dwz is not installed (the Makefile installs it as root)")
    (tmp_path / "common.h").write_text(DWZ_COMMON_H)
    for name, pointer in (("crash", "(int *)(long)(argc - 1)"), ("fine", "&argc")):
        (tmp_path / f"{name}.c").write_text(DWZ_MAIN_C % ("work", pointer, "work"))
        subprocess.run(["gcc", "-g", "-O2", "-o", name, f"{name}.c"], cwd=tmp_path, check=True)
    subprocess.run(["dwz", "-m", "shared.debug", "-M", "shared.debug", "crash", "fine"], cwd=tmp_path,
                   check=True, capture_output=True)
    assert b".gnu_debugaltlink" in subprocess.run(["readelf", "-S", "crash"], cwd=tmp_path,
                                                  capture_output=True).stdout
    from crash_programs import make_core

    core = make_core(lab.method, tmp_path / "crash", "", tmp_path / "cores")
    exe = tmp_path / "crash"
    frames = frames_of(offline(user_install, core, "--exe", str(exe), "--debug-dir", ""))
    gdb = gdb_backtraces(exe, core, debug_dir=None)
    assert [f.name for f in frames[:3]] == ["poke", "work", "main"] == [n for n in next(iter(gdb.values()))[:3]]
    assert frames[0].line.endswith("common.h:2 (inlined)")
