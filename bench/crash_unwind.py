"""What a crash report costs: crashprobe next to eu-stack (elfutils) and gdb on the same cores.

    .venv/bin/python bench/crash_unwind.py [--runs N] [--skip-1gb] [--heap-mb MB]

The cores are those of tests/integration/crash_programs.py, compiled here: a segfault
three calls deep, abort() in libc, a crash in a non-main thread (three threads), a crash
in a shared library, a crash in a signal handler, and a program whose heap makes its core
about 1 GB (--skip-1gb leaves that one out: writing it takes a few seconds and 1 GB of
/tmp).  For each core and tool: the median wall time of N runs and the peak RSS of the
tool's process (wait4's ru_maxrss), each run a fresh process:

- crashprobe --core FILE   reads the file where it needs to (offline: the full CLI)
- crashprobe --core -      the same core through a pipe (what the pipe skips is spliced
                           into /dev/null)
- crashprobe -p (kernel)   the kernel's invocation (-p NAME -s SIG, core on a pipe): no CLI
                           framework, the analysis in an isolated child; no telemprobd runs,
                           so the figure is everything but the last send (about 1 ms)
- cold cache               the same as `--core FILE` with the cache of parsed tables emptied
                           before each run (every other crashprobe figure is a warm cache:
                           libc's tables are parsed once per machine)
- eu-stack --core FILE     elfutils, symbols only; eu-stack -s adds source lines, which
                           crashprobe's payload has too
- gdb -batch -ex bt        the crashing thread only

Peak RSS is GNU time's %M (/usr/bin/time) of the tool's process.

crashprobe runs in user mode with libc's debug file when installed (source lines for
libc).  Figures depend on the machine and its load; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from crash_programs import Unavailable, build, core_method, make_core  # noqa: E402
from support import make_user_install  # noqa: E402

CORES = [("segv", "O0", "segv"), ("abort", "O0", "abort"), ("thread", "O2", "thread"), ("lib", "O0", "lib"),
         ("handler", "O0", "handler")]


GNU_TIME = "/usr/bin/time"


def run_once(cmd: list[str], env: dict[str, str], pipe_from: Path | None = None) -> tuple[float, float, int]:
    """(seconds, peak RSS in KiB, exit code) of one run of `cmd`.

    The peak RSS comes from GNU time, a small process: a child forked from this Python
    process would report this process's size as its own peak (Linux keeps the high-water
    mark across exec)."""
    feeder = None
    out = tempfile.NamedTemporaryFile(prefix="crashbench-rss-")
    wrapped = [GNU_TIME, "-f", "%M", "-o", out.name, *cmd] if os.access(GNU_TIME, os.X_OK) else cmd
    start = time.perf_counter()
    if pipe_from is not None:
        feeder = subprocess.Popen(["cat", str(pipe_from)], stdout=subprocess.PIPE)
    proc = subprocess.Popen(wrapped, stdin=feeder.stdout if feeder else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if feeder is not None:
        feeder.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if feeder is not None:
        feeder.wait()
    try:
        rss = float(Path(out.name).read_text().split()[-1])
    except (ValueError, IndexError, OSError):
        rss = float(usage.ru_maxrss)
    out.close()
    return elapsed, rss, proc.returncode


def measure(cmd: list[str], env: dict[str, str], runs: int, pipe_from: Path | None = None) -> tuple[float, float, int]:
    results = [run_once(cmd, env, pipe_from) for _ in range(runs)]
    return (statistics.median(r[0] for r in results), max(r[1] for r in results) / 1024,
            max(r[2] for r in results))


def measure_cold(cmd: list[str], env: dict[str, str], runs: int, cache: Path) -> tuple[float, float, int]:
    results = []
    for _ in range(runs):
        shutil.rmtree(cache, ignore_errors=True)
        results.append(run_once(cmd, env))
    return (statistics.median(r[0] for r in results), max(r[1] for r in results) / 1024,
            max(r[2] for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per core and tool (median)")
    parser.add_argument("--skip-1gb", action="store_true", help="leave out the 1 GB core")
    parser.add_argument("--heap-mb", type=int, default=1024, help="heap of the big core's program")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="crashbench-"))
    inst = make_user_install(work)
    inst.opt_in()
    env = inst.env
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode compiled
    cache = Path(inst.paths.cache_dir, "crashprobe")
    crashprobe = str(Path(sys.executable).with_name("crashprobe"))
    if not os.access(crashprobe, os.X_OK):
        crashprobe = None
    probe_cmd = [crashprobe] if crashprobe else [sys.executable, "-m", "telemetry.probes.crash"]
    try:
        exes = {}
        for variant in {v for _, v, _ in CORES} | {"O0"}:
            exes[variant] = build(work / "build", variant)
        method = core_method(work, exes["O0"])
        cores = [(name, exes[v], make_core(method, exes[v], mode, work / "cores" / name)) for name, v, mode in CORES]
        if not args.skip_1gb:
            print(f"writing the core of a program with a {args.heap_mb} MB heap ...", flush=True)
            cores.append((f"heap {args.heap_mb} MB", exes["O0"],
                          make_core(method, exes["O0"], "heap", work / "cores" / "heap", str(args.heap_mb))))
    except Unavailable as e:
        sys.exit(f"cannot run: {e}")

    subprocess.run([*probe_cmd, "--core", str(cores[0][2])], env=env, capture_output=True)  # compile bytecode
    tools = []
    for name, exe, core in cores:
        tools.append((name, core, "crashprobe cold cache", [*probe_cmd, "--core", str(core)], None))
        tools.append((name, core, "crashprobe --core FILE", [*probe_cmd, "--core", str(core)], None))
        tools.append((name, core, "crashprobe --core - (pipe)", [*probe_cmd, "--core", "-"], core))
        tools.append((name, core, "crashprobe -p (kernel)", [*probe_cmd, "-p", "crasher", "-s", "11"], core))
        if shutil.which("eu-stack"):
            tools.append((name, core, "eu-stack --core", ["eu-stack", "--core", str(core), "-e", str(exe)], None))
            tools.append((name, core, "eu-stack -s --core", ["eu-stack", "-s", "--core", str(core), "-e", str(exe)],
                          None))
        if shutil.which("gdb"):
            tools.append((name, core, "gdb -batch -ex bt", ["gdb", "-batch", "-nx", "-ex", "bt", str(exe), str(core)],
                          None))

    print(f"cores by {method}; {args.runs} runs each; crashprobe = {' '.join(probe_cmd)}")
    print(f"{'core':<16} {'size':>9}  {'tool':<27} {'median s':>9} {'peak RSS MB':>12}")
    results: dict[tuple[str, str], tuple[float, float]] = {}
    for name, core, label, cmd, pipe in tools:
        runs = args.runs if "heap" not in name else max(1, min(args.runs, 3))
        if label == "crashprobe cold cache":
            seconds, rss, code = measure_cold(cmd, env, runs, cache)
        else:
            seconds, rss, code = measure(cmd, env, runs, pipe)
        if label == "crashprobe -p (kernel)" and code == 1:
            code = 0  # the failed send at the end: no telemprobd in this benchmark
        results[(name, label)] = (seconds, rss)
        flag = "" if code == 0 else f"  (exit {code})"
        size = core.stat().st_size / 2**20
        print(f"{name:<16} {size:>7.1f}MB  {label:<27} {seconds:>9.3f} {rss:>12.1f}{flag}", flush=True)
    print()
    print("time of crashprobe over eu-stack's (same core):")
    for name, _exe, _core in cores:
        ours = results.get((name, "crashprobe --core FILE"))
        piped = results.get((name, "crashprobe --core - (pipe)"))
        line = f"  {name:<16}"
        for ref in ("eu-stack --core", "eu-stack -s --core"):
            theirs = results.get((name, ref))
            if ours and theirs:
                line += f"  file/{ref.split(' --')[0]}: {ours[0] / theirs[0]:5.1f}x  pipe: {piped[0] / theirs[0]:5.1f}x"
        print(line)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
