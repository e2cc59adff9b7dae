"""Local abuse: one uid flooding the socket beside another, one uid holding every
connection, symlinks planted where the programs write.  The uid scenarios need root (the
senders are forked and drop to two unprivileged uids); they raise Unavailable otherwise."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import http_collector as hc
from pipeline import (
    Health,
    Ledger,
    Pipeline,
    ReferenceCollector,
    Result,
    Senders,
    Unavailable,
    health,
    make_record,
)
from support import make_user_install, short_tempdir

from telemetry.client import SendError

# --- local abuse: one uid flooding, planted symlinks ----------------------------------------------

@dataclass(frozen=True)
class FairnessPlan:
    flooder_uid: int = 65534
    victim_uid: int = 65533
    limit: int = 100  # record_burst_limit per 1-minute window; each uid may take half
    flood: int = 400  # records the flooder tries to send
    victim: int = 30  # records the other user sends meanwhile
    drain_timeout: float = 60.0


@dataclass(frozen=True)
class FairnessOutcome:
    result: Result
    flooder: dict[str, int]  # ack status -> n
    victim: dict[str, int]
    victim_lost: tuple[str, ...]
    share: int
    child_errors: tuple[str, ...]
    health: Health


def _as_user(uid: int, work) -> tuple[int, int]:
    """fork (no exec: the interpreter may live where that uid cannot read), drop to `uid`
    and its own group for good, run `work()` and write its JSON result to a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            data = json.dumps(work()).encode()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            data = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
            code = 1
        try:
            os.write(w, data)
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _collect(pid: int, r: int) -> dict:
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "no result"}')


def fairness(inst, workdir: Path, plan: FairnessPlan = FairnessPlan()) -> FairnessOutcome:
    """Two local users send at once: one floods far beyond the rate limit, the other sends
    a few records; the flooder gets its share of the window, the other user every record.
    Each sender is a forked child that dropped to its uid before connecting (telemprobd
    takes the uid from SO_PEERCRED at connect), sending with the library."""
    if os.geteuid() != 0:
        raise Unavailable("senders with two other uids need root (setuid)")

    socket_dir = short_tempdir("uid-")
    os.chmod(socket_dir, 0o755)  # the socket itself is 0666; its directory must be reachable
    frames = {}
    with ReferenceCollector(workdir) as collector:
        pipe = Pipeline(inst, collector.url, f"rate_limit_enabled=true\nrecord_burst_limit={plan.limit}\n"
                        "record_window_length=1\nbyte_burst_limit=-1\nrate_limit_strategy=drop\n"
                        "rate_limit_uid_share=50\nspool_max_size=-1", socket_dir=socket_dir)
        client = pipe.client()
        for who, n in (("flooder", plan.flood), ("victim", plan.victim)):
            frames[who] = [(r.event_id, client.frame(r)) for r in
                           (make_record(1 if who == "flooder" else 2, i, 100, f"org.example/e2e/{who}")
                            for i in range(n))]
        def sender(who: str, pace: float):
            def work() -> dict:
                out: dict = {"status": {}, "acked": {}}
                for event, frame in frames[who]:
                    try:
                        ack = client.send_frame(frame)  # the daemon checks opt-in; this user cannot see the file
                        key = ack.status.value
                        if ack.kept and ack.record_id:
                            out["acked"][ack.record_id] = event
                    except SendError as e:
                        key = "error: " + str(e)[:60]
                    out["status"][key] = out["status"].get(key, 0) + 1
                    if pace:
                        time.sleep(pace)
                return out
            return work

        try:
            with pipe:
                children = [_as_user(plan.flooder_uid, sender("flooder", 0.0)),
                            _as_user(plan.victim_uid, sender("victim", 0.01))]
                results = [_collect(pid, r) for pid, r in children]
                pipe.wait_drained(plan.drain_timeout)
                state = health(pipe)
                rss = pipe.peak_rss_mb()
            stored = collector.rows()
        finally:
            shutil.rmtree(socket_dir, ignore_errors=True)
    flooder, victim = results
    errors = tuple(r["error"] for r in results if "error" in r)
    acked = {**flooder.get("acked", {}), **victim.get("acked", {})}
    victim_lost = tuple(rid for rid in victim.get("acked", {}) if rid not in stored)
    share = plan.limit * 50 // 100
    result = Result("uid-flood", plan.flood + plan.victim, len(acked), sum(1 for rid in acked if rid in stored),
                    sum(1 for rid in acked if rid not in stored), sum(s.duplicates for s in stored.values()), rss,
                    note=f"flooder (uid {plan.flooder_uid}) {flooder.get('status')}; victim (uid {plan.victim_uid}) "
                         f"{victim.get('status')}; share {share} of {plan.limit} per window")
    return FairnessOutcome(result, flooder.get("status", {}), victim.get("status", {}), victim_lost, share, errors,
                           state)


@dataclass(frozen=True)
class SlotsOutcome:
    held: int  # connections the flooder holds open
    victim: dict[str, int]  # ack status -> n
    errors: tuple[str, ...]
    health: Health


def connection_hog(inst, plan: FairnessPlan = FairnessPlan(), victim_records: int = 5) -> SlotsOutcome:
    """One user opens as many connections as telemprobd serves and sends a byte on each,
    never finishing a frame; another user sends meanwhile and must be served."""
    if os.geteuid() != 0:
        raise Unavailable("senders with two other uids need root (setuid)")
    socket_dir = short_tempdir("hog-")
    os.chmod(socket_dir, 0o755)
    pipe = Pipeline(inst, "http://127.0.0.1:9/v2/collector", "rate_limit_enabled=false\nmax_connections=16\n"
                    "connection_timeout=60\nrate_limit_uid_share=50", socket_dir=socket_dir, postd=False)
    client = pipe.client()
    frames = [client.frame(make_record(3, i, 50, "org.example/e2e/slots")) for i in range(victim_records)]
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()

    def hog() -> dict:
        os.close(ready_r)
        os.close(release_w)
        held = []
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(pipe.socket_path)
                s.sendall(b"\x40")  # the first byte of a size field, and nothing more
            except OSError:
                s.close()
                break
            held.append(s)
        time.sleep(0.5)  # telemprobd has accepted them
        os.write(ready_w, b"r")
        os.read(release_r, 1)
        return {"held": len(held)}

    def victim() -> dict:
        out: dict = {}
        for frame in frames:
            try:
                key = client.send_frame(frame).status.value
            except SendError as e:
                key = "error: " + str(e)[:60]
            out[key] = out.get(key, 0) + 1
        return out

    try:
        with pipe:
            hog_child = _as_user(plan.flooder_uid, hog)
            os.close(ready_w)
            os.close(release_r)
            os.read(ready_r, 1)
            got = _collect(*_as_user(plan.victim_uid, victim))
            os.write(release_w, b"x")
            held = _collect(*hog_child)
            state = health(pipe)
    finally:
        for fd in (ready_r, release_w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(socket_dir, ignore_errors=True)
    errors = tuple(str(r["error"]) for r in (got, held) if "error" in r)
    return SlotsOutcome(int(held.get("held", 0)), {k: v for k, v in got.items() if k != "error"}, errors, state)


# name -> (who writes it, the path in an installation, whether the path is a directory)
SYMLINK_PATHS = {
    "socket": ("daemons", lambda p: p.socket_path, False),
    "socket directory": ("daemons", lambda p: os.path.dirname(p.socket_path), True),
    "spool directory": ("daemons", lambda p: p.spool_dir, True),
    "queue directory": ("daemons", lambda p: os.path.join(p.spool_dir, "queue"), True),
    "queue.db": ("daemons", lambda p: os.path.join(p.spool_dir, "queue", "queue.db"), False),
    "queue.db-wal": ("daemons", lambda p: os.path.join(p.spool_dir, "queue", "queue.db-wal"), False),
    "queue.db-shm": ("daemons", lambda p: os.path.join(p.spool_dir, "queue", "queue.db-shm"), False),
    "queue.changed": ("daemons", lambda p: os.path.join(p.spool_dir, "queue", "queue.changed"), False),
    "machine id": ("daemons", lambda p: p.machine_id_file, False),
    "journal directory": ("daemons", lambda p: p.journal_dir, True),
    "journal.db": ("daemons", lambda p: os.path.join(p.journal_dir, "journal.db"), False),
    "journal.db-wal": ("daemons", lambda p: os.path.join(p.journal_dir, "journal.db-wal"), False),
    "journal.db-shm": ("daemons", lambda p: os.path.join(p.journal_dir, "journal.db-shm"), False),
    "crashprobe state directory": ("crashprobe", lambda p: p.state_dir, True),
    "crashprobe flood state": ("crashprobe", lambda p: os.path.join(p.state_dir, "crashprobe-flood.json"), False),
    "crashprobe flood lock": ("crashprobe", lambda p: os.path.join(p.state_dir, "crashprobe-flood.json.lock"),
                              False),
    "crashprobe analysis lock": ("crashprobe", lambda p: os.path.join(p.state_dir, "crashprobe.lock"), False),
}
NOT_A_CORE = b"this is not a core file\n" * 100


@dataclass(frozen=True)
class Planted:
    name: str
    victim_intact: bool  # what the link points at is unchanged (a link may be removed or moved aside)
    tracebacks: tuple[str, ...]
    told: str  # what showed the refusal: a log line, a refusal to a sender, an exit status


def _plant(inst, name: str, workdir: Path) -> Planted:
    who, where, is_dir = SYMLINK_PATHS[name]
    victim = workdir / "victim"
    victim.mkdir()
    (victim / "file").write_bytes(b"victim\n")
    path = where(inst.paths)
    if os.path.lexists(path):
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(victim if is_dir else victim / "file", path)
    told = []
    with hc.Collector() as col:
        # crashprobe's cases: the queue elsewhere, so that what is checked is what crashprobe
        # writes (in user mode the spool is below the state directory, a trusted parent).
        extra = "" if who == "daemons" else f"\nspool_dir={workdir / 'spool'}"
        pipe = Pipeline(inst, col.url, "rate_limit_enabled=false" + extra, socket_activation=False,
                        socket_dir=os.path.dirname(inst.paths.socket_path), postd=who == "daemons")
        try:
            pipe.manager.start()
            ledger = Ledger()
            Senders(pipe.client(), ledger, threads=1, total=3).start().join()
            if who == "crashprobe":
                r = subprocess.run([sys.executable, "-m", "telemetry.probes.crash", "-p", "x", "-E", "!usr!bin!x",
                                    "-s", "11"], input=NOT_A_CORE, env=inst.env, capture_output=True, timeout=60)
                told.append(f"crashprobe exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[-200:]}")
                crash_tb = "Traceback" in r.stderr.decode(errors="replace")
            else:
                crash_tb = False
                try:
                    pipe.wait_drained(5)
                except AssertionError:
                    pass
            told.append(f"senders: acked {ledger.acked_count}, refused {dict(ledger.refused)}, "
                        f"errors {sum(ledger.errors.values())}; exits {[e.returncode for e in pipe.manager.crashes()]}")
        finally:
            pipe.stop()
        tracebacks = tuple(pipe.manager.tracebacks()) + (("crashprobe",) if crash_tb else ())
    intact = (victim / "file").read_bytes() == b"victim\n" and sorted(os.listdir(victim)) == ["file"]
    return Planted(name, intact, tracebacks, "; ".join(told))


def planted_symlinks(inst, workdir: Path, names: tuple[str, ...] = tuple(SYMLINK_PATHS),
                     threads: int = 4) -> tuple[Result, list[Planted]]:
    """Each path the daemons and crashprobe write, made a symlink to a victim file or
    directory in a fresh installation of its own (not `inst`); then the programs run and a
    few records are sent.  Nothing may be written through the link."""
    def one(n_name):
        n, name = n_name
        root = workdir / f"s{n}"
        return _plant(make_user_install(root / "i"), name, root)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        planted = list(pool.map(one, enumerate(names)))
    followed = [p.name for p in planted if not p.victim_intact]
    result = Result("symlinks", len(planted), 0, 0, 0, 0, 0.0,
                    note=f"{len(planted)} planted links, {len(followed)} followed {followed or ''}")
    return result, planted
