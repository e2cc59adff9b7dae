"""Memory of telemprobd and telempostd: idle after start, and after delivering records.

    .venv/bin/python bench/daemon_memory.py [--runs N] [--records N] [--layout venv|installed ...]

Both daemons are started from their console scripts, opted in, with a local collector
answering 201 (nginx when installed: bench/_common.py), and measured from /proc: VmRSS and
PSS (smaps_rollup: pages shared with other processes divided among them).  Each
configuration is started --runs times; the medians are printed.

- idle: 1.5 s after both are ready, nothing sent (telempostd has not loaded pycurl yet);
- after deliveries: --records ~1 KB records sent to telemprobd over its socket, each
  acknowledged, then delivered by telempostd until the queue is empty, and 1 s more.

Configurations: user mode from the editable `.venv` (what `make demo` and the benches run),
and from `make install DESTDIR=<tmp> PREFIX=/usr` run by the programs' #! interpreter (the
system python3 and Debian's packages) in user mode and, as root, in system mode: that
install is made with SYSCONFDIR, LOCALSTATEDIR and RUNDIR inside a private tree, so the
system-mode daemons use the system layout's code path (/etc/telemetrics/…, /var/spool/
telemetry/…, /run/telem-0) below it without touching the machine's.  `--detail` prints
what the RSS of each daemon is made of (Python's objects, the interpreter, each library;
`--libraries`: each of the curl and TLS libraries by name).

Targets: idle <= 16 MiB each; telempostd after deliveries <= 25 MiB.
Figures depend on the machine and its load; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUR_INGEST_CONFIG, QueueReader, frame, start_collector  # noqa: E402
from support import free_port, make_user_install, proc_memory, proc_pss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
DAEMONS = ("telemprobd", "telempostd")


@dataclass(frozen=True)
class Layout:
    """Where the console scripts are and what runs them."""
    name: str
    bindir: str
    python: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, program: str) -> list[str]:
        return [self.python, os.path.join(self.bindir, program)]


@dataclass(frozen=True)
class Tree:
    """One configuration's files: its environment, config file, spool and socket."""
    env: dict[str, str]
    config_file: str
    spool_dir: str
    socket_path: str
    opt_in_file: str


@dataclass
class Sample:
    rss: dict[str, int]
    pss: dict[str, int]
    parts: dict[str, dict[str, int]]


CURL = "curl, TLS, HTTP/2 libs"
PARTS = (  # (part, substrings of the mapped file's name), first match wins
    (CURL, ("pycurl", "libcurl", "libssl", "libcrypto", "libgnutls", "libnghttp",
                                "libngtcp", "libssh", "libpsl", "libidn", "libbrotli", "libzstd", "libk5",
                                "libkrb5", "libgssapi", "librtmp", "libldap", "liblber", "libsasl",
                                "libhogweed", "libnettle", "libtasn1", "libp11", "libunistring", "libgmp",
                                "libcom_err", "libkeyutils", "libresolv")),
    ("sqlite", ("libsqlite3", "_sqlite3")),
    ("interpreter", ("libpython", "/python3")),
    ("libc, ld.so, libm", ("libc.so", "ld-linux", "libm.so")),
)


def breakdown(pid: int, libraries: bool = False) -> dict[str, int]:
    """RSS by part: Python's objects (anonymous memory and the heap), the interpreter, the
    libraries, the rest; with `libraries`, each curl and TLS library by name too."""
    parts: collections.Counter[str] = collections.Counter()
    name = "?"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(maxsplit=5)
                if "-" in head[0] and not head[0].endswith(":"):
                    name = head[5].strip() if len(head) > 5 else "[anon]"
                elif head[0] == "Rss:":
                    part = classify(name)
                    parts[part] += int(head[1]) * 1024
                    if part == CURL and libraries:
                        parts[os.path.basename(name)] += int(head[1]) * 1024
    except OSError:
        pass
    return dict(parts)


def classify(name: str) -> str:
    if name in ("[anon]", "[heap]"):
        return "Python objects, malloc"
    for part, needles in PARTS:
        if any(n in name for n in needles):
            return part
    if name.endswith(".so") or ".so." in name or ".cpython-" in name:
        return "other libraries, extension modules"
    return "other (stack, locale, databases' shm)"


def sample(procs: dict[str, subprocess.Popen], libraries: bool = False) -> Sample:
    return Sample({n: proc_memory(p.pid, "VmRSS") for n, p in procs.items()},
                  {n: proc_pss(p.pid) for n, p in procs.items()},
                  {n: breakdown(p.pid, libraries) for n, p in procs.items()})


def user_tree(root: str, layout: Layout, port: int) -> Tree:
    inst = make_user_install(Path(root))
    inst.opt_in()
    socket_path = os.path.join(root, "s")
    inst.write_config(f"{OUR_INGEST_CONFIG}socket_path={socket_path}\n"
                      f"server=http://127.0.0.1:{port}/v2/collector\n")
    return Tree({**inst.env, **layout.env}, inst.paths.config_file, inst.paths.spool_dir, socket_path,
                inst.paths.opt_in_file)


def system_tree(root: str, layout: Layout, port: int) -> Tree:
    """The directories tmpfiles.d makes, below `root` (the install's SYSCONFDIR, LOCALSTATEDIR
    and RUNDIR point there)."""
    for d in ("etc/telemetrics", "var/spool/telemetry", "var/lib/telemetry", "var/log/telemetry",
              "var/cache/telemetry", "run/telemetry"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    conf = os.path.join(root, "etc/telemetrics/telemetrics.conf")
    with open(conf, "w") as f:
        f.write(f"[settings]\n{OUR_INGEST_CONFIG}server=http://127.0.0.1:{port}/v2/collector\n")
    Path(root, "etc/telemetrics/opt-in").touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TELEMETRY_"))}
    env.update(layout.env, TELEMETRY_MODE="system", no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")
    return Tree(env, conf, os.path.join(root, "var/spool/telemetry"), os.path.join(root, "run/telem-0"),
                os.path.join(root, "etc/telemetrics/opt-in"))


def send(socket_path: str, count: int) -> None:
    for i in range(count):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(socket_path)
            s.sendall(frame(i))
            s.shutdown(socket.SHUT_WR)
            reply = s.recv(512)
        if not reply.startswith((b"TM/1 accepted", b"TM/1 deferred")):
            raise SystemExit(f"telemprobd refused record {i}: {reply!r}")


def one_run(layout: Layout, tree: Tree, records: int, workdir: str,
            libraries: bool = False) -> tuple[Sample, Sample]:
    env = dict(tree.env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: with cached byte code
    logs, procs = [], {}
    try:
        for name in DAEMONS:
            log = open(os.path.join(workdir, f"{name}.log"), "ab")
            logs.append(log)
            procs[name] = subprocess.Popen(layout.argv(name), env=env, stdout=log, stderr=subprocess.STDOUT)
        queue = os.path.join(tree.spool_dir, "queue", "queue.db")
        deadline = time.monotonic() + 30
        while not (os.path.exists(tree.socket_path) and os.path.exists(queue)):
            for name, p in procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"{name} exited with {p.returncode}: see {workdir}/{name}.log")
            if time.monotonic() > deadline:
                raise SystemExit(f"the daemons did not start: see {workdir}")
            time.sleep(0.05)
        time.sleep(1.5)
        idle = sample(procs)
        send(tree.socket_path, records)
        reader = QueueReader(tree.spool_dir)
        deadline = time.monotonic() + 120
        while reader.queued():
            if time.monotonic() > deadline:
                log = Path(workdir, "telempostd.log").read_text(errors="replace").splitlines()[-5:]
                raise SystemExit(f"{reader.queued()} records still queued after 120 s; telempostd's log ends:\n"
                                 + "\n".join(log))
            time.sleep(0.1)
        reader.db.close()
        time.sleep(1.0)
        return idle, sample(procs, libraries)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(30)
        for log in logs:
            log.close()


def installed_layout(stage: str, tree: str) -> Layout:
    r = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={stage}", "PREFIX=/usr",
                        f"SYSCONFDIR={tree}/etc", f"LOCALSTATEDIR={tree}/var", f"RUNDIR={tree}/run"],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"make install failed:\n{r.stdout}{r.stderr}")
    bindir = os.path.join(stage, "usr/bin")
    python = Path(bindir, "telemprobd").read_text().split("\n", 1)[0][2:].split()[0]
    site = [str(p) for p in Path(stage).glob("usr/lib/python3*/*-packages")]
    return Layout(f"installed (make install, #!{python})", bindir, python,
                  {"PYTHONPATH": os.pathsep.join(site)})


def mib(values: list[int]) -> str:
    return f"{statistics.median(values) / MIB:5.1f}"


def report(label: str, runs: list[tuple[Sample, Sample]], records: int, detail: bool) -> None:
    print(f"  {label}")
    for name in DAEMONS:
        idle_rss = [i.rss[name] for i, _ in runs]
        idle_pss = [i.pss[name] for i, _ in runs]
        after_rss = [a.rss[name] for _, a in runs]
        after_pss = [a.pss[name] for _, a in runs]
        print(f"    {name:<11} idle RSS {mib(idle_rss)} MiB (PSS {mib(idle_pss)})   after {records} "
              f"delivered RSS {mib(after_rss)} MiB (PSS {mib(after_pss)})   "
              f"[idle RSS of the runs: {', '.join(f'{v / MIB:.1f}' for v in idle_rss)}]")
    if detail:
        idle, after = runs[len(runs) // 2]
        for name in DAEMONS:
            for when, s in (("idle", idle), ("after", after)):
                parts = sorted(s.parts[name].items(), key=lambda kv: -kv[1])
                print(f"      {name} {when}: " + "; ".join(f"{p} {v / MIB:.2f}" for p, v in parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="starts of each configuration (default 3)")
    ap.add_argument("--records", type=int, default=300, help="records delivered before the second figure")
    ap.add_argument("--layout", action="append", choices=("venv", "installed"),
                    help="layouts to measure (default both)")
    ap.add_argument("--detail", action="store_true", help="RSS by part (the median run)")
    ap.add_argument("--libraries", action="store_true",
                    help="with --detail: each curl and TLS library telempostd maps after deliveries")
    args = ap.parse_args()
    layouts = args.layout or ["venv", "installed"]
    work = tempfile.mkdtemp(prefix="dm-", dir="/tmp")
    port = free_port()
    collector, collector_name = start_collector(work, port)
    try:
        print(f"daemon memory, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, collector {collector_name}; "
              f"MiB, medians of {args.runs} starts; targets: idle <= 16, telempostd after deliveries <= 25")
        configs: list[tuple[str, Layout, str]] = []
        if "venv" in layouts:
            venv = Layout("editable .venv", str(Path(sys.executable).parent), sys.executable)
            configs.append(("user mode, editable .venv", venv, "user"))
        if "installed" in layouts:
            tree_root = os.path.join(work, "tree")
            inst = installed_layout(os.path.join(work, "stage"), tree_root)
            configs.append((f"user mode, {inst.name}", inst, "user"))
            if os.geteuid() == 0:
                configs.append((f"system mode, {inst.name}, below {tree_root}", inst, "system"))
            else:
                print("  system mode: not measured (needs root)")
        for label, layout, mode in configs:
            runs = []
            for _ in range(args.runs):
                root = tempfile.mkdtemp(prefix="run-", dir=work)
                if mode == "user":
                    tree = user_tree(root, layout, port)
                else:
                    tree_root = os.path.join(work, "tree")
                    shutil.rmtree(tree_root, ignore_errors=True)
                    tree = system_tree(tree_root, layout, port)
                runs.append(one_run(layout, tree, args.records, root, args.libraries))
            report(label, runs, args.records, args.detail)
    finally:
        collector.terminate()
        collector.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
