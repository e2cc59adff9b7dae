"""Log throttling: a flood of bad input or of failing writes must not flood the journal."""

from __future__ import annotations

import logging

_default_log = logging.getLogger("telemetry")


class LogThrottle:
    """At most `burst` lines per `interval`; the rest are counted and reported later, so a
    flood of bad frames or failing commits cannot flood the journal."""

    def __init__(self, burst: int = 20, interval: float = 10.0, *, logger: logging.Logger | None = None):
        self.burst, self.interval = burst, interval
        self.logger = logger or _default_log
        self._start = float("-inf")
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

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n

    def log(self, now: float, level: int, msg: str, *args) -> None:
        if self.allow(now):
            suppressed = self.take_suppressed()
            if suppressed:
                self.logger.log(level, "%d similar messages were suppressed", suppressed)
            self.logger.log(level, msg, *args)
