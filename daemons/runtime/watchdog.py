"""systemd's service watchdog (WatchdogSec=): when to send WATCHDOG=1.

systemd passes the timeout in WATCHDOG_USEC (and the pid it is meant for in WATCHDOG_PID);
a daemon that stops pinging within it is killed and restarted (Restart=on-failure), so a
daemon stuck in a locked database or a hung transfer does not sit there holding records.
The daemons ping at half the timeout, from their main loop and from their long passes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

PING_MESSAGE = "WATCHDOG=1"


def interval_from(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings, or None when no watchdog is asked of this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdecimal() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdecimal() or int(owner) != pid):
        return None  # meant for another process (our parent, say)
    return int(usec) / 2e6


class Watchdog:
    """When the next ping is due; `interval` None: never."""

    def __init__(self, interval: float | None, now: float):
        self.interval = interval
        self.next_at = float("inf") if interval is None else now

    @classmethod
    def from_environment(cls, now: float) -> Watchdog:
        """The watchdog systemd set up for this process, if any."""
        return cls(interval_from(os.environ, os.getpid()), now)

    def ping_if_due(self, now: float, notify: Callable[[str], object]) -> None:
        if self.due(now):
            notify(PING_MESSAGE)
            self.pinged(now)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def pinged(self, now: float) -> None:
        if self.interval is not None:
            self.next_at = now + self.interval
