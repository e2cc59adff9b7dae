"""Spool policy: which queued records expire, what happens to each before sending, and
when the daemon next has something to do. Pure: times and values in, decisions out.

The spool is the queue's undelivered rows. Unlike the original's directory scans there
are no per-pass send caps (51 sends / 60 files every 120-300 s, defect 17); a pass reads
the queue oldest first in slices of `FETCH_SLICE` rows, so memory stays bounded and a
SIGTERM is honoured within one slice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from telemetry.daemons.postd.backoff import Gate

# Rows read from the queue at once.
FETCH_SLICE = 64
# Outcomes decided without a request (expiry, local rejection, delivery off) written back
# in one transaction: at most COMMIT_SLICE, the first waiting at most COMMIT_INTERVAL s.
# Answered requests are settled sooner: a kill may repeat at most max_in_flight POSTs
# (core.SettlePolicy).
COMMIT_SLICE = 512
COMMIT_INTERVAL = 0.5


class Disposition(enum.Enum):
    SEND = "send"
    EXPIRE = "expire"
    SET_ASIDE = "set-aside"  # the row does not hold a record we can read
    REJECT_LOCAL = "reject-local"  # a record the collector can never accept
    KEEP_LOCAL = "keep-local"  # delivery is disabled: journal (and retain), never post


def is_expired(received_at: float, now: float, record_expiry_minutes: int) -> bool:
    """Age in whole seconds over record_expiry, as the original compared file ages."""
    return int(now) - int(received_at) > record_expiry_minutes * 60


def expiry_cutoff(now: float, record_expiry_minutes: int) -> float:
    """Rows received before this are expired (the same rule as `is_expired`)."""
    return float(int(now) - record_expiry_minutes * 60)


def expires_at(received_at: float, record_expiry_minutes: int) -> float:
    return float(int(received_at) + record_expiry_minutes * 60 + 1)


def disposition(
    *, received_at: float, now: float, record_expiry_minutes: int, readable: bool, acceptable: bool,
    delivery_enabled: bool,
) -> Disposition:
    if is_expired(received_at, now, record_expiry_minutes):
        return Disposition.EXPIRE
    if not readable:
        return Disposition.SET_ASIDE
    if not delivery_enabled:
        return Disposition.KEEP_LOCAL
    if not acceptable:
        return Disposition.REJECT_LOCAL
    return Disposition.SEND


@dataclass(frozen=True)
class QueueView:
    """What the daemon knows about the queue between passes."""

    rows: int
    next_due: float | None  # earliest next attempt / deferral end; None if empty
    oldest_received: float | None


def next_wake(
    now: float, view: QueueView, gate: Gate, *, record_expiry_minutes: int, delivery_enabled: bool,
    idle_deadline: float | None,
) -> float | None:
    """When the daemon must look again without being woken; None: only when woken."""
    times: list[float] = []
    if view.next_due is not None:
        due = view.next_due if not delivery_enabled else max(view.next_due, gate.open_at)
        times.append(due)
    if view.oldest_received is not None:
        times.append(expires_at(view.oldest_received, record_expiry_minutes))
    if idle_deadline is not None:
        times.append(idle_deadline)
    return min(times) if times else None


def idle_deadline(
    *, last_activity: float, idle_after: float, recycling: bool, started_by_systemd: bool, queued_rows: int
) -> float | None:
    """When an idle daemon exits; None: it does not. Recycling exits only when path
    activation will start us again, and only with an empty queue: a record waiting for
    its retry would otherwise wait for the next new record to be queued."""
    if recycling and started_by_systemd and queued_rows == 0:
        return last_activity + idle_after
    return None


def should_exit_idle(
    now: float, *, last_activity: float, idle_after: float, recycling: bool, started_by_systemd: bool,
    queued_rows: int,
) -> bool:
    deadline = idle_deadline(last_activity=last_activity, idle_after=idle_after, recycling=recycling,
                             started_by_systemd=started_by_systemd, queued_rows=queued_rows)
    return deadline is not None and now >= deadline
