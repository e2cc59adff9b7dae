"""Log throttling: a flood of bad input or of failing writes must not flood the journal.

The daemons and the collector meet inputs that can repeat without bound (bad frames,
failing commits, damaged queue rows, refused requests); each such stream gets a
`LogThrottle` of its own, so one flood cannot hide another.  What was held back is
counted and said in one line later.
"""

from __future__ import annotations

import logging
import math

_default_log = logging.getLogger("telemetry")


class LogThrottle:
    """At most `burst` lines per `interval` seconds (math.inf: until `restart`); the rest
    are counted and reported with the next line allowed, or taken by the caller."""

    def __init__(self, burst: int = 20, interval: float = 10.0, *, logger: logging.Logger | None = None):
        self.burst, self.interval = burst, interval
        self.logger = logger or _default_log
        self._start = -math.inf
        self._used = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._start >= self.interval:
            self._start, self._used = now, 0
        if self._used < self.burst:
            self._used += 1
            return True
        self.suppressed += 1
        return False

    def restart(self, now: float) -> None:
        """A new allowance from `now` on (a new pass over the queue)."""
        self._start, self._used = now, 0

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n

    def log(self, now: float, level: int, msg: str, *args: object) -> None:
        """The line if the allowance has room, preceded by the count of lines held back."""
        if self.allow(now):
            suppressed = self.take_suppressed()
            if suppressed:
                self.logger.log(level, "%d similar messages were suppressed", suppressed)
            self.logger.log(level, msg, *args)
