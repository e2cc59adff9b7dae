"""telemprobd ingest: acknowledged records per second, latency and memory.

    .venv/bin/python bench/probd_ingest.py [--records 20000] [--counts 1,8,32] [--churn 20000]
                                           [--sync-interval S] [--through 100000] [--malformed 100000]
                                           [--senders c|python] [--c-telemprobd PATH]

Starts a real telemprobd in a fresh private user-mode tree for every sender count (spool
on the file system of the temp dir, rate limits on with limits high enough never to
refuse) and drives it from separate sender processes that each send pre-encoded ~1 KB
frames, one per connection, and wait for the acknowledgement before the next.  With
`--c-telemprobd PATH` the original C daemon is measured the same way (it never replies:
its close counts, as the library counts it).  The
senders are a small C program compiled here (what a libtelemetry probe does, plus
reading the ack), or Python processes with `--senders python` (they need several
times the CPU per record, and share the machine's cores with the daemon).  Prints:

* acked records/s, p50/p99 (and p90, p98, p99.9, the longest) latency of one send and the daemon's
  CPU per record, per
  sender count, on a fresh spool directory and (`--churn N`) after N files were created
  and deleted in it;
* the same at 8 senders after `--through` more records have gone through (the queue
  is not emptied: the ext4 churn that ruins the original does not apply to one file);
* daemon RSS: idle, peak (VmHWM) under load, after 10^3 and after 10^5 malformed frames.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import (  # noqa: E402
    OUR_INGEST_CONFIG,
    build_c_sender,
    c_daemon_processes,
    c_daemons_command,
    frame,
    write_frames,
)
from support import make_user_install, proc_memory  # noqa: E402

MALFORMED = (
    struct.pack("<I", 3),  # size below the minimum
    struct.pack("<I", 50000) + b"\0" * 16,  # oversized
    struct.pack("<II", 40, 30) + b"record_format_version: 4\n" + b"\0" * 7,  # too few headers
    frame(0).replace(b"severity: 2", b"severity: 9"),  # bad severity
    frame(0)[:300],  # truncated
)


def drive_c(exe: str, path: str, frames: list[bytes], senders: int, workdir: str,
            half_close: bool = False, eof_ok: bool = False) -> tuple[int, float, list[float]]:
    files = [write_frames(os.path.join(workdir, f"frames-{i}"), frames[i::senders]) for i in range(senders)]
    r, w = os.pipe()
    # Each sender writes a line per record: to a file, not a pipe that one communicate() at
    # a time drains (past 64 KiB of lines, the senders not being read would stall).
    logs = [tempfile.TemporaryFile(dir=workdir) for _ in range(2 * senders)]
    procs = [subprocess.Popen([exe, path, name, str(r), str(int(half_close)), str(int(eof_ok))], pass_fds=(r,),
                              stdout=logs[2 * i], stderr=logs[2 * i + 1]) for i, name in enumerate(files)]
    time.sleep(0.2)
    t0 = time.perf_counter()
    os.write(w, b"x" * senders)
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - t0
    os.close(r)
    os.close(w)
    outs = []
    for i in range(senders):
        for f in logs[2 * i:2 * i + 2]:
            f.seek(0)
        outs.append((logs[2 * i].read(), logs[2 * i + 1].read()))
        logs[2 * i].close()
        logs[2 * i + 1].close()
    latencies = [float(x) / 1e6 for out, _ in outs for x in out.split()]
    acked = sum(int(err.split()[-1]) for _, err in outs if err.split())
    return acked, elapsed, latencies


def sender(path: str, frames: list[bytes], start, out, half_close: bool = False) -> None:
    latencies = []
    ok = 0
    start.wait()
    for f in frames:
        t0 = time.perf_counter()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall(f)
            if half_close:  # a truncated frame is answered at EOF, not after the timeout
                s.shutdown(socket.SHUT_WR)
            reply = s.recv(512)
        except OSError:
            reply = b""
        finally:
            s.close()
        latencies.append(time.perf_counter() - t0)
        ok += reply.startswith(b"TM/1 accepted")
    out.put((ok, latencies))


def drive(path: str, frames: list[bytes], senders: int, half_close: bool = False) -> tuple[int, float, list[float]]:
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=sender, args=(path, frames[i::senders], start, out, half_close))
             for i in range(senders)]
    for p in procs:
        p.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    start.set()
    results = [out.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    acked = sum(r[0] for r in results)
    latencies = [x for r in results for x in r[1]]
    return acked, elapsed, latencies


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    return proc_memory(pid, "VmRSS") / 2**20, proc_memory(pid, "VmHWM") / 2**20


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1] * 1000 if len(values) > 1 else 0.0


def report(label: str, acked: int, total: int, elapsed: float, lat: list[float]) -> None:
    tail = "  ".join(f"p{q:g} {pct(lat, q):.2f}" for q in (90, 98, 99.9))
    tail += f"  max {max(lat, default=0) * 1000:.1f}"
    print(f"{label:<34} {acked / elapsed:9,.0f} acked rec/s   p50 {pct(lat, 50):6.2f} ms   "
          f"p99 {pct(lat, 99):6.2f} ms   ({acked}/{total} acked in {elapsed:.2f} s; {tail})")


def churn(directory: str, n: int) -> None:
    """Create and delete `n` files in `directory` (what a week of the original's spool does)."""
    for i in range(n):
        name = os.path.join(directory, f"churn-{i}")
        with open(name, "wb") as f:
            f.write(b"x" * 900)
        os.unlink(name)


class Daemon:
    """Ours (`python -m telemetry.daemons.probd.main`) or the original C telemprobd, in a
    fresh directory; the original with its own config in a private mount namespace (root
    only: `c_daemons_command`)."""

    def __init__(self, kind: str, c_binary: str | None, root: str, extra: str):
        self.kind = kind
        self.root = root
        self.sock = f"{root}/run/s"
        self.spool = f"{root}/spool"
        os.makedirs(f"{root}/run", exist_ok=True)
        os.makedirs(self.spool, exist_ok=True)
        if kind == "ours":
            inst = make_user_install(Path(root))
            inst.opt_in()
            inst.write_config(f"socket_path={self.sock}\nspool_dir={self.spool}\n{OUR_INGEST_CONFIG}{extra}")
            cmd, env = [sys.executable, "-m", "telemetry.daemons.probd.main"], inst.env
        else:
            assert c_binary
            cmd = c_daemons_command(
                os.path.dirname(os.path.dirname(os.path.abspath(c_binary))), root,
                f"[settings]\nsocket_path={self.sock}\nspool_dir={self.spool}\nrate_limit_enabled=false\n"
                "spool_max_size=-1\ndaemon_recycling_enabled=false\n", [os.path.basename(c_binary)])
            env = dict(os.environ)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{kind} telemprobd did not start")
            time.sleep(0.05)
        time.sleep(0.3)
        name = os.path.basename(c_binary or "")
        self.ps = psutil.Process(self.proc.pid) if kind == "ours" else c_daemon_processes(self.proc, [name])[name]

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--counts", default="1,8", help="sender counts, comma-separated (default 1,8)")
    ap.add_argument("--churn", type=int, default=0,
                    help="also measure after this many files were created and deleted in the spool directory")
    ap.add_argument("--through", type=int, default=100_000)
    ap.add_argument("--malformed", type=int, default=100_000)
    ap.add_argument("--dir", default=None, help="where the spool lives (default: a temp dir)")
    ap.add_argument("--senders", choices=("c", "python"), default="c")
    ap.add_argument("--sync-interval", type=int, default=None, help="telemprobd's sync_interval (default: its own)")
    ap.add_argument("--c-telemprobd", metavar="PATH", default=None,
                    help="measure the original C telemprobd at PATH instead (root: it is given its config "
                         "in a private mount namespace); --through and --malformed do not apply")
    args = ap.parse_args()

    kind = "c" if args.c_telemprobd else "ours"
    extra = os.environ.get("PROBD_BENCH_EXTRA", "")
    if args.sync_interval is not None:
        extra += f"\nsync_interval={args.sync_interval}\n"
    base = tempfile.mkdtemp(prefix="pb-", dir=args.dir or "/tmp")
    fs = subprocess.run(["stat", "-f", "-c", "%T", base], capture_output=True, text=True).stdout.strip()
    exe = build_c_sender(base) if args.senders == "c" else None
    if args.senders == "c" and exe is None:
        print("gcc not available: using Python senders")
    sync = ("no reply, no fsync" if kind == "c" else
            f"sync_interval={args.sync_interval if args.sync_interval is not None else 'default'}")
    print(f"telemprobd ({'original C' if kind == 'c' else 'ours'}) ingest, {os.cpu_count()} CPUs, spool on {fs} "
          f"({base}), {sync}, frames of {len(frame(0))} bytes, {'C' if exe else 'Python'} senders")

    def run(sock: str, frames: list[bytes], senders: int, half_close: bool = False) -> tuple[int, float, list[float]]:
        if exe:
            return drive_c(exe, sock, frames, senders, base, half_close, eof_ok=kind == "c")
        return drive(sock, frames, senders, half_close)

    n = args.records
    frames = [frame(i) for i in range(n)]
    runs = 0
    try:
        for count in (int(c) for c in args.counts.split(",")):
            for churned in sorted({0, args.churn}):
                runs += 1
                root = os.path.join(base, f"run-{runs}")
                os.makedirs(f"{root}/spool")
                churn(f"{root}/spool", churned)
                d = Daemon(kind, args.c_telemprobd, root, extra)
                try:
                    cpu0 = d.cpu()
                    acked, elapsed, lat = run(d.sock, frames, count)
                    cpu = d.cpu() - cpu0
                finally:
                    d.stop()
                    shutil.rmtree(root, ignore_errors=True)
                label = f"{count} sender{'s' if count > 1 else ''}" + (f", after {churned} deletions" if churned else "")
                report(label, acked, n, elapsed, lat)
                print(f"{'':<34} daemon CPU {cpu / max(acked, 1) * 1e6:7.1f} us per record")
        if kind == "c" or not (args.through or args.malformed):
            return 0
        root = os.path.join(base, "long")
        os.makedirs(f"{root}/spool")
        d = Daemon(kind, None, root, extra)
        try:
            idle, _ = rss_mb(d.proc.pid)
            print(f"{'idle RSS':<34} {idle:9.1f} MB")
            if args.through:
                run(d.sock, frames, 8)
                through = [frame(n + i) for i in range(args.through)]
                acked, elapsed, lat = run(d.sock, through, 8)
                report(f"8 senders, {args.through} more", acked, args.through, elapsed, lat)
                acked, elapsed, lat = run(d.sock, frames, 8)
                report(f"8 senders, {n} after {n * 2 + args.through} queued", acked, n, elapsed, lat)
            rss, peak = rss_mb(d.proc.pid)
            print(f"{'RSS after load / peak (VmHWM)':<34} {rss:9.1f} MB / {peak:.1f} MB")
            if args.malformed:
                bad = [MALFORMED[i % len(MALFORMED)] for i in range(1000)]
                run(d.sock, bad, 8, half_close=True)
                after_1k, _ = rss_mb(d.proc.pid)
                rest = [MALFORMED[i % len(MALFORMED)] for i in range(max(0, args.malformed - 1000))]
                _, elapsed, _ = run(d.sock, rest, 8, half_close=True)
                after_all, _ = rss_mb(d.proc.pid)
                print(f"{'RSS after 10^3 malformed frames':<34} {after_1k:9.1f} MB")
                print(f"{f'RSS after {args.malformed} malformed':<34} {after_all:9.1f} MB   "
                      f"({len(rest) / elapsed:,.0f} refusals/s)")
        finally:
            d.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
