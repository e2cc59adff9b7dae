"""When a daemon may leave on its own: recycling after idleness (`daemon_idle_time`), as
the original does.

A daemon exits when idle only if something will start it again: systemd's socket unit
(telemprobd) or path unit (telempostd).  INVOCATION_ID is how a process knows systemd
started it.
"""

from __future__ import annotations

import os


def started_by_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID"))
