"""When to try the collector again: exponential backoff with full jitter, Retry-After.

A retryable failure (connection error, 408, 429, 5xx) usually says something about the
collector, not about one record, so it closes a *gate* for every record: nothing is sent
until it opens, and the records that failed are due again exactly when it opens. That
keeps queue order through an outage and leaves the process asleep meanwhile. A record
that keeps failing while others get through is the odd one out: it gets a backoff of its
own, so it cannot hold the gate shut for everyone else.

Delays follow "full jitter": uniform in [0, min(cap, base·2^(n-1))], with `base` the
original's spool_process_time (120..300 s) and `cap` retry_max_delay; a collector's
Retry-After (seconds or an HTTP date) is honoured as given, up to the same cap.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

# A full-jitter draw can be 0; never retry faster than this.
MIN_DELAY = 1.0
_MAX_EXPONENT = 62
_SECONDS = re.compile(r"[0-9]{1,100}")
# Longer than any cap; a larger Retry-After means "much later", not an error.
RETRY_AFTER_MAX = 10.0**12


def full_jitter(attempt: int, base: float, cap: float, rand: float) -> float:
    """Delay before attempt `attempt`+1, given a uniform draw `rand` in [0, 1)."""
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    ceiling = max(MIN_DELAY, min(cap, base * (2**exponent)))
    return max(MIN_DELAY, rand * ceiling)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        return min(float(int(text)), RETRY_AFTER_MAX)
    import email.utils  # rarely needed; keeps the idle daemon small

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class Gate:
    """Whether the collector may be tried now, and how many failed rounds preceded."""

    open_at: float = 0.0
    streak: int = 0
    # Set by a Retry-After or a configuration error: a success of a request that was
    # already in flight does not reopen it.
    hard: bool = False

    def is_open(self, now: float) -> bool:
        return now >= self.open_at

    def after_success(self) -> Gate:
        if self.hard:
            return dataclasses.replace(self, streak=0)
        return self if self.open_at == 0.0 and self.streak == 0 else Gate()

    def after_failure(
        self, now: float, *, base: float, cap: float, rand: float, retry_after: float | None = None
    ) -> Gate:
        """The first failure of a round closes the gate; later ones of the same round only
        extend it when the collector asked for a longer wait."""
        wait = None if retry_after is None else min(max(retry_after, 0.0), cap)
        if self.is_open(now):
            streak = self.streak + 1
            if wait is None:
                return Gate(now + full_jitter(streak, base, cap, rand), streak, False)
            return Gate(now + max(wait, MIN_DELAY), streak, True)
        if wait is not None and now + wait > self.open_at:
            return Gate(now + wait, self.streak, True)
        return self

    def hold(self, now: float, seconds: float) -> Gate:
        """Closed for `seconds` whatever happens meanwhile (a configuration error)."""
        return Gate(max(self.open_at, now + seconds), self.streak + 1, True)


def next_attempt_at(attempts: int, gate: Gate, now: float, *, base: float, cap: float, rand: float) -> float:
    """When a record that has now failed `attempts` times is due again.

    While its failures keep pace with the gate's streak it is part of a collector-wide
    outage and waits for the gate; failing more often than that, it backs off on its own.
    """
    if attempts <= gate.streak:
        return gate.open_at
    return max(gate.open_at, now + full_jitter(attempts, base, cap, rand))
