"""Records/s the reference collector ingests into SQLite and PostgreSQL; latency of one POST.

    .venv/bin/python bench/collector_ingest.py [--records N] [--in-flight K,K] [--latency-posts N]
                                               [--no-postgres] [--no-telempostd]

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
# Every record comes from this one address: its rate limit would measure itself, not the store.
NO_ADDRESS_RATE = ["--address-rate", "0"]


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
    t0 = time.perf_counter()
    with open(os.path.join(root, "postd.log"), "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "telemetry.daemons.postd.main", "-f", conf],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = t0 + max(120.0, count / 100)
        while True:
            held = collector.stats()["records"] - base
            if held >= count:
                break
            if proc.poll() is not None:
                return f"telempostd exited with status {proc.returncode} after {held} records (log {root}/postd.log)"
            if time.perf_counter() > deadline:
                return f"only {held} of {count} records arrived within {deadline - t0:.0f} s"
            time.sleep(0.1)  # the count is a table scan on the collector's writer: not too often
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"{label}: from telempostd (max_in_flight {in_flight}): {count} queued records delivered in "
          f"{wall:.2f} s: {count / wall:,.0f} records/s (includes telempostd start-up)")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--in-flight", type=lambda v: [int(x) for x in v.split(",")], default=[4, 16],
                        help="comma-separated connection counts (telempostd's default max_in_flight is 4)")
    parser.add_argument("--latency-posts", type=int, default=2000)
    parser.add_argument("--postd-records", type=int, default=10000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-telempostd", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cbench-")
    print(f"collector ingest benchmark: {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} (shared machine: figures are provisional)")
    try:
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
