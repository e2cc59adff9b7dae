"""When a daemon may leave on its own: recycling after idleness, as the original does.

A daemon exits when idle only if something will start it again: systemd's socket unit
(telemprobd) or path unit (telempostd).  INVOCATION_ID is how a process knows systemd
started it.
"""

from __future__ import annotations

import os

IDLE_EXIT_AFTER = 300.0  # seconds without work: the original's recycling time


def started_by_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID"))
