"""The whole client pipeline end to end: senders -> telemprobd -> queue -> telempostd -> collector.

    .venv/bin/python bench/pipeline.py [--senders 8] [--seconds 60] [--rate R] [--interval 5]
                                       [--sync-interval S] [--in-flight N] [--drain]
                                       [--c-prefix /path/to/original/prefix]

Starts, in a throwaway user-mode installation under /tmp, the real telemprobd and
telempostd (`python -m ...`, one config file) delivering to nginx on 127.0.0.1 answering
201 to every POST (a Python http.server when nginx is not installed).  N sender processes
(a small C program compiled here, as in bench/probd_ingest.py) each send ~1 KB frames, one
connection per frame, the next one as soon as the previous is acknowledged, for
`--seconds`; `--rate R` caps their total at R frames/s.

Every `--interval` seconds it prints the records acknowledged and delivered per second in
that interval (delivered: counted by the collector, one access-log line per request) and
the queue backlog (records in the queue).  Then a summary: acknowledged/s and delivered/s
over the run, the backlog's growth in records/s (least-squares slope over the samples:
flat is about 0), each daemon's CPU seconds per 1,000 records (telemprobd per record
acknowledged, telempostd per record delivered), p50/p99 of a send (connect to
acknowledgement), and the load average at start and end (other work on the machine shows
in every figure).  `--drain` then waits until the backlog is delivered.

With `--c-prefix DIR` the original C daemons under DIR/bin (telemprobd and telempostd,
root only: they are given their config in a private mount namespace) run instead; a send
counts at their close (the original never replies) and the backlog is the files in their
spool directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import (  # noqa: E402
    OUR_INGEST_CONFIG,
    QueueReader,
    build_c_sender,
    c_daemon_processes,
    c_daemons_command,
    cpu,
    delivered_count,
    frame,
    queue_path,
    start_collector,
    write_frames,
)
from support import LOOPBACK, free_port, make_user_install  # noqa: E402

FRAMES_PER_SENDER = 2000  # sent over and over; distinct event ids across senders
START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 600.0  # a bound for a stuck daemon, far above any run
TARGET_DELIVERED = 8000  # rec/s at 8 senders over 60 s


@dataclass(frozen=True)
class Sample:
    t: float
    acked: int
    delivered: int
    backlog: int


def wait_for(path: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start (exit status {proc.poll()})")
        time.sleep(0.05)


class Ours:
    """Our telemprobd and telempostd sharing one user-mode installation."""

    label = "ours"
    eof_ok = False

    def __init__(self, root: str, server: str, extra: str):
        inst = make_user_install(Path(root, "inst"))
        inst.opt_in()
        self.sock = os.path.join(root, "s")
        inst.write_config(f"socket_path={self.sock}\nserver={server}\n{OUR_INGEST_CONFIG}{extra}")
        self.logs = [open(os.path.join(root, f"{name}.log"), "wb") for name in ("telemprobd", "telempostd")]
        self.launched = [subprocess.Popen([sys.executable, "-m", f"telemetry.daemons.{mod}.main"], env=inst.env,
                                          stdout=log, stderr=subprocess.STDOUT)
                         for mod, log in zip(("probd", "postd"), self.logs, strict=True)]
        wait_for(self.sock, self.launched[0], "telemprobd")
        wait_for(queue_path(inst.paths.spool_dir), self.launched[1], "telempostd")
        self.procs = {"telemprobd": psutil.Process(self.launched[0].pid),
                      "telempostd": psutil.Process(self.launched[1].pid)}
        self.reader = QueueReader(inst.paths.spool_dir)

    def backlog(self) -> int:
        return self.reader.queued()

    def stop(self) -> None:
        for p in self.launched:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.launched:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()


class Original:
    """The original C telemprobd and telempostd with their own config (see c_daemons_command)."""

    label = "original C"
    eof_ok = True

    def __init__(self, root: str, server: str, prefix: str):
        self.sock = os.path.join(root, "s")
        self.spool = os.path.join(root, "spool")
        os.makedirs(self.spool)
        config = (f"[settings]\nsocket_path={self.sock}\nspool_dir={self.spool}\nserver={server}\n"
                  "rate_limit_enabled=false\nspool_max_size=-1\ndaemon_recycling_enabled=false\n")
        names = ["telemprobd", "telempostd"]
        self.launcher = subprocess.Popen(c_daemons_command(prefix, root, config, names),
                                         env={**os.environ, "no_proxy": LOOPBACK, "NO_PROXY": LOOPBACK},
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.sock, self.launcher, "the original telemprobd")
        self.procs = c_daemon_processes(self.launcher, names)

    def backlog(self) -> int:
        with os.scandir(self.spool) as entries:
            return sum(1 for _ in entries)

    def stop(self) -> None:
        for p in self.procs.values():
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        try:
            self.launcher.wait(30)
        except subprocess.TimeoutExpired:
            for p in self.procs.values():
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            self.launcher.wait(30)


class Senders:
    """The C senders, each with a counter file it keeps its acknowledged count in."""

    def __init__(self, exe: str, sock: str, work: str, count: int, seconds: float, rate: float | None,
                 eof_ok: bool):
        self.counters, self.latencies, self.procs = [], [], []
        r, self.go = os.pipe()
        per_sender = f"{rate / count:.3f}" if rate else "0"
        for i in range(count):
            frames = write_frames(os.path.join(work, f"frames-{i}"),
                                  [frame(i * FRAMES_PER_SENDER + j) for j in range(FRAMES_PER_SENDER)])
            counter = os.path.join(work, f"acked-{i}")
            with open(counter, "wb") as f:
                f.write(b"\0" * 8)
            latencies = os.path.join(work, f"latencies-{i}")
            with open(latencies, "wb") as out:
                self.procs.append(subprocess.Popen(
                    [exe, sock, frames, str(r), "0", str(int(eof_ok)), str(seconds), per_sender, counter],
                    pass_fds=(r,), stdout=out, stderr=subprocess.DEVNULL))
            self.counters.append(counter)
            self.latencies.append(latencies)
        os.close(r)
        self.count = count

    def start(self) -> None:
        os.write(self.go, b"x" * self.count)
        os.close(self.go)

    def acked(self) -> int:
        total = 0
        for name in self.counters:
            with open(name, "rb") as f:
                total += int.from_bytes(f.read(8), "little")
        return total

    def wait(self) -> None:
        for p in self.procs:
            p.wait()

    def latency_ms(self) -> tuple[float, float]:
        """p50 and p99 of one send, in ms."""
        values = []
        for name in self.latencies:
            with open(name) as f:
                values.extend(float(x) for x in f.read().split())
        if len(values) < 2:
            return 0.0, 0.0
        q = statistics.quantiles(values, n=100)
        return q[49] / 1000, q[98] / 1000


def slope(samples: list[Sample]) -> float:
    """The backlog's growth in records/s, least squares over the samples."""
    if len(samples) < 2:
        return 0.0
    return statistics.linear_regression([s.t for s in samples], [s.backlog for s in samples]).slope


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--senders", type=int, default=8, help="sender processes (default 8)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the senders send (default 60)")
    ap.add_argument("--rate", type=float, default=None,
                    help="cap on the senders' total, frames/s (default: as fast as acknowledged)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--sync-interval", type=int, default=None, help="our sync_interval (default: its own)")
    ap.add_argument("--in-flight", type=int, default=None, help="our max_in_flight (default: its own)")
    ap.add_argument("--drain", action="store_true", help="afterwards, wait until the backlog is delivered")
    ap.add_argument("--c-prefix", metavar="DIR", default=None,
                    help="run the original C telemprobd and telempostd from DIR/bin instead (root)")
    args = ap.parse_args(argv)
    if args.senders < 1 or args.seconds <= 0 or args.interval <= 0 or (args.rate is not None and args.rate <= 0):
        ap.error("--senders, --seconds, --interval and --rate must be positive")
    if args.c_prefix:
        for name in ("telemprobd", "telempostd"):
            if not os.access(os.path.join(args.c_prefix, "bin", name), os.X_OK):
                ap.error(f"--c-prefix: no executable {name} in {os.path.join(args.c_prefix, 'bin')}")
        if os.geteuid() != 0:
            ap.error("--c-prefix needs root (a private mount namespace gives the original its config)")
        if args.sync_interval is not None or args.in_flight is not None:
            ap.error("--sync-interval and --in-flight are settings of ours, not of the original")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix="pl-", dir="/tmp")
    exe = build_c_sender(root)
    if exe is None:
        raise SystemExit("gcc is needed to build the senders (apt-get install gcc)")
    port = free_port()
    count_log = os.path.join(root, "delivered.log")
    server = f"http://127.0.0.1:{port}/v2/collector"
    extra = "".join(f"{k}={v}\n" for k, v in (("sync_interval", args.sync_interval),
                                               ("max_in_flight", args.in_flight)) if v is not None)
    collector, collector_name = start_collector(root, port, count_log)
    pipeline: Ours | Original | None = None
    finished = False
    try:
        pipeline = Original(root, server, args.c_prefix) if args.c_prefix else Ours(root, server, extra)
        senders = Senders(exe, pipeline.sock, root, args.senders, args.seconds, args.rate, pipeline.eof_ok)
        settings = ("no reply, no fsync" if args.c_prefix else
                    f"sync_interval={args.sync_interval if args.sync_interval is not None else 'default'}, "
                    f"max_in_flight={args.in_flight if args.in_flight is not None else 'default'}")
        print(f"pipeline ({pipeline.label}; {settings}): {args.senders} C senders, frames of {len(frame(0))} bytes, "
              f"{'at most ' + format(args.rate, ',.0f') + ' frames/s' if args.rate else 'as fast as acknowledged'}, "
              f"{args.seconds:.0f} s; {os.cpu_count()} CPUs; collector {collector_name}")
        print(f"load average at start: {load()}")
        print(f"{'t (s)':>6} {'acked/s':>9} {'delivered/s':>12} {'backlog':>9} {'load 1m':>8}")
        nginx = psutil.Process(collector.pid)
        workers = [nginx, *nginx.children()]
        cpu0 = {**{name: cpu(p) for name, p in pipeline.procs.items()}, "collector": sum(map(cpu, workers))}
        t0 = time.monotonic()
        senders.start()
        samples = [Sample(0.0, 0, delivered_count(count_log), pipeline.backlog())]
        tick = 1
        while True:
            due = t0 + min(tick * args.interval, args.seconds)
            time.sleep(max(0.0, due - time.monotonic()))
            last = due >= t0 + args.seconds
            if last:
                senders.wait()
            s = Sample(time.monotonic() - t0, senders.acked(), delivered_count(count_log), pipeline.backlog())
            prev = samples[-1]
            dt = s.t - prev.t
            print(f"{s.t:6.1f} {(s.acked - prev.acked) / dt:9,.0f} {(s.delivered - prev.delivered) / dt:12,.0f} "
                  f"{s.backlog:9,} {os.getloadavg()[0]:8.2f}", flush=True)
            samples.append(s)
            if last:
                break
            tick += 1
        used = {**{name: cpu(p) - cpu0[name] for name, p in pipeline.procs.items()},
                "collector": sum(map(cpu, workers)) - cpu0["collector"]}
        end = samples[-1]
        acked, delivered = end.acked, end.delivered - samples[0].delivered
        p50, p99 = senders.latency_ms()
        print(f"load average at end: {load()}")
        print(f"acknowledged:   {acked:,} in {end.t:.1f} s = {acked / end.t:,.0f} rec/s   "
              f"(send p50 {p50:.2f} ms, p99 {p99:.2f} ms)")
        print(f"delivered:      {delivered:,} in {end.t:.1f} s = {delivered / end.t:,.0f} rec/s   "
              f"(target >= {TARGET_DELIVERED:,})")
        print(f"backlog:        {samples[0].backlog:,} at start, {end.backlog:,} at end; "
              f"slope {slope(samples):+,.1f} rec/s (least squares over {len(samples)} samples)")
        per_k = {"telemprobd": acked, "telempostd": delivered, "collector": delivered}
        print("CPU s per 1,000 records: " + ", ".join(
            f"{name} {used[name] / max(per_k[name], 1) * 1000:.3f}" for name in ("telemprobd", "telempostd", "collector"))
            + "   (CPU s in all: " + ", ".join(f"{name} {v:.1f}" for name, v in used.items()) + ")")
        if args.drain:
            t1, d1 = time.monotonic(), delivered_count(count_log)
            while pipeline.backlog():
                if time.monotonic() - t1 > DRAIN_TIMEOUT:
                    raise SystemExit(f"the backlog was not delivered within {DRAIN_TIMEOUT:.0f} s")
                time.sleep(0.05)
            took = time.monotonic() - t1
            n = delivered_count(count_log) - d1
            print(f"drain:          {n:,} more delivered in {took:.1f} s"
                  + (f" = {n / took:,.0f} rec/s" if took > 0 else ""))
        finished = True
    finally:
        if pipeline is not None:
            pipeline.stop()
        collector.terminate()
        collector.wait(30)
        if finished:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"work directory kept (logs, queue): {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
