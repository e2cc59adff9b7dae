"""Every limit and timeout of the collector, with its default, and the two pure cores that
enforce the counting ones: a token-bucket rate limiter and a connection admission counter.

`Limits` is the one source of truth for the defaults; `serve`'s options, the README and the
nginx example in docs/ take theirs from here.  A value of 0 turns a count limit off.  The
defaults suit a collector that a fleet reaches directly: a well-behaved client (telempostd,
at most `max_in_flight` connections, a few records a minute, a backlog after an outage)
never meets one, and one client alone cannot take what the others need.

Neither core reads a clock or a socket: callers pass ``now`` (monotonic seconds) and
addresses, and get decisions back, so both are tested exhaustively without a server.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass

from telemetry.errors import TelemetryError


class LimitError(TelemetryError):
    pass


@dataclass(frozen=True)
class Limits:
    head_timeout: float = 10.0  # s from the connection (or the request's first byte) to the end of its head
    body_timeout: float = 60.0  # s from the end of the head to the end of the body
    idle_timeout: float = 30.0  # s a kept-alive connection waits for a request, or a reader takes no bytes
    max_header_bytes: int = 16 * 1024  # request line and headers; 431 beyond
    max_body: int = 1 << 20  # bytes of a request body; 413 beyond
    max_connections: int = 2048  # open connections in total; 503 beyond
    max_connections_per_address: int = 256  # open connections from one client address; 503 beyond
    machine_rate: float = 10.0  # records/s one machine id may send, sustained; 429 beyond
    machine_burst: int = 1000  # records one machine id may send at once
    address_rate: float = 100.0  # records/s one client address may send, sustained; 429 beyond
    address_burst: int = 5000  # records one client address may send at once

    def __post_init__(self) -> None:
        for name in ("head_timeout", "body_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise LimitError(f"{name.replace('_', '-')} must be more than 0 and at most 3600 seconds, "
                                 f"got {value}")
        for name in ("max_header_bytes", "max_body", "max_connections", "max_connections_per_address",
                     "machine_burst", "address_burst"):
            if getattr(self, name) < 0:
                raise LimitError(f"{name.replace('_', '-')} must not be negative")
        if self.max_header_bytes and self.max_header_bytes < 1024:
            raise LimitError("max-header-bytes must be at least 1024 (or 0: no limit)")
        for rate, burst in (("machine_rate", "machine_burst"), ("address_rate", "address_burst")):
            r, b = getattr(self, rate), getattr(self, burst)
            if not (math.isfinite(r) and r >= 0):
                raise LimitError(f"{rate.replace('_', '-')} must be a number of records per second >= 0")
            if r > 0 and b < 1:
                raise LimitError(f"{burst.replace('_', '-')} must be at least 1 when {rate.replace('_', '-')} "
                                 "is set")


# --- token buckets ------------------------------------------------------------------------

class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float):
        self.level = level
        self.stamp = stamp


class RateLimiter:
    """One token bucket per key (a machine id, a client address): `rate` tokens a second up
    to `burst`; a record takes one.  A refused record takes nothing, so a client that
    waits as told is served.

    The keys are chosen by clients, so the table is bounded: past `max_keys` the least
    recently used bucket is forgotten.  A forgotten bucket comes back full, which only
    matters for a client that cycles through more than `max_keys` keys; the per-address
    bucket still holds that one.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000):
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float) -> float:
        """0.0 if `key` may send one record now (and it is counted), else the seconds until it may."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.level = min(self.burst, bucket.level + elapsed * self.rate)
            bucket.stamp = now
        if bucket.level >= 1.0:
            bucket.level -= 1.0
            return 0.0
        return (1.0 - bucket.level) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait: float) -> int:
    """Whole seconds for a Retry-After header: never 0, since the client must wait."""
    return max(1, math.ceil(wait - 1e-9))


# --- connections ---------------------------------------------------------------------------

class Admission(enum.Enum):
    ADMITTED = "admitted"
    TOO_MANY = "connections_total"  # the value names the counter of refusals
    TOO_MANY_FROM_ADDRESS = "connections_per_address"


class ConnectionCounter:
    """Open connections in total and per client address.  `exempt` addresses (trusted
    proxies, which carry many clients) count only towards the total."""

    def __init__(self, total: int, per_address: int, exempt: frozenset[str] = frozenset()):
        self.total = total
        self.per_address = per_address
        self.exempt = exempt
        self.open = 0
        self._by_address: dict[str, int] = {}

    def admit(self, address: str) -> Admission:
        if self.total and self.open >= self.total:
            return Admission.TOO_MANY
        n = self._by_address.get(address, 0)
        if self.per_address and address not in self.exempt and n >= self.per_address:
            return Admission.TOO_MANY_FROM_ADDRESS
        self.open += 1
        self._by_address[address] = n + 1
        return Admission.ADMITTED

    def release(self, address: str) -> None:
        """For a connection `admit` admitted, once it is closed."""
        n = self._by_address.get(address, 0)
        if n <= 0:
            return
        self.open -= 1
        if n == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = n - 1

    def from_address(self, address: str) -> int:
        return self._by_address.get(address, 0)
