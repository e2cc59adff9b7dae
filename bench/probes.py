"""How fast the probes parse and send.

    .venv/bin/python bench/probes.py [--repeat N] [--kmsg-records N] [--oopses N] [--starts N]

- parser: every kernel log of testdata/oops fed N times through the oops parser, with the
  payload of each oops built; lines/s and oopses/s.
- kmsg scan: a synthetic /dev/kmsg stream (kernel noise with a warning every 50 records)
  through the kmsg scanner in-process; records/s.
- klogscanner end to end: a kmsg file holding K warnings replayed by `klogscanner --once`
  against a user-mode telemprobd started for the run; acknowledged records/s including
  the program's start.
- probe start: wall time of `hprobe` sending one record (a fresh Python process each).

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
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from support import make_user_install  # noqa: E402

from telemetry.probes.kmsg import KmsgRecord, KmsgScanner  # noqa: E402
from telemetry.probes.oops import OopsParser, oops_payload  # noqa: E402

TESTDATA = TESTS / "data" / "oops"

WARN = ["------------[ cut here ]------------", "WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2",
        "Modules linked in: x y z", "CPU: 0 PID: 1 Comm: t Not tainted 6.1.0 #1",
        "RAX: 0000000000000001 RBX: 0000000000000000 RCX: 0000000000000002", "Call Trace:", " <TASK>",
        " f+0x1/0x2", " g+0x3/0x4", " h+0x5/0x6", " </TASK>", "---[ end trace 0000000000000000 ]---"]


def bench_parser(repeat: int) -> None:
    files = [p.read_text(errors="replace").split("\n") for p in sorted(TESTDATA.iterdir())]
    lines = oopses = 0
    start = time.perf_counter()
    for _ in range(repeat):
        for text in files:
            parser = OopsParser()
            for line in text:
                for oops in parser.feed(line):
                    oops_payload(oops)
                    oopses += 1
            lines += len(text)
    elapsed = time.perf_counter() - start
    print(f"parser: {lines} lines, {oopses} oopses in {elapsed:.2f} s: "
          f"{lines / elapsed:,.0f} lines/s, {oopses / elapsed:,.0f} oopses/s (payload built)")


def bench_kmsg(n: int) -> None:
    records = []
    for i in range(n):
        block = i % 50
        msg = WARN[block] if block < len(WARN) else f"eth0: link up, 1000Mbps, full-duplex ({i})"
        records.append(KmsgRecord(0, 4, i, i * 100, msg))
    scanner = KmsgScanner("bench")
    found = 0
    start = time.perf_counter()
    for rec in records:
        found += len(scanner.feed(rec))
    elapsed = time.perf_counter() - start
    print(f"kmsg scan: {n} records, {found} oopses in {elapsed:.2f} s: {n / elapsed:,.0f} records/s")


class UserTree:
    """A throwaway user-mode installation with telemprobd running."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="tpb-", dir="/tmp")
        inst = make_user_install(Path(self.root))
        self.env = inst.env
        self.socket = os.path.join(self.root, "s")
        inst.write_config(f"socket_path={self.socket}\nrate_limit_enabled=false\n")
        inst.opt_in()
        self.proc = subprocess.Popen([sys.executable, "-m", "telemetry.daemons.probd.main"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("telemprobd did not start")
            time.sleep(0.05)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], env=self.env, capture_output=True, timeout=600)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)


def bench_end_to_end(oopses: int, starts: int) -> None:
    tree = UserTree()
    try:
        kmsg = Path(tree.root, "kmsg")
        with kmsg.open("w") as f:
            seq = 0
            for _ in range(oopses):
                for line in WARN:
                    f.write(f"4,{seq},{seq * 100},-;{line}\n")
                    seq += 1
        start = time.perf_counter()
        r = tree.run("telemetry.probes.klogscanner", "--kmsg", str(kmsg), "--once")
        elapsed = time.perf_counter() - start
        if r.returncode != 0:
            raise SystemExit(f"klogscanner failed: {r.stderr.decode()}")
        print(f"klogscanner end to end: {oopses} warnings acknowledged in {elapsed:.2f} s: "
              f"{oopses / elapsed:,.0f} records/s (process start included)")
        times = []
        for _ in range(starts):
            start = time.perf_counter()
            r = tree.run("telemetry.probes.hprobe", "-Hlu")
            times.append(time.perf_counter() - start)
            if r.returncode != 0:
                raise SystemExit(f"hprobe failed: {r.stderr.decode()}")
        print(f"hprobe start to acknowledgement: median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms over {starts} runs")
    finally:
        tree.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--kmsg-records", type=int, default=200_000)
    ap.add_argument("--oopses", type=int, default=2000)
    ap.add_argument("--starts", type=int, default=10)
    args = ap.parse_args()
    if TESTDATA.is_dir():
        bench_parser(args.repeat)
    else:
        print(f"parser: skipped, no test data at {TESTDATA}")
    bench_kmsg(args.kmsg_records)
    bench_end_to_end(args.oopses, args.starts)


if __name__ == "__main__":
    main()
