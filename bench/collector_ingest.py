"""Records/s the reference collector ingests into SQLite, PostgreSQL and NATS JetStream;
latency of one POST; memory of each worker.

    .venv/bin/python bench/collector_ingest.py [--records N] [--in-flight K,K] [--latency-posts N]
                                               [--workers N,N] [--connections N] [--seconds S]
                                               [--no-postgres] [--no-telempostd] [--no-nats]
                                               [--fleet-only]

For each store it starts a collector (`telemetry_collector.launch`) and measures:

- ingest: N distinct version-4 records POSTed in the headers generation over K kept-alive
  connections (pycurl multi, as telempostd sends with max_in_flight=K; K = 4, its default,
  and 16); records/s is N over the wall time from the first request to the last answer,
  every answer checked to be 201.  The collector's CPU time per record (psutil) is printed
  too: it is steadier than the rate on a shared machine.
- from telempostd: the same N records queued with telemprobd's queue API, then telempostd
  started against the collector; records/s is N over the time until the collector holds
  them all.  Skipped (with the reason) when telempostd cannot run here.
- latency: POSTs one at a time on one kept-alive connection; p50 and p99 of the time from
  sending the request to the complete answer.

Fleet scale (`--workers`, default 1 and 2): the collector with several worker processes on
one port, fed by a many-connection load generator (wrk with a Lua script that gives every
request its own record id, `--connections` kept-alive connections for `--seconds`; the
pycurl poster above when wrk is not installed):

- PostgreSQL: records/s stored, every answer 201 (group commit: one multi-row INSERT and
  one commit per batch), and telempostd's records/s through the same workers;
- JetStream: records/s with the route's answer decided by JetStream (201 only after the
  publish acknowledgement), into a private nats-server (`telemetry_collector.tempnats`);
- RSS of each worker: idle after start, and its peak while the load ran.

PostgreSQL runs in a private throwaway server (`telemetry_collector.tempdb`), with its
default durability (fsync on, synchronous_commit on); SQLite runs in WAL mode with
synchronous=FULL.  Both commit before answering 201.  SQLite is also measured with
``--durability relaxed`` (synchronous=NORMAL).  The figures depend on the machine
and its load; they are printed, never asserted.
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

import pycurl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import METADATA, make_user_install  # noqa: E402

from telemetry import headers as H  # noqa: E402
from telemetry.config import DEFAULT_TID  # noqa: E402
from telemetry_collector.launch import RunningCollector, start_collector  # noqa: E402

FLOOR_SQLITE = 2000
TARGET_PG, FLOOR_PG = 5000, 3000  # records/s into PostgreSQL with several workers
TARGET_JS, FLOOR_JS = 10000, 5000  # records/s into JetStream, answered after its acknowledgement
# Every record comes from this one address: its rate limit would measure itself, not the store.
NO_ADDRESS_RATE = ["--address-rate", "0"]
# The load generator sends every record with one machine id too.
NO_RATES = [*NO_ADDRESS_RATE, "--machine-rate", "0"]


def record_headers(i: int) -> list[bytes]:
    values = {
        H.RECORD_FORMAT_VERSION: "4",
        H.CLASSIFICATION: "org.clearlinux/bench/ingest",
        H.SEVERITY: str(1 + i % 4),
        H.MACHINE_ID: f"{i:032x}",
        H.CREATION_TIMESTAMP: str(1700000000 + i),
        H.ARCH: "x86_64",
        H.HOST_TYPE: "QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-8.2",
        H.BUILD: "41000",
        H.KERNEL_VERSION: "6.1.0-18-amd64",
        H.PAYLOAD_FORMAT_VERSION: "1",
        H.SYSTEM_NAME: "debian",
        H.BOARD_NAME: "blank|blank",
        H.CPU_MODEL: "Intel(R) Xeon(R) CPU @ 2.20GHz",
        H.BIOS_VERSION: "1.16.3-debian-1.16.3-2",
        H.EVENT_ID: f"{(i * 2654435761) % (1 << 128):032x}",
    }
    lines = [f"{H.HTTP_HEADERS[k]}: {v}".encode() for k, v in values.items()]
    return lines + [
        f"{H.TID_HEADER}: {DEFAULT_TID}".encode(),
        f"{H.RECORD_ID_HEADER}: {os.getpid():08x}{i:024x}".encode(),
        b"Content-Type: application/text",
        b"Expect:",
    ]


PAYLOAD = b"bench payload: " + b"x" * 200 + b"\n"


class Poster:
    """K kept-alive pycurl handles; posts records and checks each answer's status."""

    def __init__(self, url: str, in_flight: int):
        self.url = url
        self.multi = pycurl.CurlMulti()
        self.idle = []
        for _ in range(in_flight):
            c = pycurl.Curl()
            c.setopt(pycurl.URL, url)
            c.setopt(pycurl.POST, 1)
            c.setopt(pycurl.WRITEFUNCTION, lambda data: None)
            c.setopt(pycurl.TIMEOUT, 60)
            self.idle.append(c)
        self.started: dict[int, float] = {}
        self.latencies: list[float] = []
        self.bad = 0

    def _start(self, c: pycurl.Curl, i: int) -> None:
        c.setopt(pycurl.HTTPHEADER, record_headers(i))
        c.setopt(pycurl.POSTFIELDS, PAYLOAD)
        self.started[id(c)] = time.perf_counter()
        self.multi.add_handle(c)

    def run(self, first: int, count: int) -> float:
        t0 = time.perf_counter()
        nxt, done = first, 0
        while done < count:
            while self.idle and nxt < first + count:
                self._start(self.idle.pop(), nxt)
                nxt += 1
            while self.multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            _, ok, failed = self.multi.info_read()
            for c in ok:
                if c.getinfo(pycurl.RESPONSE_CODE) != 201:
                    self.bad += 1
                self._finish(c)
                done += 1
            for c, _errno, _msg in failed:
                self.bad += 1
                self._finish(c)
                done += 1
            if not ok and not failed:
                self.multi.select(0.05)
        return time.perf_counter() - t0

    def _finish(self, c: pycurl.Curl) -> None:
        self.latencies.append(time.perf_counter() - self.started.pop(id(c)))
        self.multi.remove_handle(c)
        self.idle.append(c)

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.multi.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(collector: RunningCollector, label: str, args: argparse.Namespace, first: int) -> dict:
    import psutil

    url = collector.collector_url
    server = psutil.Process(collector.process.pid)
    warm = Poster(url, 4)
    warm.run(first, 200)
    warm.close()
    first += 200
    rates = {}
    for k in args.in_flight:
        cpu0 = server.cpu_times()
        poster = Poster(url, k)
        wall = poster.run(first, args.records)
        poster.close()
        cpu1 = server.cpu_times()
        first += args.records
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / args.records
        rates[k] = args.records / wall
        print(f"{label}: ingest {args.records} records over {k} connections: {rates[k]:,.0f} records/s "
              f"({wall:.2f} s; collector CPU {cpu * 1e6:.0f} us/record; {poster.bad} not 201)")
    single = Poster(url, 1)
    single.run(first, args.latency_posts)
    single.close()
    lat = single.latencies
    print(f"{label}: one POST at a time ({args.latency_posts}): p50 {percentile(lat, 50) * 1e3:.2f} ms, "
          f"p99 {percentile(lat, 99) * 1e3:.2f} ms, mean {statistics.fmean(lat) * 1e3:.2f} ms "
          f"({single.bad} not 201)")
    return {"rates": rates, "p99": percentile(lat, 99), "next": first + args.latency_posts}


def from_telempostd(collector: RunningCollector, label: str, count: int, workdir: str,
                    in_flight: list[int]) -> None:
    """Queue `count` records, run telempostd against the collector, time the drain."""
    for k in in_flight:
        try:
            reason = _telempostd_drain(collector, label, count, workdir, k)
        except Exception as e:  # noqa: BLE001 - report, do not fail the bench
            reason = f"{type(e).__name__}: {e}"
        if reason:
            print(f"{label}: from telempostd: skipped ({reason})")


def _telempostd_drain(collector: RunningCollector, label: str, count: int, workdir: str,
                      in_flight: int) -> str | None:
    import uuid

    from telemetry.daemons.store.queue import NewRecord, Queue, Sender
    from telemetry.record import create_record

    root = os.path.join(workdir, f"postd-{label.lower()}-{in_flight}")
    env = make_user_install(Path(root)).env
    spool = os.path.join(root, "spool")
    conf = os.path.join(root, "telemetrics.conf")
    with open(conf, "w") as f:
        f.write(f"[settings]\nserver={collector.collector_url}\nspool_dir={spool}\nmax_in_flight={in_flight}\n"
                "record_expiry=1200\nrate_limit_enabled=false\nspool_max_size=-1\n")
    base = collector.stats()["records"]
    sender = Sender(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())
    queue = Queue(spool)
    try:
        batch = []
        for i in range(count):
            rec = create_record("org.clearlinux/bench/postd", 1, PAYLOAD, metadata=METADATA, now=1700000000 + i)
            rec = rec.with_machine_id(f"{i:032x}")
            batch.append(NewRecord(record_id=uuid.uuid4().hex, received_at=time.time(), sender=sender,
                                   headers=rec.header_block(), payload=rec.payload))
        queue.insert_many(batch)
    finally:
        queue.close()
    import psutil

    workers = [psutil.Process(pid) for pid in worker_pids(collector)]
    collector_cpu0 = sum(_cpu(p) for p in workers)
    t0 = time.perf_counter()
    with open(os.path.join(root, "postd.log"), "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "telemetry.daemons.postd.main", "-f", conf],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
    postd = psutil.Process(proc.pid)
    try:
        deadline = t0 + max(120.0, count / 100)
        # Delivered means gone from telempostd's queue (it removes a row only after a 2xx):
        # counted there, so the waiting costs the collector and its database nothing.
        while True:
            left = _queued(spool)
            if left == 0:
                break
            if proc.poll() is not None:
                return f"telempostd exited with status {proc.returncode} with {left} records queued (log {root}/postd.log)"
            if time.perf_counter() > deadline:
                return f"{left} of {count} records still queued after {deadline - t0:.0f} s"
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        postd_cpu = _cpu(postd)
        collector_cpu = sum(_cpu(p) for p in workers) - collector_cpu0
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    held = collector.stats()["records"] - base
    if held < count:
        return f"the queue is empty but the collector holds {held} of {count} records"
    print(f"{label}: from telempostd (max_in_flight {in_flight}): {count} queued records delivered in "
          f"{wall:.2f} s: {count / wall:,.0f} records/s (includes telempostd start-up); CPU per record: "
          f"telempostd {postd_cpu / count * 1e6:.0f} us, collector {collector_cpu / count * 1e6:.0f} us")
    return None


def _cpu(p) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _queued(spool_dir: str) -> int:
    import sqlite3

    from telemetry.daemons.store.queue import QUEUE_DB, queue_dir

    db = sqlite3.connect(f"file:{os.path.join(queue_dir(spool_dir), QUEUE_DB)}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM records").fetchone()[0])
    finally:
        db.close()


# --- fleet scale: workers, a many-connection load generator, JetStream, memory -------------

WRK_SCRIPT = r"""
-- Every request a distinct record (its own X-Telemetry-Record-Id); counts answers other than 201.
local counter, threads = 0, {}
bad = 0  -- global: done() reads it from each thread
local headers = {HEADERS}
local body = "bench payload: " .. string.rep("x", 200) .. "\n"
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function request()
  counter = counter + 1
  headers["X-Telemetry-Record-Id"] = string.format("%08x%08x%016x", RUN, tid, counter)
  return wrk.format("POST", "/v2/collector", headers, body)
end
function response(status, hdrs, b)
  if status ~= 201 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("requests %d bad %d p50 %.2f p99 %.2f\n", summary.requests, total,
                         latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk_script(path: str) -> str:
    fields = dict(line.decode().split(": ", 1) for line in record_headers(0)[:-1])
    fields.pop(H.RECORD_ID_HEADER)
    lua = ", ".join(f'["{k}"] = "{v}"' for k, v in fields.items())
    with open(path, "w") as f:
        # A new run number each time: records of an earlier run are repeats (answered 200).
        run = int.from_bytes(os.urandom(4), "big")
        f.write(WRK_SCRIPT.replace("{HEADERS}", "{" + lua + "}").replace("RUN", str(run)))
    return path


class PeakRss:
    """Samples the RSS of a set of processes in a thread; the peak of each."""

    def __init__(self, pids: list[int]):
        import threading

        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from support import proc_memory

        while not self._stop.wait(0.2):
            for pid in self.peak:
                self.peak[pid] = max(self.peak[pid], proc_memory(pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def worker_pids(collector: RunningCollector) -> list[int]:
    import psutil

    children = [p.pid for p in psutil.Process(collector.process.pid).children()]
    return children or [collector.process.pid]


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def load(collector: RunningCollector, label: str, args: argparse.Namespace, work: str, first: int) -> float:
    """Drive the collector with many connections; print records/s and each worker's memory."""
    import psutil
    from support import proc_memory

    pids = worker_pids(collector)
    idle = [proc_memory(pid, "VmRSS") for pid in pids]
    procs = [psutil.Process(pid) for pid in pids]
    cpu0 = sum(_cpu(p) for p in procs)
    wrk = shutil.which("wrk")
    with PeakRss(pids) as peak:
        if wrk:
            done = subprocess.run([wrk, "-t", "1", "-c", str(args.connections), "-d", f"{args.seconds}s",
                                   "-s", wrk_script(os.path.join(work, "post.lua")), collector.url],
                                  capture_output=True, text=True, timeout=args.seconds + 120)
            line = next((x for x in done.stdout.splitlines() if x.startswith("requests ")), None)
            rate_line = next((x for x in done.stdout.splitlines() if x.startswith("Requests/sec")), None)
            if line is None or rate_line is None:
                print(f"{label}: wrk failed: {done.stdout[-300:]} {done.stderr[-300:]}")
                return 0.0
            _, requests, _, bad, _, p50, _, p99 = line.split()
            rate = float(rate_line.split()[1])
            per_record = (sum(_cpu(p) for p in procs) - cpu0) / max(int(requests), 1)
            how = (f"wrk, {args.connections} connections, {args.seconds} s: {int(requests):,} requests, "
                   f"{bad} not 201, p50 {p50} ms, p99 {p99} ms; collector CPU {per_record * 1e6:.0f} us/record")
        else:
            poster = Poster(collector.collector_url, args.connections)
            count = args.records * 2
            wall = poster.run(first, count)
            poster.close()
            rate = count / wall
            how = f"pycurl (wrk is not installed), {args.connections} connections: {poster.bad} not 201"
    print(f"{label}: {rate:,.0f} records/s ({how})")
    print(f"{label}: RSS per worker, MiB: idle {', '.join(mib(m) for m in idle)}; under load "
          f"{', '.join(mib(peak.peak[p]) for p in pids)}")
    return rate


def fleet(args: argparse.Namespace, work: str) -> None:
    from telemetry_collector.tempdb import TemporaryPostgres, TempPostgresError
    from telemetry_collector.tempnats import TempNatsError, TemporaryNats

    if not args.no_postgres:
        try:
            pg = TemporaryPostgres(durable=True).start()
        except TempPostgresError as e:
            print(f"PostgreSQL: skipped ({e})")
        else:
            try:
                for n in args.workers:
                    label = f"PostgreSQL, {n} worker{'s' * (n > 1)}"
                    with start_collector(pg.create_database(), args=["--workers", str(n), *NO_RATES],
                                         log_path=os.path.join(work, f"pg-{n}.log")) as c:
                        rate = load(c, label, args, work, 0)
                        verdict = "meets the target" if rate >= TARGET_PG else (
                            "meets the floor" if rate >= FLOOR_PG else "BELOW the floor")
                        print(f"{label}: {verdict} ({TARGET_PG:,} target, {FLOOR_PG:,} floor)")
                        if not args.no_telempostd:
                            from_telempostd(c, label, args.postd_records, work, [16, 32])
            finally:
                pg.stop()
    if not args.no_nats:
        try:
            ns = TemporaryNats().start()
        except TempNatsError as e:
            print(f"JetStream: skipped ({e})")
            return
        try:
            conf = os.path.join(work, "jetstream.toml")
            with open(conf, "w") as f:
                f.write(f'[records]\n"*" = ["nats"]\n[reliable_ack]\n"*" = "nats"\n'
                        f'[nats]\nservers = ["{ns.url}"]\n')
            for n in args.workers:
                label = f"JetStream (reliable), {n} worker{'s' * (n > 1)}"
                with start_collector(f"sqlite:///{work}/js-{n}.db",
                                     args=["--workers", str(n), "--dispatch", conf, *NO_RATES],
                                     log_path=os.path.join(work, f"js-{n}.log")) as c:
                    rate = load(c, label, args, work, 0)
                    verdict = "meets the target" if rate >= TARGET_JS else (
                        "meets the floor" if rate >= FLOOR_JS else "BELOW the floor")
                    print(f"{label}: {verdict} ({TARGET_JS:,} target, {FLOOR_JS:,} floor)")
        finally:
            ns.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--in-flight", type=lambda v: [int(x) for x in v.split(",")], default=[4, 16],
                        help="comma-separated connection counts (telempostd's default max_in_flight is 4)")
    parser.add_argument("--latency-posts", type=int, default=2000)
    parser.add_argument("--postd-records", type=int, default=10000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-telempostd", action="store_true")
    parser.add_argument("--no-nats", action="store_true")
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                        help="comma-separated worker counts for the fleet-scale runs")
    parser.add_argument("--connections", type=int, default=64, help="the load generator's connections")
    parser.add_argument("--seconds", type=int, default=10, help="how long the load generator runs")
    parser.add_argument("--fleet-only", action="store_true", help="only the fleet-scale runs")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cbench-")
    print(f"collector ingest benchmark: {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} (shared machine: figures are provisional)")
    try:
        if args.fleet_only:
            fleet(args, work)
            return 0
        db = os.path.join(work, "records.db")
        with start_collector(f"sqlite:///{db}", log_path=os.path.join(work, "sqlite.log"), args=NO_ADDRESS_RATE) as c:
            result = measure(c, "SQLite", args, 0)
            rate = result["rates"].get(4, max(result["rates"].values()))
            verdict = "meets" if rate >= FLOOR_SQLITE else "BELOW"
            print(f"SQLite: {verdict} the floor of {FLOOR_SQLITE:,} records/s with 4 connections")
            if not args.no_telempostd:
                from_telempostd(c, "SQLite", args.postd_records, work, args.in_flight)
        db = os.path.join(work, "relaxed.db")
        with start_collector(f"sqlite:///{db}", log_path=os.path.join(work, "relaxed.log"),
                             args=["--durability", "relaxed", *NO_ADDRESS_RATE]) as c:
            relaxed = argparse.Namespace(**{**vars(args), "latency_posts": 200})
            measure(c, "SQLite --durability relaxed", relaxed, 0)
        if not args.no_postgres:
            from telemetry_collector.tempdb import TemporaryPostgres, TempPostgresError

            try:
                pg = TemporaryPostgres(durable=True).start()
            except TempPostgresError as e:
                print(f"PostgreSQL: skipped ({e})")
            else:
                try:
                    with start_collector(pg.create_database(), log_path=os.path.join(work, "pg.log"),
                                         args=NO_ADDRESS_RATE) as c:
                        measure(c, "PostgreSQL", args, 0)
                        if not args.no_telempostd:
                            from_telempostd(c, "PostgreSQL", args.postd_records, work, args.in_flight)
                finally:
                    pg.stop()
        fleet(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
