"""Real crashing programs for crashprobe's tests: C sources compiled with gcc in the test,
real cores (the kernel's, with RLIMIT_CORE raised, or gdb's gcore when the kernel does not
write core files here), gdb's backtraces of them, and a reader of crashprobe's payloads.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CRASHER_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef __clang__
#define NOIPA __attribute__((noinline, disable_tail_calls))
#else
#define NOIPA __attribute__((noipa))
#endif

volatile int sink;
int *volatile null_ptr;
int lib_crash(int *p);

NOIPA int leaf(int *p) { *p = 42; return sink + 1; }
NOIPA int middle(int *p, int d) { int r = leaf(p); sink = r; return r + d; }
NOIPA int top(int *p) { int r = middle(p, 2); sink = r; return r + 1; }

NOIPA void do_abort(void) { abort(); }

static void on_usr1(int sig) { int *volatile q = 0; *(volatile int *)q = sig; }
NOIPA int raise_usr1(void) { raise(SIGUSR1); return sink; }
NOIPA int in_handler(void) { signal(SIGUSR1, on_usr1); int r = raise_usr1(); sink = r; return r + 1; }

typedef int (*fn_t)(int);
NOIPA int call_null(fn_t f) { int r = f(1); sink = r; return r + 1; }

static pthread_barrier_t ready;
NOIPA void *idle_thread(void *arg) { pthread_barrier_wait(&ready); for (;;) pause(); return arg; }
NOIPA void *crash_thread(void *arg) { pthread_barrier_wait(&ready); usleep(20000); top(arg); return arg; }
NOIPA int threads(void) {
    pthread_t a, b;
    pthread_barrier_init(&ready, NULL, 3);
    pthread_create(&a, NULL, idle_thread, NULL);
    pthread_create(&b, NULL, crash_thread, NULL);
    pthread_barrier_wait(&ready);
    pthread_join(b, NULL);
    return 0;
}

NOIPA int in_lib(void) { int r = lib_crash(NULL); sink = r; return r + 1; }

NOIPA int deep(int n) { char pad[64]; pad[n % 64] = (char)n; sink = pad[3]; if (n == 0) return top(null_ptr); return deep(n - 1) + pad[n % 64]; }
NOIPA int deepbig(int n) { char pad[4096]; pad[n] = (char)n; sink = pad[7]; if (n == 0) return top(null_ptr); return deepbig(n - 1) + pad[n]; }

unsigned char code_buf[64] = {0xc3};  /* in .data, never executable */
NOIPA int call_data(void) { int r = ((fn_t)(void *)code_buf)(1); sink = r; return r + 1; }

#ifdef __GNUC__
#ifndef __clang__
__attribute__((stack_protect))
#endif
#endif
NOIPA void smash(const char *s) { char buf[8]; strcpy(buf, s); sink = buf[0]; }

static pthread_barrier_t many_ready;
NOIPA void *many_thread(void *arg) {
    pthread_barrier_wait(&many_ready);
    if ((long)arg == 5) top(null_ptr);
    for (;;) pause();
    return arg;
}
NOIPA int many(int n) {
    pthread_attr_t attr;
    pthread_t t;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_barrier_init(&many_ready, NULL, n + 1);
    for (long i = 0; i < n; i++) pthread_create(&t, &attr, many_thread, (void *)i);
    pthread_barrier_wait(&many_ready);
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "segv";
    int r = 2;
    if (!strcmp(mode, "segv")) r = top(null_ptr);
    else if (!strcmp(mode, "abort")) do_abort();
    else if (!strcmp(mode, "handler")) r = in_handler();
    else if (!strcmp(mode, "nullcall")) r = call_null(NULL);
    else if (!strcmp(mode, "thread")) r = threads();
    else if (!strcmp(mode, "lib")) r = in_lib();
    else if (!strcmp(mode, "deep")) r = deep(100);
    else if (!strcmp(mode, "deepbig")) r = deepbig(100);
    else if (!strcmp(mode, "wild")) r = call_null((fn_t)0xdead0000);
    else if (!strcmp(mode, "data")) r = call_data();
    else if (!strcmp(mode, "smash")) smash("a string far too long for eight bytes");
    else if (!strcmp(mode, "many")) r = many(300);
    else if (!strcmp(mode, "wait")) { puts("ready"); fflush(stdout); for (;;) pause(); }
    else if (!strcmp(mode, "heap")) {
        size_t mb = argc > 2 ? strtoul(argv[2], 0, 10) : 64;
        char *p = malloc(mb << 20);
        for (size_t i = 0; i < (mb << 20); i += 4096) p[i] = (char)i;
        sink = p[4096];
        r = top(null_ptr);
    }
    sink = r;
    return r;
}
"""

CRASHLIB_C = r"""
#define NOIPA __attribute__((noipa))
volatile int lib_sink;
NOIPA int lib_inner(int *p) { *p = 7; return lib_sink; }
NOIPA int lib_crash(int *p) { int r = lib_inner(p); lib_sink = r; return r + 1; }
"""

# name: (compiler flags, strip the result)
VARIANTS = {
    "O0": (["-O0", "-g", "-fstack-protector-explicit"], False),
    "O2": (["-O2", "-g", "-fomit-frame-pointer"], False),
    "nopie": (["-O0", "-g", "-fno-pie", "-no-pie"], False),
    "stripped": (["-O2", "-fomit-frame-pointer"], True),
    # no .eh_frame for the program's code: only .debug_frame describes its frames
    "debugframe": (["-O2", "-g", "-fomit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"],
                   False),
    # no CFI at all for the program's code: only its frame pointers lead back to main
    "fponly": (["-O0", "-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"], False),
    # clang writes no .debug_aranges: source lines come from the compile units' ranges
    "clang": (["-O1", "-g"], False),
    # no build id: a file on disk is matched to the core by its first page
    "nobuildid": (["-O0", "-g", "-Wl,--build-id=none"], False),
}
COMPILERS = {"clang": "clang"}


GO_MAIN = r"""package main

import "runtime/debug"

type registry struct{ m map[string]int }

//go:noinline
func (r *registry) add(key string) {
	r.m[key] = len(key)
}

func main() {
	debug.SetTraceback("crash")
	r := &registry{}
	r.add("boom")
}
"""

CXX_MAIN = r"""
#include <cstdio>
#include <cstring>
#include <vector>

#define NOIPA __attribute__((noipa))
volatile int sink;
int *volatile null_ptr;

namespace shapes {
template <typename T> struct Box {
    T *item;
    NOIPA T open(int how) const { T v = *item; sink = how; return v; }
};

static inline __attribute__((always_inline)) int poke(int *p, int v) { *p = v; return v + sink; }
static inline __attribute__((always_inline)) int nudge(int *p) { int r = poke(p, 7); sink = r; return r * 2; }

struct Crate {
    int count;
    NOIPA int shake(int *where) { int r = nudge(where); sink = r; return r + count; }
};
}  // namespace shapes

NOIPA int run_box() { shapes::Box<int> box{null_ptr}; return box.open(3) + 1; }
NOIPA int run_inline() { shapes::Crate c{1}; return c.shake(null_ptr) + 1; }

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "box";
    int r = strcmp(mode, "inline") == 0 ? run_inline() : run_box();
    sink = r;
    return r;
}
"""

RUST_MAIN = r"""
mod shapes {
    pub struct Crate { pub items: Vec<u32> }
    impl Crate {
        #[inline(never)]
        pub fn pick(&self, at: *const u32) -> u32 { (unsafe { std::ptr::read_volatile(at) }) + self.items.len() as u32 }
    }
}

#[inline(never)]
fn run(at: *const u32) -> u32 { let c = shapes::Crate { items: vec![1, 2] }; c.pick(at) }

fn main() {
    let at = std::hint::black_box(0usize) as *const u32;
    std::process::exit(run(at) as i32);
}
"""

# name: (source file, source text, compiler command with {src} and {out})
PROGRAMS = {
    "go": ("main.go", GO_MAIN, ["go", "build", "-o", "{out}", "{src}"]),
    "cxx": ("crasher.cpp", CXX_MAIN, ["g++", "-O2", "-g", "-o", "{out}", "{src}"]),
    "clangxx": ("crasher.cpp", CXX_MAIN, ["clang++", "-O1", "-g", "-o", "{out}", "{src}"]),
    "rust": ("main.rs", RUST_MAIN, ["rustc", "-g", "-C", "opt-level=1", "-o", "{out}", "{src}"]),
}


class Unavailable(Exception):
    """This machine cannot build programs or produce cores; the message says why."""


def build(workdir: Path, variant: str) -> Path:
    cc = COMPILERS.get(variant, "gcc")
    if shutil.which(cc) is None:
        raise Unavailable(f"{cc} is not installed (Debian package {cc})")
    flags, strip = VARIANTS[variant]
    out = workdir / variant
    out.mkdir(parents=True, exist_ok=True)
    (out / "crasher.c").write_text(CRASHER_C)
    (out / "crashlib.c").write_text(CRASHLIB_C)
    lib_flags = [f for f in flags if f not in ("-fno-pie", "-no-pie")]
    _run([cc, *lib_flags, "-shared", "-fPIC", "-o", str(out / "libcrashlib.so"), str(out / "crashlib.c")])
    _run([cc, *flags, "-o", str(out / "crasher"), str(out / "crasher.c"), f"-L{out}", "-lcrashlib",
          "-Wl,-rpath,$ORIGIN", "-pthread"])
    if strip:
        _run(["strip", "--strip-all", str(out / "crasher"), str(out / "libcrashlib.so")])
    return out / "crasher"


def build_program(workdir: Path, name: str) -> Path:
    source, text, command = PROGRAMS[name]
    if shutil.which(command[0]) is None:
        package = {"go": "golang-go", "rustc": "rustc"}.get(command[0], command[0])
        raise Unavailable(f"{command[0]} is not installed (Debian package {package})")
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    (out / source).write_text(text)
    env = None
    if command[0] == "go":  # a private build cache: nothing of the user's is touched
        env = {**os.environ, "GOCACHE": str(workdir / "gocache"), "GOPATH": str(workdir / "gopath"),
               "GO111MODULE": "off", "GOFLAGS": ""}
    _run([part.format(src=out / source, out=out / "crasher") for part in command], env=env, cwd=out)
    return out / "crasher"


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    if r.returncode != 0:
        raise Unavailable(f"{' '.join(cmd[:2])} failed: {r.stderr.strip()[:300]}")


def _unlimited_core() -> None:
    """As high as this user may raise it (an ordinary user stops at the hard limit)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def kernel_core(exe: Path, mode: str, cwd: Path, *extra: str) -> Path | None:
    """Crash `exe mode` with RLIMIT_CORE raised; the kernel's core, if it wrote one here."""
    cwd.mkdir(parents=True, exist_ok=True)
    for old in cwd.glob("core*"):
        old.unlink()
    subprocess.run([str(exe), mode, *extra], cwd=cwd, preexec_fn=_unlimited_core, capture_output=True, timeout=60)
    cores = sorted(cwd.glob("core*"))
    return cores[0] if cores else None


def gdb_core(exe: Path, mode: str, cwd: Path, *extra: str) -> Path | None:
    """Run `exe mode` under gdb to its fatal signal and write gcore there."""
    if shutil.which("gdb") is None:
        return None
    cwd.mkdir(parents=True, exist_ok=True)
    target = cwd / "gcore"
    target.unlink(missing_ok=True)
    subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "set startup-with-shell off", "-ex", "handle SIGUSR1 nostop noprint pass",
         "-ex", "run", "-ex", f"gcore {target}", "--args", str(exe), mode, *extra],
        cwd=cwd, capture_output=True, timeout=120,
    )
    return target if target.exists() else None


def core_method(workdir: Path, exe: Path) -> str:
    """'kernel' when core_pattern writes files here, else 'gcore'; Unavailable if neither."""
    probe = workdir / "probe-core"
    if kernel_core(exe, "segv", probe) is not None:
        return "kernel"
    if gdb_core(exe, "segv", probe) is not None:
        return "gcore"
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    raise Unavailable(f"no core: core_pattern is {pattern!r} and gdb's gcore did not work")


def make_core(method: str, exe: Path, mode: str, cwd: Path, *extra: str) -> Path:
    core = kernel_core(exe, mode, cwd, *extra) if method == "kernel" else gdb_core(exe, mode, cwd, *extra)
    if core is None:
        raise Unavailable(f"no core for {exe} {mode} ({method})")
    return core


_LABS: dict[str, Lab] = {}


def shared_lab(tmp_path_factory) -> Lab:
    """One Lab for the whole test session: every program is compiled and crashed once."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _LABS:
        _LABS[key] = Lab(tmp_path_factory.mktemp("crashlab"))
    return _LABS[key]


class Lab:
    """Programs and their cores, built once per session (see shared_lab)."""

    def __init__(self, root: Path):
        self.root = root
        self.exes: dict[str, Path] = {}
        self.cores: dict[tuple[str, str, str], Path] = {}
        self._method: str | None = None
        self.empty_debug_dir = root / "no-debug-info"
        self.empty_debug_dir.mkdir()

    def exe(self, variant: str) -> Path:
        if variant not in self.exes:
            try:
                self.exes[variant] = build(self.root / "build", variant)
            except Unavailable as e:
                pytest.skip(str(e))
        return self.exes[variant]

    @property
    def method(self) -> str:
        if self._method is None:
            try:
                self._method = core_method(self.root, self.exe("O0"))
            except Unavailable as e:
                pytest.skip(str(e))
        return self._method

    def program(self, name: str) -> Path:
        """A program of another language (PROGRAMS), built once; skipped without its compiler."""
        if name not in self.exes:
            try:
                self.exes[name] = build_program(self.root / "build", name)
            except Unavailable as e:
                pytest.skip(str(e))
        return self.exes[name]

    def program_core(self, name: str, *args: str) -> Path:
        key = (name, " ".join(args), "kernel")
        if key not in self.cores:
            try:
                self.cores[key] = make_core("kernel", self.program(name), args[0] if args else "",
                                            self.root / "cores" / f"{name}-{'-'.join(args)}", *args[1:])
            except Unavailable as e:
                pytest.skip(str(e))
        return self.cores[key]

    def core(self, variant: str, mode: str, method: str | None = None) -> Path:
        method = method or self.method
        key = (variant, mode, method)
        if key not in self.cores:
            try:
                self.cores[key] = make_core(method, self.exe(variant), mode, self.root / "cores" / "-".join(key))
            except Unavailable as e:
                pytest.skip(str(e))
        return self.cores[key]


# --- reading backtraces -------------------------------------------------------------

_GDB_FRAME = re.compile(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(<signal handler called>|[^\s(]+)")
_GDB_THREAD = re.compile(r"^Thread \d+ \(.*LWP (\d+)\)")
_OUR_FRAME = re.compile(r"^#(\d+) (?:(\(no symbols\))|(\?\?\?) - \[|(.+?)(?:\(\))? - \[)")
_OUR_THREAD = re.compile(r"^Backtrace \(TID (\d+)\):$")

UNKNOWN = "??"


def gdb_backtraces(exe: Path, core: Path, *, debug_dir: str | None, all_threads: bool = False) -> dict[int, list[str]]:
    """Function names per thread (key 0: the current thread when not all threads)."""
    cmd = ["gdb", "-batch", "-nx"]
    if debug_dir is not None:
        cmd += ["-iex", f"set debug-file-directory {debug_dir}"]
    cmd += ["-ex", "echo <<bt>>\\n", "-ex", "thread apply all bt" if all_threads else "bt", str(exe), str(core)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    out = out.split("<<bt>>\n", 1)[-1]  # what gdb printed on loading the core is not the backtrace
    traces: dict[int, list[str]] = {}
    current = 0
    for line in out.splitlines():
        m = _GDB_THREAD.match(line)
        if m:
            current = int(m.group(1))
            traces[current] = []
            continue
        m = _GDB_FRAME.match(line)
        if m:
            frames = traces.setdefault(current, [])
            if int(m.group(1)) == len(frames):  # gdb repeats frame #0 when it prints the source line
                frames.append(_gdb_name(m.group(2)))
    return traces


_GDB_AT = re.compile(r" at (\S+):(\d+)$")


def gdb_source_lines(exe: Path, core: Path, *, debug_dir: str | None = None) -> list[str | None]:
    """`file:line` of each frame of gdb's `bt` (None where gdb shows none)."""
    cmd = ["gdb", "-batch", "-nx"]
    if debug_dir is not None:
        cmd += ["-iex", f"set debug-file-directory {debug_dir}"]
    cmd += ["-ex", "echo <<bt>>\\n", "-ex", "bt", str(exe), str(core)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout.split("<<bt>>\n", 1)[-1]
    lines: list[str | None] = []
    for line in out.splitlines():
        m = _GDB_FRAME.match(line)
        if m and int(m.group(1)) == len(lines):
            at = _GDB_AT.search(line)
            lines.append(f"{at.group(1)}:{at.group(2)}" if at else None)
    return lines


def _gdb_name(name: str) -> str:
    if name in ("??", "<signal"):
        return UNKNOWN
    if name == "<signal handler called>":
        return "<signal>"
    return name.split("@", 1)[0]


@dataclass(frozen=True)
class PayloadFrame:
    name: str  # the function, "??" without a symbol, "(no symbols)" without a module
    line: str


def payload_threads(payload: str) -> list[tuple[int, list[PayloadFrame]]]:
    threads: list[tuple[int, list[PayloadFrame]]] = []
    for line in payload.splitlines():
        m = _OUR_THREAD.match(line)
        if m:
            threads.append((int(m.group(1)), []))
            continue
        m = _OUR_FRAME.match(line)
        if m and threads:
            name = m.group(4) or (UNKNOWN if m.group(3) else "(no symbols)")
            threads[-1][1].append(PayloadFrame(name, line))
    return threads


def same_function(ours: str, gdbs: str) -> bool:
    if gdbs == "<signal>":  # gdb names the trampoline frame itself; we name its symbol
        return ours in (UNKNOWN, "__restore_rt")
    if ours == "(no symbols)":
        return gdbs == UNKNOWN
    return ours == gdbs


def libc_debug_file() -> Path | None:
    """libc's separate debug file, when the distribution's debug package is installed."""
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if not libc.exists():
        return None
    out = subprocess.run(["readelf", "-n", str(libc)], capture_output=True, text=True).stdout
    m = re.search(r"Build ID: ([0-9a-f]+)", out)
    if not m:
        return None
    path = Path("/usr/lib/debug/.build-id") / m.group(1)[:2] / (m.group(1)[2:] + ".debug")
    return path if path.exists() else None




def source_line(text: str, source: str = CRASHER_C) -> int:
    """The line number of the first source line containing `text`."""
    for n, line in enumerate(source.split("\n"), start=1):
        if text in line:
            return n
    raise ValueError(text)
