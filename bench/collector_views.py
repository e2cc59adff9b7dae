"""The collector's web views with a million records: each view's time, on SQLite and on
PostgreSQL; and what grouping at ingestion costs the ingestion rate.

    .venv/bin/python bench/collector_views.py [--records N] [--repeat R] [--ingest M] [--rounds K]
                                             [--no-postgres] [--keep DIR]

For each store:

- load: N records of a realistic mix (tests/collector/views_dataset.py: heartbeats from
  20,000 machines whose ids rotate every 3 days, journal errors, updates, crash reports
  of a few dozen programs in crashprobe's layout, the kernel oopses of tests/data/oops,
  MCE events), received over 30 days, stored through the collector's ingest hook in
  transactions of 1,000 (records/s of the load is printed for information).  PostgreSQL
  is then ANALYZEd, as its autovacuum would have done.
- views: a collector serves the store; each view is requested R times on one kept-alive
  connection with a read token, and the median and 90th percentile of the time to the
  complete answer are printed (loopback HTTP included, so this is the server's time plus
  well under a millisecond).  Target: median at most 200 ms.
- ingestion: M records of the same mix are POSTed over 16 kept-alive connections to a
  collector with the payload parsers (crash and kernel grouping, MCE facts) on, then to
  one with them off (``--no-payload-parsers``; the views' counters are kept either way),
  alternately, K rounds each, into the loaded store; records/s (median of the rounds) and
  the collector's CPU time per record.  Target: on at least 90 % of off.
- write path: the writer's transactions alone, in this process (batches of 8 and 64
  records of the mix), each variant into a new empty database: without the hook, with its
  counters only, with counters and parsers.

Figures depend on the machine and its load: they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pycurl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "collector"))
sys.path.insert(0, str(ROOT / "bench"))
from collector_ingest import Poster, percentile  # noqa: E402
from views_dataset import realistic, store_records  # noqa: E402

from telemetry import headers as H  # noqa: E402
from telemetry.config import DEFAULT_TID  # noqa: E402
from telemetry_collector.launch import RunningCollector, start_collector  # noqa: E402
from telemetry_collector.model import NewRecord  # noqa: E402
from telemetry_collector.tempdb import TemporaryPostgres, TempPostgresError  # noqa: E402

DAY = 86400
TARGET_MS = 200.0
LIMITS_OFF = ["--machine-rate", "0", "--address-rate", "0"]


def views(first_id: int, machine: str, days_ago_10: str) -> list[tuple[str, str]]:
    """(name, path) of every view, and of the Records view's filters and a deep page."""
    return [
        ("index", "/telemetryui"),
        ("records", "/telemetryui/records"),
        ("records, classification", "/telemetryui/records?classification=org.clearlinux%2Fkernel%2Fbug"),
        ("records, prefix and severity", "/telemetryui/records?classification=org.clearlinux%2Fcrash%2F*&severity=4"),
        ("records, build", "/telemetryui/records?build=41150"),
        ("records, machine", f"/telemetryui/records?machine_id={machine}"),
        ("records, one day 10 days ago", f"/telemetryui/records?from={days_ago_10}&to={days_ago_10}"),
        ("records, a page far back", f"/telemetryui/records?before={first_id + 1000}"),
        ("record", f"/telemetryui/records/{first_id + 12345}"),
        ("builds, 30 days", "/telemetryui/builds?days=30"),
        ("stats, 30 days", "/telemetryui/stats?days=30"),
        ("crashes, 7 days", "/telemetryui/crashes?days=7"),
        ("crashes, 30 days", "/telemetryui/crashes?days=30"),
        ("kernel, 7 days", "/telemetryui/kernel?days=7"),
        ("kernel, 30 days", "/telemetryui/kernel?days=30"),
        ("population, 7 days", "/telemetryui/population?days=7"),
        ("population, 30 days", "/telemetryui/population?days=30"),
        ("MCE (plugin), 30 days", "/telemetryui/mce?days=30"),
    ]


def time_views(collector: RunningCollector, label: str, pages: list[tuple[str, str]], repeat: int) -> list[float]:
    parts = urllib.parse.urlsplit(collector.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    headers = {"Authorization": f"Bearer {collector.token}"}
    medians = []
    print(f"{label}: view times over {repeat} requests each (median, p90; target median <= {TARGET_MS:.0f} ms)")
    for name, path in pages:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            times.append((time.perf_counter() - t0) * 1e3)
            if response.status != 200:
                raise SystemExit(f"{path}: {response.status} {body[:200]!r}")
        median = statistics.median(times)
        medians.append(median)
        flag = "" if median <= TARGET_MS else "  (over the target)"
        print(f"  {name:<32} {median:8.1f} ms  p90 {percentile(times, 90):8.1f} ms  {len(body) / 1024:6.0f} KiB{flag}")
    conn.close()
    print(f"{label}: slowest view median {max(medians):.1f} ms; median of the views' medians "
          f"{statistics.median(medians):.1f} ms")
    return medians


class MixPoster(Poster):
    """The Poster of bench/collector_ingest.py, sending records of the realistic mix."""

    def __init__(self, url: str, in_flight: int, records: list[NewRecord], tag: str):
        super().__init__(url, in_flight)
        self.records = records
        self.tag = tag

    def _start(self, c: pycurl.Curl, i: int) -> None:
        r = self.records[i % len(self.records)]
        values = {
            H.RECORD_FORMAT_VERSION: "4", H.CLASSIFICATION: r.classification, H.SEVERITY: str(r.severity),
            H.MACHINE_ID: r.machine_id, H.CREATION_TIMESTAMP: str(r.ts_capture), H.ARCH: r.arch,
            H.HOST_TYPE: r.host_type, H.BUILD: r.build, H.KERNEL_VERSION: r.kernel_version,
            H.PAYLOAD_FORMAT_VERSION: "1", H.SYSTEM_NAME: r.system_name, H.BOARD_NAME: r.board_name,
            H.CPU_MODEL: r.cpu_model, H.BIOS_VERSION: r.bios_version, H.EVENT_ID: f"{i:032x}",
        }
        headers = [f"{H.HTTP_HEADERS[k]}: {v}".encode() for k, v in values.items()]
        headers += [f"{H.TID_HEADER}: {DEFAULT_TID}".encode(), f"{H.RECORD_ID_HEADER}: {self.tag}{i:024x}".encode(),
                    b"Content-Type: application/text", b"Expect:"]
        c.setopt(pycurl.HTTPHEADER, headers)
        c.setopt(pycurl.POSTFIELDS, r.payload.encode())
        self.started[id(c)] = time.perf_counter()
        self.multi.add_handle(c)


def ingest(database: str, work: str, label: str, count: int, rounds: int) -> None:
    import psutil

    mix = list(realistic(5000, end=int(time.time()), seed=7))
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    first = 0
    for n in range(rounds):
        for parse in (True, False):
            args = [*LIMITS_OFF, "--payload-parsers" if parse else "--no-payload-parsers"]
            with start_collector(database, args=args, log_path=os.path.join(work, f"ingest-{label}.log"),
                                 read_token=False) as c:
                warm = MixPoster(c.collector_url, 4, mix, f"{os.getpid():04x}{n:02x}{int(parse)}a")
                warm.run(0, 200)
                warm.close()
                server = psutil.Process(c.process.pid)
                cpu0 = server.cpu_times()
                poster = MixPoster(c.collector_url, 16, mix, f"{os.getpid():04x}{n:02x}{int(parse)}b")
                wall = poster.run(first, count)
                cpu1 = server.cpu_times()
                poster.close()
                if poster.bad:
                    raise SystemExit(f"{label}: {poster.bad} POSTs were not answered 201")
                first += count
                cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / count
                results[parse].append((count / wall, cpu))
    on = statistics.median(r for r, _ in results[True])
    off = statistics.median(r for r, _ in results[False])
    cpu_on = statistics.median(c for _, c in results[True])
    cpu_off = statistics.median(c for _, c in results[False])
    print(f"{label}: ingestion of the mix over 16 connections, median of {rounds} rounds of {count}: "
          f"parsers on {on:,.0f} records/s ({cpu_on * 1e6:.0f} us CPU/record), off {off:,.0f} records/s "
          f"({cpu_off * 1e6:.0f} us CPU/record): on is {on / off:.0%} of off (target >= 90 %); by the "
          f"collector's CPU per record, which a shared machine disturbs less, {cpu_off / cpu_on:.0%}")
    print(f"{label}:   rounds on {[round(r) for r, _ in results[True]]}, off {[round(r) for r, _ in results[False]]}")


def write_path(new_database: Callable[[], str], label: str, count: int = 20_000) -> None:
    """The writer's transactions in process, without HTTP: records/s storing batches of the
    mix with no hook, with the counters only, and with counters and parsers, each into a
    new empty database with durability relaxed (the CPU of the transaction, not the disk's
    flush), interleaved over three rounds."""
    from telemetry_collector.dburl import parse_database_url
    from telemetry_collector.derive.hook import IngestHook
    from telemetry_collector.store import Durability, open_store

    mix = list(realistic(count, end=int(time.time()), seed=11))
    variants = (("no hook", lambda: None), ("counters", lambda: IngestHook.installed(parse=False)),
                ("counters and parsers", lambda: IngestHook.installed()))
    for batch in (8, 64):
        rates: dict[str, list[float]] = {name: [] for name, _ in variants}
        for _ in range(3):
            for name, make_hook in variants:
                hook = make_hook()
                store = open_store(parse_database_url(new_database()), durability=Durability.RELAXED)
                try:
                    t0 = time.perf_counter()
                    for i in range(0, len(mix), batch):
                        with store.transaction():
                            stored = [store.insert(r).record for r in mix[i:i + batch]]
                            if hook is not None:
                                hook.after_insert(store, stored)
                    rates[name].append(len(mix) / (time.perf_counter() - t0))
                finally:
                    store.close()
        median = {name: statistics.median(r) for name, r in rates.items()}
        print(f"{label}: write path, transactions of {batch}: "
              + ", ".join(f"{k} {v:,.0f} records/s" for k, v in median.items())
              + f"; parsers on is {median['counters and parsers'] / median['counters']:.0%} of off")


def load(database: str, label: str, count: int) -> tuple[str, str]:
    """Store the mix; returns a machine id in it and the date of 10 days ago (for filters)."""
    end = int(time.time())
    t0 = time.perf_counter()
    stored = store_records(database, realistic(count, end=end), batch=1000)
    wall = time.perf_counter() - t0
    print(f"{label}: loaded {stored:,} records through the ingest hook in {wall:.0f} s "
          f"({stored / wall:,.0f} records/s, transactions of 1,000)")
    machine = next(iter(realistic(1, end=end))).machine_id
    return machine, time.strftime("%Y-%m-%d", time.gmtime(end - 10 * DAY))


def run_store(label: str, database: str, work: str, args: argparse.Namespace, analyze=None,
              new_database: Callable[[], str] | None = None) -> None:
    machine, day = load(database, label, args.records)
    if analyze is not None:
        analyze()
    with start_collector(database, args=LIMITS_OFF, log_path=os.path.join(work, f"views-{label}.log")) as c:
        time_views(c, label, views(1, machine, day), args.repeat)
    if args.ingest:
        ingest(database, work, label, args.ingest, args.rounds)
    if new_database is not None:
        write_path(new_database, label)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--ingest", type=int, default=5000, help="records per ingestion round (0: skip)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (the databases)")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="vbench-")
    os.makedirs(work, exist_ok=True)
    print(f"collector views benchmark: {args.records:,} records; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} (shared machine: figures are provisional)")
    try:
        fresh = iter(range(10**6))
        run_store("SQLite", f"sqlite:///{work}/records.db", work, args,
                  new_database=lambda: f"sqlite:///{work}/write-path-{next(fresh)}.db")
        if args.no_postgres:
            return 0
        try:
            pg = TemporaryPostgres().start()
        except TempPostgresError as e:
            print(f"PostgreSQL: skipped ({e})")
            return 0
        try:
            url = pg.create_database()

            def analyze() -> None:
                import psycopg

                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("ANALYZE")

            run_store("PostgreSQL", url, work, args, analyze, new_database=pg.create_database)
        finally:
            pg.stop()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
