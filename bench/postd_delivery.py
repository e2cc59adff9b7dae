"""telempostd delivery: records/s, CPU per 1,000 records, memory, CPU while backing off.

    .venv/bin/python bench/postd_delivery.py [--records 5000] [--in-flight 4] [--down-seconds 60]
    .venv/bin/python bench/postd_delivery.py --quick      # 2,000 records, 10 s down

Starts a real telempostd (`python -m telemetry.daemons.postd.main`) in a private user-mode
tree and a local collector answering 201 to every POST: nginx (Debian nginx-light) with a
temp config (`return 201;`, HTTP/1.1 keep-alive) when it is installed, else a Python
http.server (much slower; the figure then measures that server). Then:

1. idle RSS of the daemon, started on an empty queue;
2. N records of about 1 KB committed to the queue in one transaction, the wake-up file
   touched; the time from that commit until the queue is empty gives records/s (also
   shown counting the time the bench takes to queue them, which the daemon waits out);
   the daemon's CPU time (user+system, psutil) over that span gives CPU s per 1,000
   records; VmHWM the peak RSS;
3. the collector stopped, 1,000 records queued: the daemon's CPU time over the next
   `--down-seconds` seconds, while it backs off.

The figures are for this machine at the time of the run; other load on it shows in them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import QueueReader, cpu, queue_path, start_collector  # noqa: E402
from support import METADATA, free_port, make_user_install, proc_memory  # noqa: E402

from telemetry.contract import request_header_block  # noqa: E402
from telemetry.daemons.store.queue import NewRecord, Queue, Sender  # noqa: E402
from telemetry.record import create_record  # noqa: E402

ORIGINAL_RATE = 2400  # records/s, the original on this machine (a new connection per record)
ORIGINAL_CPU = 0.24  # CPU s per 1,000 records
DRAIN_TIMEOUT = 600.0  # a bound for a stuck daemon, far above any run

def rows(n: int, size: int, start: int = 0, legacy: bool = False) -> list[NewRecord]:
    """Rows as telemprobd queues them (with their request header lines), or, `legacy`, as
    a version before queue schema 2 did (telempostd then parses each record)."""
    sender = Sender(os.getuid(), os.getgid(), os.getpid())
    out = []
    for i in range(start, start + n):
        r = create_record("org.example/bench/delivery", 2, b"", metadata=METADATA, now=1_700_000_000,
                          event_id=f"{i:032x}").with_machine_id("6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b")
        headers = r.header_block()
        payload = (f"record {i} " * 200).encode()[: max(0, size - len(headers))]
        out.append(NewRecord(uuid.uuid4().hex, time.time(), sender, headers, payload,
                             request_headers=None if legacy else request_header_block(r)))
    return out


def enqueue(spool: str, batch: list[NewRecord]) -> None:
    q = Queue(spool)
    q.insert_many(batch)
    q.touch_wakeup()
    q.close()


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--size", type=int, default=1024, help="bytes per record (headers + payload)")
    ap.add_argument("--in-flight", type=int, default=4, help="max_in_flight")
    ap.add_argument("--down-seconds", type=float, default=60.0)
    ap.add_argument("--waiting", type=int, default=1000, help="records queued while the collector is down")
    ap.add_argument("--quick", action="store_true", help="2,000 records and 10 s down")
    ap.add_argument("--legacy-rows", action="store_true",
                    help="rows without stored request header lines (as queued before schema 2)")
    args = ap.parse_args()
    if args.quick:
        args.records, args.down_seconds = min(args.records, 2000), 10.0

    root = tempfile.mkdtemp(prefix="pb-", dir="/tmp")
    inst = make_user_install(Path(root))
    spool = inst.paths.spool_dir
    port = free_port()
    inst.write_config(f"server=http://127.0.0.1:{port}/v2/collector\nmax_in_flight={args.in_flight}\n"
                      "log_level=warning\n")

    collector, collector_name = start_collector(root, port)
    log_path = os.path.join(root, "telempostd.log")
    log = open(log_path, "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "telemetry.daemons.postd.main"], env=inst.env,
                              stdout=log, stderr=subprocess.STDOUT)
    proc = psutil.Process(daemon.pid)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(queue_path(spool)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)
        idle_rss = proc.memory_info().rss
        reader = QueueReader(spool)

        batch = rows(args.records, args.size, legacy=args.legacy_rows)
        record_bytes = sum(r.size for r in batch) / len(batch)
        cpu0 = cpu(proc)
        t0 = time.perf_counter()
        enqueue(spool, batch)
        committed = time.perf_counter()
        while reader.queued():
            if daemon.poll() is not None or time.perf_counter() - t0 > DRAIN_TIMEOUT:
                raise SystemExit(f"telempostd did not deliver the records (exit status {daemon.poll()}); "
                                 f"log: {log_path}")
            time.sleep(0.01)
        done = time.perf_counter()
        elapsed, queueing = done - committed, committed - t0
        used = cpu(proc) - cpu0
        peak_rss = proc_memory(daemon.pid, "VmHWM")
        delivered = reader.counter("delivered")
        after_rss = proc.memory_info().rss

        # The collector goes away; records keep arriving.
        collector.terminate()
        collector.wait(30)
        enqueue(spool, rows(args.waiting, args.size, start=args.records))
        deadline = time.monotonic() + 30
        while reader.counter("retried") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        retried0 = reader.counter("retried")
        cpu1 = cpu(proc)
        time.sleep(args.down_seconds)
        down_cpu = cpu(proc) - cpu1
        retried = reader.counter("retried") - retried0
        waiting = reader.queued()
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if collector.poll() is None:
            collector.terminate()
            collector.wait(30)
        log.close()

    rate = args.records / elapsed
    rate_with_queueing = args.records / (elapsed + queueing)
    per_k = used / (args.records / 1000)
    print(f"telempostd delivery ({args.records} records of ~{record_bytes:.0f} B, max_in_flight {args.in_flight}"
          f"{', rows without stored request headers' if args.legacy_rows else ''})")
    print(f"  collector:                  {collector_name} on 127.0.0.1, HTTP/1.1 keep-alive, 201")
    print(f"  delivered:                  {delivered} in {elapsed:.2f} s after the commit that queued them"
          f" (queueing them took {queueing:.2f} s)")
    print(f"  records/s:                  {rate:,.0f}   ({rate_with_queueing:,.0f} counting the queueing;"
          f" original {ORIGINAL_RATE:,}/s; target 10,000)")
    print(f"  CPU s per 1,000 records:    {per_k:.3f}   (original {ORIGINAL_CPU}; target 0.07)")
    print(f"  RSS idle / peak / after:    {mb(idle_rss)} / {mb(peak_rss)} / {mb(after_rss)}"
          "   (target <= 25 MB idle, ceiling 40 MB)")
    print(f"  collector down, {waiting} waiting: CPU {down_cpu:.3f} s over {args.down_seconds:.0f} s,"
          f" {retried} further attempts")
    rc = daemon.returncode
    if rc not in (0, None):
        print(f"  telempostd exited with {rc}; log: {log_path}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
