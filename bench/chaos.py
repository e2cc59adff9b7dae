"""Reliability under faults and hostile input, end to end; prints the summary table.

    .venv/bin/python bench/chaos.py                       # the long run (about 5 minutes)
    .venv/bin/python bench/chaos.py --quick               # the sizes tests/e2e uses
    .venv/bin/python bench/chaos.py --kills 300 --rate 300 --frames 200000 --real-expiry
    .venv/bin/python bench/chaos.py --only chaos,outage

Runs the scenarios of tests/e2e/scenarios.py (the same code CI runs, at a larger size),
each in a throwaway user-mode installation under /tmp, against the real programs
(`python -m ...`) and a local collector:

  chaos           senders push records while telemprobd and telempostd are killed with
                  SIGKILL at random instants (--kills) and restarted as systemd would
                  (tests/e2e/services.py); every acknowledged record must be stored once
                  after folding duplicates on the record id
  outage          the collector down for --outage-seconds while records keep coming: spool
                  cap, expiry, telempostd's CPU while waiting, delivery in order afterwards
                  (--real-expiry: record_expiry=1 and an outage over 60 s, else rows are aged)
  flapping        503 + Retry-After, 500, resets, slow and timed-out answers, alternating
  disk-full       the file system under queue and journal fills up and frees up (root)
  hostile-frames  --frames random and mutated frames on the socket; RSS before and after
  hostile-rows    --rows damaged queue rows among sound ones
  damaged-queue   damaged queue database files
  bad-config      malformed configuration files for both daemons
  uid-flood       one uid flooding beside another (root)
  symlinks        symlinks planted where the daemons and crashprobe write

The figures are for this machine at the time of the run; other load on it shows in them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("tests/integration", "tests/e2e", "tests"):
    sys.path.insert(0, str(ROOT / sub))

import scenarios as sc  # noqa: E402
from pipeline import Result, notes, table  # noqa: E402
from support import make_user_install  # noqa: E402

ALL = ("chaos", "outage", "flapping", "disk-full", "hostile-frames", "hostile-rows", "damaged-queue", "bad-config",
       "uid-flood", "symlinks")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the sizes tests/e2e uses (about 2 minutes)")
    p.add_argument("--kills", type=int, default=120, help="SIGKILLs in the chaos run (default 120)")
    p.add_argument("--rate", type=float, default=200.0, help="records/s the chaos senders aim at (default 200)")
    p.add_argument("--senders", type=int, default=4, help="sender threads in the chaos run (default 4)")
    p.add_argument("--frames", type=int, default=100_000, help="hostile frames (default 100000)")
    p.add_argument("--rows", type=int, default=10_000, help="damaged queue rows (default 10000)")
    p.add_argument("--outage-seconds", type=float, default=20.0, help="collector down this long (default 20)")
    p.add_argument("--real-expiry", action="store_true",
                   help="record_expiry=1 with an outage of at least 75 s instead of aged rows")
    p.add_argument("--flaps", type=int, default=10, help="bad periods of the flapping collector (default 10)")
    p.add_argument("--config-mutants", type=int, default=100, help="mutated config files (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of: {', '.join(ALL)}")
    p.add_argument("--keep", action="store_true", help="keep the work directories (logs, databases)")
    args = p.parse_args(argv)
    if args.quick:
        args.kills, args.rate, args.senders, args.frames = 10, 150.0, 3, 10_000
        args.outage_seconds, args.flaps, args.config_mutants = 5.0, 3, 20
    if args.real_expiry:
        args.outage_seconds = max(args.outage_seconds, 75.0)
    unknown = set(args.only.split(",")) - set(ALL)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def run(name: str, args: argparse.Namespace, work: Path) -> Result | str:
    """One scenario in a fresh installation; its Result, or why it could not run."""
    work.mkdir(parents=True)
    inst = make_user_install(work / "install")
    s = args.seed
    try:
        if name == "chaos":
            return sc.chaos(inst, work, sc.ChaosPlan(kills=args.kills, senders=args.senders, rate=args.rate,
                                                     seed=s, drain_timeout=600)).result
        if name == "outage":
            plan = sc.OutagePlan(down_seconds=args.outage_seconds, quiet_seconds=min(10.0, args.outage_seconds / 3),
                                 drain_timeout=600)
            if args.real_expiry:
                plan = sc.OutagePlan(down_seconds=args.outage_seconds, quiet_seconds=10.0, record_expiry_min=1,
                                     age_rows=0, spool_max_kib=64, drain_timeout=600)
            return sc.outage(inst, work, plan).result
        if name == "flapping":
            return sc.flapping(inst, work, sc.FlapPlan(bad_periods=args.flaps, seed=s, drain_timeout=600)).result
        if name == "disk-full":
            return sc.disk_full(inst, work, sc.DiskFullPlan(drain_timeout=600)).result
        if name == "hostile-frames":
            return sc.hostile_frames(inst, work, sc.FramesPlan(frames=args.frames, seed=s, drain_timeout=600)).result
        if name == "hostile-rows":
            return sc.hostile_rows(inst, work, sc.RowsPlan(rows=args.rows, seed=s, timeout=600)).result
        if name == "damaged-queue":
            return sc.damaged_queue_files(inst, work, sc.DamagePlan(seed=s))[0]
        if name == "bad-config":
            return sc.malformed_configs(inst, work, seed=s, mutants=args.config_mutants).result
        if name == "uid-flood":
            return sc.fairness(inst, work).result
        if name == "symlinks":
            return sc.planted_symlinks(inst, work)[0]
    except sc.Unavailable as e:
        return f"skipped: {e}"
    raise AssertionError(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    print(f"work directory {work}; seed {args.seed}", flush=True)
    results: list[Result] = []
    skipped: list[str] = []
    started = time.monotonic()
    try:
        for name in (n for n in ALL if n in args.only.split(",")):
            t = time.monotonic()
            print(f"== {name} ...", end=" ", flush=True)
            out = run(name, args, work / name)
            if isinstance(out, str):
                skipped.append(f"{name}: {out}")
                print(out, flush=True)
                continue
            results.append(out)
            print(f"{time.monotonic() - t:.0f} s: sent {out.sent}, acked {out.acked}, delivered {out.delivered}, "
                  f"lost {out.lost}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    print()
    print(notes(results))
    for line in skipped:
        print(line)
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return 1 if any(r.lost for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
