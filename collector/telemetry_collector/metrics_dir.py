"""The directory prometheus-client's multiprocess mode shares between workers.

It must be named (``PROMETHEUS_MULTIPROC_DIR``) before prometheus-client is first
imported, and start empty, or the sums would include another run's values.  Without the
variable the collector makes a private directory and removes it when it exits; with it,
the directory's old value files are deleted at start, as prometheus-client asks.
"""

from __future__ import annotations

import glob
import os
import tempfile

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"


def prepare_directory() -> tuple[str, bool]:
    """The multiprocess directory, empty; True if this process made it (and removes it)."""
    given = os.environ.get(ENV_DIR)
    if given:
        os.makedirs(given, mode=0o700, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.unlink(stale)
        return given, False
    made = tempfile.mkdtemp(prefix="telemetry-collector-metrics-")
    os.environ[ENV_DIR] = made
    return made, True


def worker_exited(pid: int) -> None:
    """In the supervisor: drop the live gauges of a worker that is gone."""
    directory = os.environ.get(ENV_DIR)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
