"""The reliability scenarios, shared by tests/e2e (small sizes, assertions) and
bench/chaos.py (long runs, the summary table): one import for both.

Each scenario takes an installation (`inst`: the tests' UserInstall or the bench's, made
by tests/support.py's make_user_install), a work directory and a plan (its size), runs
the real pipeline and returns what it saw: a `Result` row for the table plus the details
the tests assert on.  Nothing here asserts and nothing depends on pytest.  The code is in
faults.py (kills, outage, flapping, disk full), hostile.py (frames, rows, queue files,
configuration) and abuse.py (uids, symlinks).
"""

from __future__ import annotations

from abuse import (
    SYMLINK_PATHS,
    FairnessOutcome,
    FairnessPlan,
    Planted,
    SlotsOutcome,
    connection_hog,
    fairness,
    planted_symlinks,
)
from faults import (
    ChaosOutcome,
    ChaosPlan,
    DiskFullOutcome,
    DiskFullPlan,
    FlapOutcome,
    FlapPlan,
    OutageOutcome,
    OutagePlan,
    chaos,
    disk_full,
    flapping,
    outage,
)
from hostile import (
    DAMAGES,
    MALFORMED_CONFIGS,
    WARNED_CONFIGS,
    ConfigOutcome,
    Damaged,
    DamagePlan,
    FramesOutcome,
    FramesPlan,
    RowsOutcome,
    RowsPlan,
    Run,
    damaged_queue_files,
    hostile_frames,
    hostile_rows,
    isolated_env,
    malformed_configs,
    run_program,
)
from pipeline import Health, Unavailable

__all__ = [
    "DAMAGES", "MALFORMED_CONFIGS", "WARNED_CONFIGS", "SYMLINK_PATHS", "ChaosOutcome", "ChaosPlan", "ConfigOutcome", "DamagePlan",
    "Damaged", "DiskFullOutcome", "DiskFullPlan", "FairnessOutcome", "FairnessPlan", "FlapOutcome", "FlapPlan",
    "FramesOutcome", "FramesPlan", "Health", "OutageOutcome", "OutagePlan", "Planted", "RowsOutcome", "RowsPlan",
    "Run", "SlotsOutcome", "Unavailable", "chaos", "connection_hog", "damaged_queue_files", "disk_full", "fairness",
    "flapping", "hostile_frames", "hostile_rows", "isolated_env", "malformed_configs", "outage",
    "planted_symlinks", "run_program",
]
