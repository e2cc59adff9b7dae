"""Hostile input: mutated frames on the socket, damaged queue rows and queue files,
malformed configuration.  Each scenario takes an installation, a work directory and a
plan (its size), runs the real programs and returns what it saw; nothing here asserts."""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import http_collector as hc
from mutators import FrameMutator, RowMutator, foreign_headers
from pipeline import (
    Health,
    JournalWatch,
    Ledger,
    Pipeline,
    ReferenceCollector,
    Result,
    Senders,
    compare,
    health,
    make_record,
)
from services import POSTD, PROBD, READY_MARK
from support import proc_memory, short_tempdir, wait_until
from telemprobd_harness import send_raw

from telemetry.contract import check_record
from telemetry.daemons import MODULES
from telemetry.daemons.store.queue import NewRecord, Queue, Sender
from telemetry.record import RecordError, parse_header_block
from telemetry.wire import FramingError, decode_frame

# --- hostile queue rows ---------------------------------------------------------------------

def sound_row(n: int) -> dict:
    rec = make_record(7, n, 120, "org.example/e2e/rows")
    return {"record_id": uuid.uuid4().hex, "received_at": time.time(), "sender_uid": 0, "sender_gid": 0,
            "sender_pid": 1, "cfg_path": None, "headers": rec.header_block(), "payload": rec.payload,
            "size": len(rec.header_block()) + len(rec.payload), "deferred_until": 0.0, "attempts": 0,
            "next_attempt_at": 0.0, "last_error": None}


def write_rows(spool_dir: str, rows: list[dict]) -> None:
    """Straight into the queue, in one transaction, as found; duplicates of a record id
    are made unique by a suffix (the column is UNIQUE)."""
    Queue(spool_dir).close()  # the schema
    db = sqlite3.connect(f"{spool_dir}/queue/queue.db", isolation_level=None, timeout=10)
    try:
        db.execute("BEGIN IMMEDIATE")
        cols = RowMutator.COLUMNS
        sql = f"INSERT INTO records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        for n, row in enumerate(rows):
            values = [row[c] for c in cols]
            try:
                db.execute(sql, values)
            except sqlite3.IntegrityError:  # a repeated id, or NULL where NOT NULL
                values[0] = f"{values[0]!r}-{n}" if not isinstance(values[0], str) else f"{values[0]}-{n}"
                values = [0 if v is None and c not in ("cfg_path", "last_error") else v for c, v in zip(cols, values, strict=True)]
                db.execute(sql, values)
        db.execute("COMMIT")
    finally:
        db.close()


@dataclass(frozen=True)
class RowsPlan:
    rows: int = 10_000
    good_every: int = 10  # one sound row among this many
    seed: int = 5
    timeout: float = 150.0


@dataclass(frozen=True)
class RowsOutcome:
    result: Result
    good_lost: tuple[str, ...]
    left: int  # rows still queued (scheduled in the far future, or never due)
    left_unexplained: int  # of those, rows whose times do not explain why they wait
    foreign_headers: tuple[tuple[str, str], ...]
    outcomes: dict[str, int]  # journal outcomes by kind
    health: Health


def hostile_rows(inst, workdir: Path, plan: RowsPlan = RowsPlan()) -> RowsOutcome:
    """`plan.rows` queue rows, most of them damaged in type or content, sound ones in
    between: telempostd decides every damaged row (set aside, rejected, expired) without
    crashing, delivers every sound one, and no value becomes a header."""
    mut = RowMutator(plan.seed)
    rows, good = [], []
    for n in range(plan.rows):
        row = sound_row(n)
        if n % plan.good_every == 0:
            good.append(row["record_id"])
        else:
            row, _ = mut.mutate(row)
        rows.append(row)
    with hc.Collector() as col:
        pipe = Pipeline(inst, col.url, "rate_limit_enabled=false\nspool_max_size=-1\nmax_in_flight=8")
        write_rows(pipe.spool_dir, rows)
        with pipe:
            journal = JournalWatch(pipe.journal_dir)
            delivered = lambda: {r.record_id for r in col.accepted()}  # noqa: E731
            try:
                wait_until(lambda: set(good) <= delivered(), plan.timeout, "every sound row delivered")
            except AssertionError:
                pass
            left_before = -1
            while (left := pipe.queued()[0]) != left_before:  # until telempostd has nothing more to decide
                left_before = left
                time.sleep(1.0)
            state = health(pipe)
            rss = pipe.peak_rss_mb([POSTD])
            waiting = waiting_rows(pipe.spool_dir)
            outcomes_by_id = journal.stop()
        received = list(col.received)
    got = {r.record_id for r in received if r.answered == 201}
    lost = tuple(rid for rid in good if rid not in got)
    counts: dict[str, int] = {}
    for o in outcomes_by_id.values():
        counts[o] = counts.get(o, 0) + 1
    bad = tuple(foreign_headers(received))
    unexplained = sum(1 for w in waiting if not w)
    result = Result("hostile-rows", plan.rows, len(good), len(good) - len(lost), len(lost),
                    len([r for r in received if r.answered == 201]) - len(got), rss,
                    note=f"{plan.rows - len(good)} damaged rows; journal {counts}; {left} left waiting "
                         f"(scheduled beyond now); {len(bad)} foreign header lines at the collector")
    return RowsOutcome(result, lost, left, unexplained, bad, counts, state)


def waiting_rows(spool_dir: str) -> list[bool]:
    """For each row left in the queue: whether its own times say it is not due yet (a far
    future or non-numeric next attempt or deferral)."""
    db = sqlite3.connect(f"file:{spool_dir}/queue/queue.db?mode=ro", uri=True, timeout=10)
    try:
        now = time.time()
        return [typeof_a != "real" and typeof_a != "integer" or typeof_d not in ("real", "integer") or a > now or d > now
                for typeof_a, a, typeof_d, d in db.execute(
                    "SELECT typeof(next_attempt_at), next_attempt_at, typeof(deferred_until), deferred_until "
                    "FROM records")]
    finally:
        db.close()


# --- hostile frames on the socket -------------------------------------------------------------

def expected_kept(frame: bytes) -> bool:
    """The verdict the pure cores give a whole frame (opted in, no limits, no quota): it
    decodes, its record parses, and a collector would take it once the machine id is in."""
    try:
        f = decode_frame(frame)
        record = parse_header_block(f.header_block, f.payload)
    except (FramingError, RecordError):
        return False
    return check_record(record.with_machine_id("0" * 32)) is None


@dataclass(frozen=True)
class FramesPlan:
    frames: int = 10_000
    threads: int = 4
    seed: int = 9
    warmup: float = 0.1  # share of the frames sent before the first RSS reading
    drain_timeout: float = 120.0


@dataclass(frozen=True)
class FramesOutcome:
    result: Result
    replies: dict[str, int]  # reply status -> n
    no_reply: int  # frames with bytes that got no acknowledgement line
    mismatched: int  # verdicts that differ from the pure cores'
    examples: tuple[tuple[bytes, bytes], ...]  # a few mismatched frames and their replies
    rss_after_warmup: int
    rss_end: int
    alive: bool
    foreign_headers: tuple[tuple[str, str], ...]
    lost: tuple[str, ...]  # accepted and never decided by telempostd
    health: Health


def hostile_frames(inst, workdir: Path, plan: FramesPlan = FramesPlan()) -> FramesOutcome:
    """Random and mutated frames from several connections at once: every one gets an
    answer that agrees with the pure codec and record rules, telemprobd stays up and its
    RSS flat, and what it accepted is decided by telempostd without a foreign header."""
    mut = FrameMutator(plan.seed)
    frames = [mut.frame() for _ in range(plan.frames)]
    replies: dict[str, int] = {}
    accepted: list[str] = []
    examples: list[tuple[bytes, bytes]] = []
    counts = {"no_reply": 0, "mismatched": 0}
    lock = threading.Lock()
    with hc.Collector() as col:
        pipe = Pipeline(inst, col.url, "rate_limit_enabled=false\nspool_max_size=-1\nmax_in_flight=8")
        with pipe:
            pid = pipe.manager.wait_running(PROBD)
            journal = JournalWatch(pipe.journal_dir)

            def one(frame: bytes) -> None:
                reply = send_raw(pipe.socket_path, frame, timeout=30)
                status = reply.split()[1].decode() if reply.startswith(b"TM/1 ") else ("none" if not reply else "?")
                kept = status == "accepted"
                with lock:
                    replies[status] = replies.get(status, 0) + 1
                    if frame and not reply.startswith(b"TM/1 "):
                        counts["no_reply"] += 1
                    if frame and kept != expected_kept(frame):
                        counts["mismatched"] += 1
                        if len(examples) < 5:
                            examples.append((frame[:300], reply))
                    if kept:
                        accepted.append(reply.split()[2].decode())

            warm = int(len(frames) * plan.warmup)
            with concurrent.futures.ThreadPoolExecutor(plan.threads) as pool:
                list(pool.map(one, frames[:warm]))
                rss_warm = proc_memory(pid, "VmRSS")
                list(pool.map(one, frames[warm:]))
            rss_end = proc_memory(pid, "VmRSS")
            alive = pipe.manager.pid(PROBD) == pid
            pipe.wait_drained(plan.drain_timeout)
            state = health(pipe)
            rss = pipe.peak_rss_mb()
            outcomes = journal.stop()
        received = list(col.received)
    lost = tuple(rid for rid in accepted if rid not in outcomes)
    delivered = sum(1 for rid in accepted if outcomes.get(rid) == "delivered")
    ok = [r.record_id for r in received if r.answered == 201]
    decided: dict[str, int] = {}
    for rid in accepted:
        decided[outcomes.get(rid, "undecided")] = decided.get(outcomes.get(rid, "undecided"), 0) + 1
    result = Result("hostile-frames", plan.frames, len(accepted), delivered, len(lost), len(ok) - len(set(ok)), rss,
                    note=f"replies {dict(sorted(replies.items()))}; accepted records {decided}; "
                         f"telemprobd RSS {rss_warm / 2**20:.1f} MB after "
                         f"{warm} frames, {rss_end / 2**20:.1f} MB after {plan.frames}; "
                         f"{counts['mismatched']} verdicts differ from the codec's")
    return FramesOutcome(result, replies, counts["no_reply"], counts["mismatched"], tuple(examples), rss_warm,
                         rss_end, alive, tuple(foreign_headers(received)), lost, state)


# --- damaged queue database files -------------------------------------------------------------

DAMAGES = ("garbage", "zeroed-header", "truncated", "flipped-pages", "garbage-wal", "empty")


def damage_file(spool_dir: str, kind: str, rng: random.Random) -> None:
    """Damage a queue.db whose WAL was checkpointed (every row is in the file)."""
    path = os.path.join(spool_dir, "queue", "queue.db")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if kind == "garbage":
            f.write(bytes(rng.getrandbits(8) for _ in range(size)))
        elif kind == "zeroed-header":
            f.write(b"\0" * 100)
        elif kind == "truncated":
            f.truncate(size // 2)
        elif kind == "flipped-pages":
            for _ in range(4):
                page = rng.randrange(1, max(2, size // 4096))
                f.seek(page * 4096 + rng.randrange(0, 3584))
                f.write(bytes(rng.getrandbits(8) for _ in range(512)))
        elif kind == "empty":
            f.truncate(0)
    if kind == "garbage-wal":
        with open(path + "-wal", "wb") as f:
            f.write(bytes(rng.getrandbits(8) for _ in range(3 * 4096 + 32)))


@dataclass(frozen=True)
class DamagePlan:
    kinds: tuple[str, ...] = DAMAGES
    old_rows: int = 200  # queued before the damage
    new_records: int = 20  # sent through the library afterwards
    seed: int = 13
    drain_timeout: float = 60.0


@dataclass(frozen=True)
class Damaged:
    kind: str
    new_acked: int
    new_lost: tuple[str, ...]
    old_delivered: int
    moved_aside: tuple[str, ...]
    health: Health
    postd_log: str


def damaged_queue_files(inst, workdir: Path, plan: DamagePlan = DamagePlan()) -> tuple[Result, list[Damaged]]:
    """For each kind of damage: a queue with rows, its file damaged while the daemons are
    down, then both started with new records coming: a damaged file is moved aside (kept
    for examination), the daemons keep serving and every new record is delivered.  The
    installation's state (queue, journal) is wiped before each kind."""
    rng = random.Random(plan.seed)
    out: list[Damaged] = []
    sent = acked = delivered = lost = dups = 0
    rss = 0.0
    for kind in plan.kinds:
        shutil.rmtree(inst.paths.state_dir, ignore_errors=True)
        kdir = workdir / kind
        kdir.mkdir(parents=True, exist_ok=True)
        with ReferenceCollector(kdir) as collector:
            pipe = Pipeline(inst, collector.url, "rate_limit_enabled=false\nspool_max_size=-1")
            q = Queue(pipe.spool_dir)
            old = [make_record(9, n, 200, "org.example/e2e/damage") for n in range(plan.old_rows)]
            old_ids = [uuid.uuid4().hex for _ in old]
            q.insert_many([NewRecord(rid, time.time(), Sender(0, 0, 1), r.header_block(), r.payload)
                           for rid, r in zip(old_ids, old, strict=True)])
            q.close()
            db = sqlite3.connect(os.path.join(pipe.spool_dir, "queue", "queue.db"), isolation_level=None)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the file that is damaged
            db.close()
            damage_file(pipe.spool_dir, kind, rng)
            ledger = Ledger()
            with pipe:
                Senders(pipe.client(), ledger, threads=1, total=plan.new_records, first_sender=100,
                        classification="org.example/e2e/afterdamage").start().join()
                pipe.wait_drained(plan.drain_timeout)
                state = health(pipe)
                rss = max(rss, pipe.peak_rss_mb())
                log = pipe.manager.log(POSTD)
            stored = collector.rows()
            dups += collector.duplicates()
        n_delivered, n_lost, _ = compare(ledger.acked, stored)
        sent += ledger.sent
        acked += len(ledger.acked)
        delivered += n_delivered
        lost += len(n_lost)
        aside = tuple(sorted(os.path.basename(p) for p in glob.glob(os.path.join(pipe.spool_dir, "queue", "queue.db.corrupt-*"))
                             if not p.endswith(("-wal", "-shm"))))
        out.append(Damaged(kind, len(ledger.acked), tuple(n_lost), sum(1 for rid in old_ids if rid in stored), aside,
                           state, log))
    note = "; ".join(f"{d.kind}: {d.old_delivered}/{plan.old_rows} old rows delivered, "
                     f"{'moved aside' if d.moved_aside else 'kept'}" for d in out)
    return Result("damaged-queue", sent, acked, delivered, lost, dups, rss, note=note), out


# --- malformed configuration -------------------------------------------------------------------

# Each is refused by every program that reads the file: one line naming the file (and the
# line or key) and exit status 1.
MALFORMED_CONFIGS: dict[str, bytes] = {
    "no section": b"server=http://127.0.0.1:1/v2/collector\n",
    "unclosed section": b"[settings\nserver=x\n",
    "no equals sign": b"[settings]\nserver\n",
    "empty key": b"[settings]\n=value\n",
    "integer with text": b"[settings]\nrecord_burst_limit=abc\n",
    "integer with a comment": b"[settings]\nspool_process_time=120 # two minutes\n",
    "integer overflow": b"[settings]\nrecord_burst_limit=99999999999999999999999\n",
    "integer out of range": b"[settings]\nrecord_window_length=60\n",
    "negative expiry": b"[settings]\nrecord_expiry=-5\n",
    "bad boolean": b"[settings]\nrate_limit_enabled=maybe\n",
    "bad choice": b"[settings]\nrate_limit_strategy=explode\n",
    "bad log level": b"[settings]\nlog_level=loud\n",
    "max_in_flight zero": b"[settings]\nmax_in_flight=0\n",
    "not UTF-8": b"[settings]\nserver=http://\xff\xfe/\n",
    "NUL bytes": b"[settings]\x00\nserver=x\x00\n",
    "binary garbage": bytes(range(256)) * 8,
    "line break in tidheader": b"[settings]\ntidheader=X-Telemetry-TID: x\rX-Injected: 1\n",
    "over 1 MiB": b"[settings]\n" + b"# padding\n" * 120_000 + b"bogus\n",
}
# Started by every program, with one warning naming the file and the line (the original
# ignores these silently; a C client's file with an obsolete key must keep working).
WARNED_CONFIGS: dict[str, tuple[bytes, str]] = {
    "unknown key": (b"[settings]\nno_such_key=1\n", ":2: no_such_key: unknown key, ignored"),
    "unknown section": (b"[setings]\nserver=http://127.0.0.1:9/\n",
                        ":1: unknown section [setings] ignored: only [settings] is read; its settings (server)"),
    "repeated key": (b"[settings]\nlog_level=info\nlog_level=debug\n",
                     ":3: log_level: also set at line 2; the last value, this line's, is used"),
}
# Refused by the program that uses the key (telempostd); telemprobd does not read it.
POSTD_ONLY = {
    "tidheader without colon": b"[settings]\ntidheader=just a value\n",
    "server not a URL": b"[settings]\nserver=not a url\n",
    "server with an unknown scheme": b"[settings]\nserver=gopher://127.0.0.1/\n",
}
PROBD_ONLY = {
    "socket path too long": b"[settings]\nsocket_path=/" + b"s" * 120 + b"\n",
    "relative socket path": b"[settings]\nsocket_path=telem-0\n",
}


@dataclass(frozen=True)
class Run:
    """How a program ended with a config: refused (exit status, error lines), started
    (it got ready and stopped on SIGTERM) or hung."""
    state: str  # refused | started | hung
    returncode: int | None
    errors: tuple[str, ...]  # stderr lines that are not log lines of the daemon
    warnings: tuple[str, ...] = ()  # the daemon's WARNING log lines

    @property
    def one_line(self) -> bool:
        return len(self.errors) == 1 and not any("Traceback" in e for e in self.errors)


# What the daemons log to stderr (telemetry/log.py); anything else is an error line.
LOG_LINE = re.compile(r"telem(?:probd|postd): (?:DEBUG|INFO|WARNING|ERROR|CRITICAL): ")


def run_program(name: str, env: dict[str, str], args: tuple[str, ...] = (), timeout: float = 20.0) -> Run:
    proc = subprocess.Popen([sys.executable, "-m", MODULES[name], *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if READY_MARK.get(name, "\0") in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    state = "refused"
    if proc.poll() is None:
        state = "started" if ready.is_set() else "hung"
        proc.send_signal(15) if state == "started" else proc.kill()
        proc.wait(30)
    reader.join(5)
    errors = tuple(e for e in lines if not LOG_LINE.match(e) or "Traceback" in e)
    warnings = tuple(e for e in lines if LOG_LINE.match(e) and ": WARNING: " in e)
    return Run(state, proc.returncode, errors, warnings)


@contextlib.contextmanager
def isolated_env(inst, tag: str) -> Iterator[dict[str, str]]:
    """The installation's environment with private state and runtime directories (short:
    the socket lives there), so that programs started at once never share a socket or a
    queue; removed afterwards."""
    base = Path(short_tempdir(f"cf-{tag[:8]}-"))
    try:
        (base / "s").mkdir()
        (base / "r").mkdir(mode=0o700)
        yield {**inst.env, "XDG_STATE_HOME": str(base / "s"), "XDG_RUNTIME_DIR": str(base / "r")}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def config_cases(seed: int, mutants: int) -> dict[str, tuple[bytes, tuple[str, ...]]]:
    """name -> (file contents, programs that must refuse it); mutants of a sound file may
    be sound, so they have no program that must refuse them."""
    rng = random.Random(seed)
    cases: dict[str, tuple[bytes, tuple[str, ...]]] = {}
    both = ("telemprobd", "telempostd")
    for name, text in MALFORMED_CONFIGS.items():
        cases[name] = (text, both)
    for name, text in POSTD_ONLY.items():
        cases[name] = (text, ("telempostd",))
    for name, text in PROBD_ONLY.items():
        cases[name] = (text, ("telemprobd",))
    for name, (text, _) in WARNED_CONFIGS.items():
        cases[name] = (text, ())
    sound = (b"[settings]\nserver=http://127.0.0.1:9/v2/collector\nrecord_burst_limit=100\n"
             b"rate_limit_strategy=drop\nspool_process_time=150\nlog_level=info\nmax_in_flight=2\n")
    for n in range(mutants):
        data = bytearray(sound)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            i = rng.randrange(len(data))
            if op == 0:
                data[i] = rng.getrandbits(8)
            elif op == 1:
                del data[i]
            else:
                data[i:i] = bytes([rng.choice(b"=[]#;\n\r\t \\\x00\xff-9a")])
        cases[f"mutant {n}"] = (bytes(data), ())
    return cases


@dataclass(frozen=True)
class ConfigOutcome:
    result: Result
    runs: dict[tuple[str, str], Run]  # (case, program) -> run
    must_refuse: dict[str, tuple[str, ...]]
    paths: dict[str, str]  # case -> the file given with -f


def malformed_configs(inst, workdir: Path, seed: int = 17, mutants: int = 20, threads: int = 4) -> ConfigOutcome:
    """Every program that reads the config, given each malformed file with -f: refused
    with one line, never a traceback or a hang; sound mutants may start."""
    cases = config_cases(seed, mutants)
    jobs = []
    paths = {}
    for n, (name, (text, _)) in enumerate(cases.items()):
        path = workdir / f"case-{n}.conf"
        path.write_bytes(text)
        paths[name] = str(path)
        for program in ("telemprobd", "telempostd"):
            jobs.append((name, program, str(path)))

    def one(job):
        name, program, path = job
        with isolated_env(inst, program) as env:
            return (name, program), run_program(program, env, ("-f", path))

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        runs = dict(pool.map(one, jobs))
    refused = sum(1 for r in runs.values() if r.state == "refused")
    bad = sum(1 for (name, program), r in runs.items()
              if r.state == "hung" or any("Traceback" in e for e in r.errors)
              or (program in cases[name][1] and not (r.state == "refused" and r.one_line)))
    result = Result("bad-config", len(runs), 0, 0, 0, 0, 0.0,
                    note=f"{len(cases)} files x 2 daemons: {refused} refused with one line, "
                         f"{len(runs) - refused} started (sound mutants), {bad} wrong")
    return ConfigOutcome(result, runs, {n: c[1] for n, c in cases.items()}, paths)
