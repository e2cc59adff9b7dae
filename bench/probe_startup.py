"""Start-up cost of the probes and idle memory of the daemons, as a user runs them.

    .venv/bin/python bench/probe_startup.py [--runs N] [--installed] [--importtime]

A throwaway user-mode installation (opted in, rate limits off) with telemprobd and
telempostd started from the console scripts of the layout measured; then `hprobe` and
`telem-record-gen -c org.example/bench/startup -p hello` are run N times each, alternately,
every run sending one record that telemprobd acknowledges.  Printed per program: the median
and 90th percentile wall time from fork to exit, and the median peak RSS (the child's
ru_maxrss, from a small C launcher: a Python parent's pages would count otherwise); beside
them the interpreter's own floor (`python -c pass`).  Then the daemons' RSS while idle:
just started, and after the probes' records (telempostd has then loaded pycurl, libcurl
and its TLS library, whose pages other processes share: PSS, in brackets, divides them).

Layouts: the editable venv (`.venv/bin`, the default), and with `--installed` also
`make install DESTDIR=<tmp> PREFIX=/usr` run by the programs' #! interpreter (the system
python3, on Debian's packages; PYTHONPATH points at the staged dist-packages), and the same
run as `python3 -s`.  `--importtime` prints what each probe imports (`-X importtime`, the
slowest modules) instead of nothing.

Targets: probes <= 50 ms median and <= 15 MiB peak; daemons idle <= 16 MiB.
Figures depend on the machine and its load; they are printed, never asserted.
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support import free_port, make_user_install, proc_memory, proc_pss  # noqa: E402

from telemetry.daemons.store.queue import QUEUE_DB, queue_dir  # noqa: E402

MIB = 1 << 20
PROBES = {
    "hprobe": ["hprobe"],
    "telem-record-gen": ["telem-record-gen", "-c", "org.example/bench/startup", "-p", "hello"],
}

# One run: fork, exec argv (stdin and stdout on /dev/null), wait4; prints
# "<wall ns> <ru_maxrss KiB> <wait status>".  Forked from this small process, the child's
# peak RSS is its own.
LAUNCHER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct timespec a, b;
    struct rusage ru;
    int status;
    if (argc < 2) return 2;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        execv(argv[1], argv + 1);
        _exit(127);
    }
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0) return 2;
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%lld %ld %d\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec),
           ru.ru_maxrss, status);
    return 0;
}
"""


@dataclass(frozen=True)
class Layout:
    name: str
    bindir: str
    python: str  # the interpreter the console scripts run on
    flags: tuple[str, ...] = ()  # given to it before the script
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, program: str, *args: str) -> list[str]:
        script = os.path.join(self.bindir, program)
        return [self.python, *self.flags, script, *args]


@dataclass
class Runs:
    wall: list[float] = field(default_factory=list)  # seconds
    rss: list[int] = field(default_factory=list)  # bytes; empty without the launcher


def build_launcher(directory: str) -> str | None:
    src, exe = os.path.join(directory, "launch.c"), os.path.join(directory, "launch")
    Path(src).write_text(LAUNCHER_C)
    try:
        r = subprocess.run(["gcc", "-O2", "-o", exe, src], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return exe if r.returncode == 0 else None


def run_once(launcher: str | None, argv: list[str], env: dict[str, str], runs: Runs) -> None:
    if launcher is None:
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        runs.wall.append(time.perf_counter() - t0)
        if r.returncode:
            raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.decode(errors='replace')}")
        return
    r = subprocess.run([launcher, *argv], env=env, capture_output=True)
    try:
        ns, kib, status = (int(x) for x in r.stdout.split())
    except ValueError:
        raise SystemExit(f"launcher failed: {r.stderr.decode(errors='replace')}") from None
    if status:
        raise SystemExit(f"{' '.join(argv)} failed (wait status {status}): {r.stderr.decode(errors='replace')}")
    runs.wall.append(ns / 1e9)
    runs.rss.append(kib * 1024)


def show(label: str, runs: Runs) -> None:
    wall = sorted(runs.wall)
    p90 = wall[min(len(wall) - 1, int(len(wall) * 0.9))]
    rss = f"{statistics.median(runs.rss) / MIB:5.1f} MiB" if runs.rss else "  n/a (no gcc)"
    print(f"  {label:<28} median {statistics.median(wall) * 1000:6.1f} ms   p90 {p90 * 1000:6.1f} ms   "
          f"peak RSS {rss}   ({len(wall)} runs)")


class Tree:
    """A user-mode installation with both daemons running from `layout`'s scripts."""

    def __init__(self, layout: Layout, root: str):
        self.root = root
        inst = make_user_install(Path(root))
        inst.opt_in()
        self.env = {**inst.env, **layout.env}
        # As a user runs them: with the byte code Python caches (a packaged install ships it).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        # Nothing listens on the server's port: telempostd keeps the records and backs off.
        inst.write_config(f"socket_path={root}/s\nrate_limit_enabled=false\nlog_level=warning\n"
                          f"server=http://127.0.0.1:{free_port()}/v2/collector\n")
        self.socket = f"{root}/s"
        self.spool = inst.paths.spool_dir
        self.logs = []
        self.daemons = {}
        for name in ("telemprobd", "telempostd"):
            log = open(os.path.join(root, f"{name}.log"), "wb")
            self.logs.append(log)
            self.daemons[name] = subprocess.Popen(layout.argv(name), env=self.env, stdout=log,
                                                  stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        queue = os.path.join(queue_dir(self.spool), QUEUE_DB)
        while not (os.path.exists(self.socket) and os.path.exists(queue)):
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode}: see {root}/{name}.log")
            if time.monotonic() > deadline:
                raise SystemExit(f"the daemons did not start: see {root}")
            time.sleep(0.05)

    def rss(self) -> dict[str, tuple[int, int]]:
        """Each daemon's RSS and PSS (shared library pages divided among the processes
        that map them)."""
        return {name: (proc_memory(proc.pid, "VmRSS"), proc_pss(proc.pid)) for name, proc in self.daemons.items()}

    def close(self) -> None:
        for proc in self.daemons.values():
            proc.terminate()
        for proc in self.daemons.values():
            proc.wait(30)
        for log in self.logs:
            log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def import_profile(layout: Layout, env: dict[str, str], argv: list[str], top: int = 12) -> None:
    cmd = [layout.python, *layout.flags, "-X", "importtime", *argv]
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[0].strip().isdigit():
            rows.append((int(parts[0]), int(parts[1]), parts[2].strip()))
    total = sum(s for s, _, _ in rows)
    print(f"    imports: {len(rows)} modules, {total / 1000:.1f} ms (self times summed, under -X importtime); "
          f"slowest by self time:")
    for s, c, name in sorted(rows, reverse=True)[:top]:
        print(f"      {s / 1000:5.1f} ms  (cumulative {c / 1000:5.1f})  {name}")


def measure(layout: Layout, launcher: str | None, runs: int, importtime: bool) -> None:
    print(f"\n{layout.name}: {layout.python} {' '.join(layout.flags)} {layout.bindir}/…".replace("  ", " "))
    tree = Tree(layout, tempfile.mkdtemp(prefix="ps-", dir="/tmp"))
    try:
        time.sleep(1.0)
        idle = tree.rss()
        env = tree.env
        floor = Runs()
        results = {name: Runs() for name in PROBES}
        for argv in PROBES.values():  # compile and warm the caches
            run_once(launcher, layout.argv(*argv), env, Runs())
        for _ in range(runs):
            run_once(launcher, [layout.python, *layout.flags, "-c", "pass"], env, floor)
            for name, argv in PROBES.items():
                run_once(launcher, layout.argv(*argv), env, results[name])
        show("interpreter (-c pass)", floor)
        for name, r in results.items():
            show(name, r)
            if importtime:
                import_profile(layout, env, layout.argv(*PROBES[name])[len(layout.flags) + 1:])
        time.sleep(1.0)
        after = tree.rss()
        sent = (runs + 1) * len(PROBES)
        for name in tree.daemons:
            print(f"  {name + ' RSS (PSS)':<28} idle {idle[name][0] / MIB:5.1f} MiB ({idle[name][1] / MIB:4.1f})   "
                  f"after {sent} records {after[name][0] / MIB:5.1f} MiB ({after[name][1] / MIB:4.1f})")
    finally:
        tree.close()


def installed_layouts(stage: str) -> list[Layout]:
    r = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={stage}", "PREFIX=/usr"],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"make install failed:\n{r.stdout}{r.stderr}")
    bindir = os.path.join(stage, "usr/bin")
    shebang = Path(bindir, "hprobe").read_text().split("\n", 1)[0][2:].split()
    site = [str(p) for p in Path(stage).glob("usr/lib/python3*/*-packages")]
    env = {"PYTHONPATH": os.pathsep.join(site)}
    python, flags = shebang[0], tuple(shebang[1:])
    layouts = [Layout(f"installed (make install, #!{' '.join(shebang)})", bindir, python, flags, env)]
    if "-s" not in flags:
        layouts.append(Layout(f"installed, run as {python} -s", bindir, python, ("-s", *flags), env))
    return layouts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="runs of each probe (default 30)")
    ap.add_argument("--installed", action="store_true",
                    help="also measure a `make install DESTDIR=… PREFIX=/usr` layout")
    ap.add_argument("--importtime", action="store_true", help="show each probe's slowest imports")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ps-bench-", dir="/tmp")
    try:
        launcher = build_launcher(work)
        if launcher is None:
            print("gcc not available: wall time measured from Python, peak RSS not measured")
        venv = Path(sys.executable).parent
        layouts = [Layout("editable venv", str(venv), sys.executable)]
        if args.installed:
            layouts += installed_layouts(os.path.join(work, "stage"))
        print(f"probe start-up, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
              "targets: probes <= 50 ms and <= 15 MiB, daemons idle <= 16 MiB")
        for layout in layouts:
            measure(layout, launcher, args.runs, args.importtime)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
