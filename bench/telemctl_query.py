"""How long `telemctl journal` and `telemctl status` take on a full journal and a long queue.

A private user-mode tree gets a journal at its bound (journal.ENTRIES_MAX entries, with
retained payloads) and a queue of --rows records; then each command runs as a user runs
it (a new process each time) and the median wall time of --repeat runs is printed, next
to the in-process query time.  Run: .venv/bin/python bench/telemctl_query.py [--rows N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import make_user_install  # noqa: E402

from telemetry.paths import Paths  # noqa: E402
from telemetry.record import create_record, new_event_id  # noqa: E402


def fill(paths: Paths, rows: int) -> tuple[str, str]:
    from telemetry.daemons.store.journal import ENTRIES_MAX, Journal, Outcome, entry_for
    from telemetry.daemons.store.queue import NewRecord, Queue, Sender

    journal = Journal(paths.journal_dir, boot_id="60c014cd-4693-40f1-b334-548cd932949b")
    now = time.time()
    classes = ("org.clearlinux/hello/world", "org.clearlinux/heartbeat/ping", "org.example/bench/one")
    entries, retained = [], []
    some_event = ""
    for i in range(ENTRIES_MAX):
        rec = create_record(classes[i % 3], 1, "x" * 200)
        rid = new_event_id()
        entries.append(entry_for(rid, rec, Outcome.DELIVERED, timestamp=now - ENTRIES_MAX + i,
                                 boot_id=journal.boot_id, http_status=201))
        retained.append((rid, rec.payload))
        some_event = rec.event_id
        if len(entries) == 1000:
            journal.add(entries, retained[-100:])
            entries, retained = [], []
    journal.close()

    queue = Queue(paths.spool_dir)
    rec = create_record("org.example/bench/queued", 1, "y" * 1000)
    batch = []
    for i in range(rows):
        batch.append(NewRecord(new_event_id(), now + i, Sender(0, 0, 0), rec.header_block(), rec.payload))
        if len(batch) == 1000:
            queue.insert_many(batch, counters={("telemprobd", "received"): 1000, ("telemprobd", "staged"): 1000})
            batch = []
    if batch:
        queue.insert_many(batch)
    queue.close()
    return some_event, rid


def median_run(env: dict[str, str], args: list[str], repeat: int) -> tuple[float, int]:
    times, lines = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "telemetry.daemons.ctl.main", "--user", *args],
                              env=env, capture_output=True)
        if done.returncode not in (0, 3):  # 3: is-active with the daemons stopped
            raise SystemExit(f"telemctl {' '.join(args)} failed: {done.stderr.decode().strip()}")
        times.append(time.perf_counter() - t0)
        lines = done.stdout.count(b"\n")
    return statistics.median(times), lines


@click.command()
@click.option("--rows", default=20000, show_default=True, help="Records in the queue.")
@click.option("--repeat", default=5, show_default=True, help="Runs per command (median printed).")
def main(rows: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tcq") as root:
        inst = make_user_install(Path(root))
        env, paths = inst.env, inst.paths
        t0 = time.perf_counter()
        event_id, record_id = fill(paths, rows)
        print(f"filled journal (10,000 entries) and queue ({rows} records) in {time.perf_counter() - t0:.1f} s")

        from telemetry.daemons.store.journal import query

        t0 = time.perf_counter()
        for _ in range(20):
            query(paths.journal_dir, classification="org.clearlinux/*", limit=None)
        print(f"in-process query, prefix filter over 10,000 entries: {(time.perf_counter() - t0) / 20 * 1000:.1f} ms")

        baseline = median_run(env, ["--version"], repeat)[0]
        print(f"\n{'command':<52} {'median s':>9} {'lines':>6}")
        print(f"{'telemctl --version (interpreter + imports)':<52} {baseline:>9.3f} {1:>6}")
        for args in (["journal"], ["journal", "-V", "-n", "0"], ["journal", "-c", "org.clearlinux/*", "-n", "0"],
                     ["journal", "-e", event_id], ["journal", "-i", "-r", record_id], ["journal", "--json"],
                     ["status"], ["status", "--json"], ["is-active"]):
            t, n = median_run(env, args, repeat)
            print(f"{'telemctl ' + ' '.join(a if len(a) < 20 else a[:8] + '…' for a in args):<52} {t:>9.3f} {n:>6}")


if __name__ == "__main__":
    main()
