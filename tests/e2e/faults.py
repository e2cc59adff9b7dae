"""Faults around the pipeline: kill -9 of the daemons, a collector away or flapping, a
full disk.  Each scenario takes an installation, a work directory and a plan (its size),
runs the real programs and returns what it saw; nothing here asserts."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import (
    Health,
    Ledger,
    Pipeline,
    ReferenceCollector,
    Result,
    Senders,
    Unavailable,
    compare,
    health,
    integrity,
    journal_outcomes,
    queue_order,
    queue_stats,
)
from services import POSTD, PROBD
from support import checkpoint_wal, wait_until

# --- chaos: kill -9 at random instants ----------------------------------------------------

@dataclass(frozen=True)
class ChaosPlan:
    kills: int = 10
    senders: int = 3
    rate: float = 150.0  # records/s over all senders
    gap: tuple[float, float] = (0.2, 1.0)  # seconds between two kills, uniform
    payload_size: int = 300
    seed: int = 1
    drain_timeout: float = 120.0
    max_in_flight: int = 4  # telempostd's; a kill of it may repeat at most this many POSTs


@dataclass(frozen=True)
class ChaosOutcome:
    result: Result
    kills: dict[str, int]
    lost: tuple[str, ...]
    mismatched: tuple[str, ...]  # stored under another event id than the acknowledged one
    unacknowledged_delivered: int  # committed, but the sender was told nothing (crash before the ack)
    legacy: int
    refused: dict[str, int]
    errors: dict[str, int]
    collector_duplicates: int  # what /api/stats reports
    health: Health


def chaos(inst, workdir: Path, plan: ChaosPlan = ChaosPlan()) -> ChaosOutcome:
    """Senders push records through telemprobd and telempostd into the reference collector
    while both daemons are killed with SIGKILL at random instants and restarted as
    systemd would (services.py)."""
    rng = random.Random(plan.seed)
    ledger = Ledger()
    kills = {PROBD: 0, POSTD: 0}
    with ReferenceCollector(workdir) as collector:
        pipe = Pipeline(inst, collector.url,
                        f"rate_limit_enabled=false\nspool_max_size=-1\nmax_in_flight={plan.max_in_flight}")
        with pipe:
            senders = Senders(pipe.client(), ledger, threads=plan.senders, rate=plan.rate,
                              payload_size=plan.payload_size).start()
            try:
                for _ in range(plan.kills):
                    time.sleep(rng.uniform(*plan.gap))
                    target = rng.choice((PROBD, POSTD))
                    pipe.manager.wait_running(target)
                    if pipe.manager.kill(target):
                        kills[target] += 1
                acked = ledger.acked_count
                for name in (PROBD, POSTD):
                    pipe.manager.wait_running(name)
                wait_until(lambda: ledger.acked_count > acked, 30, "records acknowledged after the last restart")
            finally:
                senders.stop()
            pipe.wait_drained(plan.drain_timeout)
            state = health(pipe)
            rss = pipe.peak_rss_mb()
        stats = collector.stats()
        stored = collector.rows()
    delivered, lost, wrong = compare(ledger.acked, stored)
    extra = len(set(stored) - set(ledger.acked))
    duplicates = int(stats["duplicates"])
    per_kill = f"{duplicates / kills[POSTD]:.2f}" if kills[POSTD] else "-"
    result = Result(
        "chaos", ledger.sent, len(ledger.acked), delivered, len(lost), duplicates, rss,
        note=(f"{kills[PROBD]} telemprobd + {kills[POSTD]} telempostd kills; duplicates per telempostd kill "
              f"{per_kill} (at most max_in_flight={plan.max_in_flight} each); {extra} records committed "
              f"but not acknowledged (crash before the ack) were delivered too; refused "
              f"{dict(ledger.refused) or 0}; send errors {sum(ledger.errors.values())}"),
    )
    return ChaosOutcome(result, kills, tuple(lost), tuple(wrong), extra, ledger.legacy, dict(ledger.refused),
                        dict(ledger.errors), int(stats["duplicates"]), state)


# --- outage: the collector away for a long stretch ------------------------------------------

@dataclass(frozen=True)
class OutagePlan:
    up_seconds: float = 1.5  # delivering normally first
    down_seconds: float = 5.0  # collector stopped; records keep coming, except in the quiet end
    quiet_seconds: float = 1.5  # the last part of the outage, without new records
    after_seconds: float = 1.0  # records keep coming once it is back
    rate: float = 20.0  # records/s
    payload_size: int = 400
    spool_max_kib: int = 24  # reached during the outage at this rate
    record_expiry_min: int = 60
    # Rows made older than record_expiry half-way through the outage (their received_at
    # moved back, as if the outage had lasted that long). 0: rely on real expiry, which
    # needs down_seconds > 60 * record_expiry_min (the bench's --real-expiry).
    age_rows: int = 8
    drain_timeout: float = 120.0


@dataclass(frozen=True)
class OutageOutcome:
    result: Result
    expired: tuple[str, ...]  # acknowledged records journaled as expired
    lost: tuple[str, ...]
    out_of_order: int  # queued records the collector stored out of queue order
    max_queued_bytes: int
    cap_bytes: int
    refused_no_space: int
    postd_cpu_down: float  # CPU seconds telempostd used while the collector was down
    postd_cpu_quiet: float  # of those, in the quiet end (nothing but waiting)
    down_seconds: float
    health: Health


def outage(inst, workdir: Path, plan: OutagePlan = OutagePlan()) -> OutageOutcome:
    """Records keep coming while the collector is down: the spool keeps to its cap and
    expiry, telempostd waits without spinning, and once the collector is back everything
    not expired is delivered, in queue order (one request in flight)."""
    ledger = Ledger()
    cap = plan.spool_max_kib * 1024
    collector = ReferenceCollector(workdir).start()
    try:
        pipe = Pipeline(inst, collector.url, f"rate_limit_enabled=false\nspool_max_size={plan.spool_max_kib}\n"
                        f"record_expiry={plan.record_expiry_min}\nmax_in_flight=1")
        with pipe:
            client = pipe.client()

            def senders(first: int) -> Senders:
                return Senders(client, ledger, threads=1, rate=plan.rate, payload_size=plan.payload_size,
                               first_sender=first, classification="org.example/e2e/outage").start()

            before = senders(0)
            after = None
            try:
                time.sleep(plan.up_seconds)
                collector.stop()
                usage = pipe.manager.usage
                cpu_before = usage(POSTD).total_cpu()
                down_started = time.monotonic()
                max_bytes = 0
                aged = False
                quiet_cpu = None
                while (elapsed := time.monotonic() - down_started) < plan.down_seconds:
                    max_bytes = max(max_bytes, queue_stats(pipe.spool_dir)[1])
                    if plan.age_rows and not aged and elapsed >= plan.down_seconds / 2:
                        age_oldest(pipe.spool_dir, plan.age_rows, plan.record_expiry_min)
                        aged = True
                    if quiet_cpu is None and elapsed >= plan.down_seconds - plan.quiet_seconds:
                        before.stop()
                        quiet_started, quiet_cpu = time.monotonic(), usage(POSTD).total_cpu()
                    time.sleep(0.1)
                down = time.monotonic() - down_started
                postd_cpu = usage(POSTD).total_cpu() - cpu_before
                quiet = usage(POSTD).total_cpu() - quiet_cpu if quiet_cpu is not None else 0.0
                quiet_span = time.monotonic() - quiet_started if quiet_cpu is not None else 0.0
                waiting = queue_order(pipe.spool_dir)
                collector.start()
                after = senders(1)
                time.sleep(plan.after_seconds)
            finally:
                before.stop()
                if after is not None:
                    after.stop()
            pipe.wait_drained(plan.drain_timeout)
            state = health(pipe)
            rss = pipe.peak_rss_mb()
            outcomes = journal_outcomes(pipe.journal_dir)
        stats = collector.stats()
        stored = collector.rows()
    finally:
        collector.stop()
    expired = tuple(rid for rid in ledger.acked if outcomes.get(rid) == "expired")
    due = {rid: ev for rid, ev in ledger.acked.items() if rid not in expired}
    delivered, lost, _ = compare(due, stored)
    ids = [stored[rid].id for rid in waiting if rid in stored]
    out_of_order = sum(1 for a, b in zip(ids, ids[1:], strict=False) if b < a)
    no_space = ledger.refused.get("no-space", 0)
    result = Result(
        "outage", ledger.sent, len(ledger.acked), delivered, len(lost), int(stats["duplicates"]), rss,
        note=(f"collector down {down:.1f} s; telempostd CPU meanwhile {postd_cpu:.3f} s "
              f"({100 * postd_cpu / down:.2f}%), {quiet:.3f} s in the last {quiet_span:.1f} s without new records; "
              f"{len(expired)} expired; {no_space} refused at the spool cap ({cap} bytes, peak {max_bytes} "
              f"queued); {out_of_order} out of order"),
    )
    return OutageOutcome(result, expired, tuple(lost), out_of_order, max_bytes, cap, no_space, postd_cpu, quiet,
                         down, state)


def age_oldest(spool_dir: str, n: int, expiry_minutes: int) -> list[str]:
    """Move the received time of the `n` oldest queued rows back beyond record_expiry,
    as an outage that long would have; returns their record ids."""
    db = sqlite3.connect(f"{spool_dir}/queue/queue.db", isolation_level=None, timeout=10)
    try:
        rows = [r[0] for r in db.execute("SELECT record_id FROM records ORDER BY seq LIMIT ?", (n,))]
        db.executemany("UPDATE records SET received_at = received_at - ? WHERE record_id = ?",
                       [(expiry_minutes * 60 + 3600, rid) for rid in rows])
    finally:
        db.close()
    return rows


# --- flapping: a collector that keeps failing in every way ---------------------------------

@dataclass(frozen=True)
class FlapPlan:
    bad_periods: int = 3
    bad_seconds: float = 1.5  # each bad period; a good one of good_seconds follows
    good_seconds: float = 1.0
    switch_every: float = 0.3  # a new kind of failure this often within a bad period
    rate: float = 40.0
    payload_size: int = 300
    max_in_flight: int = 4
    request_timeout: int = 1
    seed: int = 3
    drain_timeout: float = 120.0


@dataclass(frozen=True)
class FlapOutcome:
    result: Result
    lost: tuple[str, ...]
    failed_requests: int  # requests not answered 201 (or not at all)
    failed_request_bound: int  # what one round per MIN_DELAY would allow, with margin
    kinds: dict[str, int]  # failure kinds served
    health: Health


def failure_kinds() -> dict:
    import http_collector as hc  # tests/integration

    return {
        "503 Retry-After": hc.status(503, retry_after="1", message="maintenance"),
        "500": hc.status(500, message="internal error"),
        "reset": hc.CLOSE,
        "slow": hc.slow(0.3),
        "timeout": hc.slow(1.6),
    }


def flapping(inst, workdir: Path, plan: FlapPlan = FlapPlan()) -> FlapOutcome:
    """A collector alternating between bad periods (503 with Retry-After, 500, reset
    connections, slow answers, answers slower than request_timeout) and good ones: no
    acknowledged record is lost, and failures are retried by round, not in a hot loop."""
    import http_collector as hc  # tests/integration

    from telemetry.daemons.postd.backoff import MIN_DELAY

    rng = random.Random(plan.seed)
    kinds = failure_kinds()
    served: dict[str, int] = {}
    ledger = Ledger()
    with hc.Collector() as col:
        pipe = Pipeline(inst, col.url, f"rate_limit_enabled=false\nspool_max_size=-1\nretry_max_delay=2\n"
                        f"max_in_flight={plan.max_in_flight}\nrequest_timeout={plan.request_timeout}\n"
                        "connect_timeout=1")
        with pipe:
            senders = Senders(pipe.client(), ledger, threads=2, rate=plan.rate, payload_size=plan.payload_size,
                              classification="org.example/e2e/flap").start()
            bad_time = 0.0
            try:
                for _ in range(plan.bad_periods):
                    started = time.monotonic()
                    while time.monotonic() - started < plan.bad_seconds:
                        name = rng.choice(sorted(kinds))
                        served[name] = served.get(name, 0) + 1
                        col.answer(kinds[name])
                        time.sleep(plan.switch_every)
                    bad_time += time.monotonic() - started
                    col.answer(hc.ACCEPT)
                    col.release()
                    time.sleep(plan.good_seconds)
            finally:
                col.answer(hc.ACCEPT)
                senders.stop()
            pipe.wait_drained(plan.drain_timeout)
            state = health(pipe)
            rss = pipe.peak_rss_mb()
        received = list(col.received)
    ok_ids = [r.record_id for r in received if r.answered == 201]
    stored = set(ok_ids)
    lost = tuple(rid for rid in ledger.acked if rid not in stored)
    failed = sum(1 for r in received if r.answered != 201)
    # One round of failures per gate closing, and a closing lasts MIN_DELAY at least; a
    # round is at most max_in_flight requests.  Doubled: requests of one round can land
    # in two periods.
    bound = 2 * plan.max_in_flight * (int(bad_time / MIN_DELAY) + plan.bad_periods + 1)
    duplicates = len(ok_ids) - len(stored)
    result = Result("flapping", ledger.sent, len(ledger.acked), len(ledger.acked) - len(lost), len(lost), duplicates,
                    rss, note=f"{failed} failed requests over {bad_time:.1f} s of failures (bound {bound}); "
                              f"served {served}")
    return FlapOutcome(result, lost, failed, bound, served, state)


# --- disk full ------------------------------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(path: str, size: str) -> Iterator[str]:
    """A tmpfs of `size` mounted at `path` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        raise Unavailable("filling a real file system needs root (mount -t tmpfs)")
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def fill(directory: str) -> str:
    """Take every free byte of the file system with one file; returns its path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    break
    finally:
        os.close(fd)
    return path


def checkpoint(path: str) -> None:
    """Copy a database's WAL into it and truncate the WAL to nothing."""
    checkpoint_wal(path)


@dataclass(frozen=True)
class DiskFullPlan:
    # Room for the queue's and the journal's WAL (SQLite checkpoints at about 4 MiB):
    # smaller, the WAL alone can fill the file system again once space returns.
    size: str = "16m"
    rate: float = 60.0
    payload_size: int = 500
    before_seconds: float = 1.0
    full_seconds: float = 4.0  # after the first no-space refusal; the collector returns half-way
    after_seconds: float = 1.5
    drain_timeout: float = 120.0


@dataclass(frozen=True)
class DiskFullOutcome:
    result: Result
    refused_no_space: int
    acked_after_recovery: int
    probe: subprocess.CompletedProcess  # telem-record-gen run while the disk was full
    lost: tuple[str, ...]
    postd_queue_errors: int  # "trying again" lines telempostd logged while the disk was full
    full_seconds: float
    integrity: dict[str, str]  # file -> PRAGMA integrity_check
    damaged_files: tuple[str, ...]  # anything moved aside as corrupt, or temp files left
    health: Health


def disk_full(inst, workdir: Path, plan: DiskFullPlan = DiskFullPlan()) -> DiskFullOutcome:
    """The file system holding the queue (staging and spool) and the journal fills up
    while records flow in and out: senders are told no-space, nothing is corrupted, and
    once space returns everything acknowledged is delivered."""
    ledger = Ledger()
    state_dir = inst.paths.state_dir
    with small_filesystem(state_dir, plan.size), ReferenceCollector(workdir) as collector:
        pipe = Pipeline(inst, collector.url, "rate_limit_enabled=false\nspool_max_size=-1")
        with pipe:
            senders = Senders(pipe.client(), ledger, threads=2, rate=plan.rate, payload_size=plan.payload_size,
                              classification="org.example/e2e/diskfull").start()
            try:
                time.sleep(plan.before_seconds)
                # A backlog on the full disk: telempostd has to reschedule (collector
                # away), then deliver and delete (collector back) rows there.
                collector.stop()
                time.sleep(plan.before_seconds)
                # Give the WALs' space back first, so that every write (telemprobd's
                # inserts, telempostd's updates and deletes) needs a new block.
                for db in (os.path.join(pipe.spool_dir, "queue", "queue.db"), os.path.join(pipe.journal_dir, "journal.db")):
                    checkpoint(db)
                filler = fill(state_dir)
                full_at = time.monotonic()
                errors_before = pipe.manager.log(POSTD).count("trying again in")
                wait_until(lambda: ledger.refused.get("no-space", 0) > 0, 30, "a no-space refusal")
                probe = subprocess.run(
                    [sys.executable, "-m", "telemetry.probes.telem_record_gen", "-c", "org.example/e2e/probe",
                     "-p", "sent while the disk is full"], env=inst.env, capture_output=True, text=True, timeout=60)
                time.sleep(plan.full_seconds / 2)
                collector.start()
                time.sleep(plan.full_seconds / 2)
                acked_full = ledger.acked_count
                postd_errors = pipe.manager.log(POSTD).count("trying again in") - errors_before
                full_seconds = time.monotonic() - full_at
                os.unlink(filler)
                wait_until(lambda: ledger.acked_count > acked_full, 30, "records accepted again")
                time.sleep(plan.after_seconds)
            finally:
                senders.stop()
            pipe.wait_drained(plan.drain_timeout)
            state = health(pipe)
            rss = pipe.peak_rss_mb()
            acked_after = ledger.acked_count - acked_full
        stats = collector.stats()
        stored = collector.rows()
        checks = {name: integrity(os.path.join(d, name)) for d, name in
                  ((os.path.join(pipe.spool_dir, "queue"), "queue.db"), (pipe.journal_dir, "journal.db"))}
        damaged = tuple(sorted(glob.glob(f"{state_dir}/**/*.corrupt-*", recursive=True)
                               + glob.glob(f"{state_dir}/**/.tmp-*", recursive=True)))
    delivered, lost, _ = compare(ledger.acked, stored)
    no_space = ledger.refused.get("no-space", 0)
    result = Result("disk-full", ledger.sent, len(ledger.acked), delivered, len(lost), int(stats["duplicates"]),
                    rss, note=f"{no_space} refused with no-space while full; {acked_after} accepted after; "
                              f"telempostd queue retries while full {postd_errors} in {full_seconds:.1f} s; "
                              f"integrity {checks}")
    return DiskFullOutcome(result, no_space, acked_after, probe, tuple(lost), postd_errors, full_seconds, checks,
                           damaged, state)
