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

* acked records/s, p50/p99 latency of one send and the daemon's CPU per record, per
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
from support import make_user_install, proc_memory  # noqa: E402

HEADERS = (
    ("record_format_version", "4"), ("classification", "org.example/bench/ingest"), ("severity", "2"),
    ("machine_id", "FFFFFFFF"), ("creation_timestamp", "1700000000"), ("arch", "x86_64"),
    ("host_type", "QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-3.1"), ("build", "41000"),
    ("kernel_version", "6.6.1-1.native"), ("payload_format_version", "1"), ("system_name", "clear-linux-os"),
    ("board_name", "blank|blank"), ("cpu_model", "Intel(R) Core(TM) i7-7600U CPU @ 2.80GHz"),
    ("bios_version", "1.16.1-1"),
)


def frame(i: int, payload_len: int = 560) -> bytes:
    """A C-layout frame of about 1 KB (struct-packed, as libtelemetry writes it)."""
    hb = "".join(f"{n}: {v}\n" for n, v in HEADERS).encode() + f"event_id: {i:032x}\n".encode()
    payload = (f"record {i} " * 100).encode()[:payload_len]
    size = 4 + 4 + len(hb) + len(payload) + 1
    return struct.pack("<II", size, len(hb)) + hb + payload + b"\0"


MALFORMED = (
    struct.pack("<I", 3),  # size below the minimum
    struct.pack("<I", 50000) + b"\0" * 16,  # oversized
    struct.pack("<II", 40, 30) + b"record_format_version: 4\n" + b"\0" * 7,  # too few headers
    frame(0).replace(b"severity: 2", b"severity: 9"),  # bad severity
    frame(0)[:300],  # truncated
)


C_SENDER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
/* sender SOCKET FRAMES_FILE START_FD HALF_CLOSE EOF_OK: frames are u32 length + bytes; prints
   one latency (microseconds) per frame on stdout and the number acknowledged on stderr;
   EOF_OK 1: a close without a reply counts (the original daemon never replies). */
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    if (argc != 6) return 2;
    FILE *f = fopen(argv[2], "rb"); if (!f) return 2;
    fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    char *buf = malloc(n ? n : 1); if (fread(buf, 1, n, f) != (size_t)n) return 2; fclose(f);
    char go; if (read(atoi(argv[3]), &go, 1) != 1) return 2;
    int half = atoi(argv[4]), eof_ok = atoi(argv[5]);
    struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    long off = 0, ok = 0; char reply[512];
    while (off < n) {
        uint32_t len; memcpy(&len, buf + off, 4); off += 4;
        double t0 = now();
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            ssize_t w = 0;
            while (w < (ssize_t)len) { ssize_t r = send(s, buf + off + w, len - w, MSG_NOSIGNAL); if (r <= 0) break; w += r; }
            if (half) shutdown(s, SHUT_WR);
            ssize_t r = recv(s, reply, sizeof reply, 0);
            if ((r >= 13 && memcmp(reply, "TM/1 accepted", 13) == 0) || (r == 0 && eof_ok)) ok++;
        }
        close(s);
        printf("%.1f\n", (now() - t0) * 1e6);
        off += len;
    }
    fprintf(stderr, "%ld\n", ok);
    return 0;
}
"""


def build_c_sender(directory: str) -> str | None:
    src, exe = os.path.join(directory, "sender.c"), os.path.join(directory, "sender")
    with open(src, "w") as f:
        f.write(C_SENDER)
    try:
        r = subprocess.run(["gcc", "-O2", "-o", exe, src], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return exe if r.returncode == 0 else None


def drive_c(exe: str, path: str, frames: list[bytes], senders: int, workdir: str,
            half_close: bool = False, eof_ok: bool = False) -> tuple[int, float, list[float]]:
    files = []
    for i in range(senders):
        name = os.path.join(workdir, f"frames-{i}")
        with open(name, "wb") as f:
            for fr in frames[i::senders]:
                f.write(struct.pack("<I", len(fr)) + fr)
        files.append(name)
    r, w = os.pipe()
    procs = [subprocess.Popen([exe, path, name, str(r), str(int(half_close)), str(int(eof_ok))], pass_fds=(r,),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in files]
    time.sleep(0.2)
    t0 = time.perf_counter()
    os.write(w, b"x" * senders)
    outs = [p.communicate() for p in procs]
    elapsed = time.perf_counter() - t0
    os.close(r)
    os.close(w)
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
    print(f"{label:<34} {acked / elapsed:9,.0f} acked rec/s   p50 {pct(lat, 50):6.2f} ms   "
          f"p99 {pct(lat, 99):6.2f} ms   ({acked}/{total} acked in {elapsed:.2f} s)")


OUR_CONFIG = ("spool_max_size=-1\nrecord_burst_limit=1000000000\nbyte_burst_limit=1000000000000\n"
              "rate_limit_uid_share=100\nlog_level=error\nmax_connections=256\n")


def churn(directory: str, n: int) -> None:
    """Create and delete `n` files in `directory` (what a week of the original's spool does)."""
    for i in range(n):
        name = os.path.join(directory, f"churn-{i}")
        with open(name, "wb") as f:
            f.write(b"x" * 900)
        os.unlink(name)


class Daemon:
    """Ours (`python -m telemetry.daemons.probd.main`) or the original C telemprobd, in a
    fresh directory.  The original reads only the defaults file under its build prefix
    (its -f sets the library's file, not the daemon's) and keeps its machine id there, so
    the bench gives it its own in a private mount namespace (root only)."""

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
            inst.write_config(f"socket_path={self.sock}\nspool_dir={self.spool}\n{OUR_CONFIG}{extra}")
            cmd, env = [sys.executable, "-m", "telemetry.daemons.probd.main"], inst.env
        else:
            assert c_binary
            # Its build prefix rebuilt on a tmpfs in a private mount namespace: its own
            # directories bound back in, our defaults file over its, an empty var/ for the
            # machine id.  (An overlayfs does the same in one mount but made every open of
            # the machine id cost half a millisecond here.)
            prefix = os.path.dirname(os.path.dirname(os.path.abspath(c_binary)))
            conf, orig = os.path.join(root, "conf"), os.path.join(root, "orig")
            os.makedirs(conf)
            os.makedirs(orig)
            with open(os.path.join(conf, "telemetrics.conf"), "w") as f:
                f.write(f"[settings]\nsocket_path={self.sock}\nspool_dir={self.spool}\nrate_limit_enabled=false\n"
                        "spool_max_size=-1\ndaemon_recycling_enabled=false\n")
            binds = " && ".join(f"mkdir {prefix}/{d} && mount --bind {orig}/{d} {prefix}/{d}"
                                for d in sorted(os.listdir(prefix)))
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   f"mount --bind {prefix} {orig} && mount -t tmpfs tmpfs {prefix} && {binds} && "
                   f"mount --bind {conf} {prefix}/share/defaults/telemetrics && mkdir -p {prefix}/var/lib/telemetry "
                   f"&& exec {c_binary}"]
            env = dict(os.environ)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{kind} telemprobd did not start")
            time.sleep(0.05)
        time.sleep(0.3)
        # The daemon itself (for the C one, the process unshare exec'd into).
        me = psutil.Process(self.proc.pid)
        self.ps = me if kind == "ours" else (me.children() or [me])[0]

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
