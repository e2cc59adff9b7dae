"""The verdict on one frame telemprobd has read: opt-in, validation, spool quota, rate limits.

No I/O: the shell gathers the facts of the moment (`Context`) and gets back either the
row to stage or the refusal to send.  The checks run in the order that spends least on
a record that will be refused: consent first, then the frame's content (the record
grammar, then the collector contract's rules: what is acknowledged can be sent), then the quota
(so a record that will not fit does not use up rate-limit budget), then the limits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from telemetry.ack import AckStatus
from telemetry.contract import check_read_record, read_request_header_block
from telemetry.daemons.probd.ratelimit import Booking, RateLimiter, Verdict
from telemetry.daemons.probd.reserved import NO_RESERVATION, Reservation
from telemetry.daemons.store.queue import NewRecord, Sender
from telemetry.record import Record, RecordError, read_header_block
from telemetry.wire import Frame


@dataclass(slots=True)
class Context:
    """What the shell knows when a frame is complete.

    Not frozen (never changed once made): one is made for every frame, and a frozen
    dataclass's __init__, an object.__setattr__ per field, costs three times as much."""

    record_id: str
    sender: Sender
    received_at: float  # wall clock, stored with the record
    now: float  # monotonic clock, for the rate limits
    opted_in: bool
    machine_id: str
    queued_bytes: int  # bytes queued or on their way into the queue
    peer_uid: int | None = None  # who connected (SO_PEERCRED), when `sender` is what it stated
    uid_queued_bytes: int = 0  # of queued_bytes, the sender's


@dataclass(slots=True)
class Accept:
    """A record to queue, with the rate-limit booking it takes (deferred: over the limit).

    Not frozen (never changed once made): one is made for every record kept, and a frozen
    dataclass's __init__, an object.__setattr__ per field, costs three times as much."""

    record: NewRecord
    booking: Booking
    deferred: bool
    reason: str = ""  # why it was deferred
    severity: int = 1


@dataclass(frozen=True)
class Refuse:
    """A record refused, with the status and reason its sender is told."""
    status: AckStatus
    reason: str
    record: Record | None = None  # the parsed record, when it got that far (for the journal)


def spool_limit_bytes(spool_max_size_kib: int) -> int:
    """The spool_max_size key (KiB, -1 = no cap) in bytes; -1 stays -1."""
    return -1 if spool_max_size_kib < 0 else spool_max_size_kib * 1024


def fits_spool(queued_bytes: int, size: int, limit_bytes: int) -> bool:
    return limit_bytes < 0 or queued_bytes + size <= limit_bytes


def uid_spool_share(spool_max_bytes: int, uid_share: int) -> int:
    """Bytes of the spool one uid may fill (rate_limit_uid_share of spool_max_size); -1: no cap."""
    if spool_max_bytes < 0 or uid_share >= 100:
        return -1
    return spool_max_bytes * uid_share // 100


class Admission:
    def __init__(self, limiter: RateLimiter, spool_max_bytes: int, reserved: Reservation = NO_RESERVATION):
        self.limiter = limiter
        self.spool_max_bytes = spool_max_bytes
        self.reserved = reserved

    @property
    def uid_spool_max_bytes(self) -> int:
        return uid_spool_share(self.spool_max_bytes, self.limiter.policy.uid_share)

    def judge(self, frame: Frame, ctx: Context) -> Accept | Refuse:
        if not ctx.opted_in:
            return Refuse(AckStatus.NOT_OPTED_IN, "telemetry is not opted in on this machine")
        try:
            parsed, headers = read_header_block(frame.header_block, frame.payload, ctx.machine_id)
        except RecordError as e:
            return Refuse(AckStatus.INVALID, str(e))
        peer = ctx.sender.uid if ctx.peer_uid is None else ctx.peer_uid
        if (forbidden := self.reserved.refusal(parsed.classification, peer)) is not None:
            return Refuse(AckStatus.FORBIDDEN, forbidden)
        # What is acknowledged must be deliverable: the collector contract's rules, judged
        # once, here, rather than by telempostd after the sender was told it is kept.
        violation = check_read_record(parsed)
        if violation is not None:
            return Refuse(AckStatus.INVALID, f"a collector would refuse it: {violation}")
        record = NewRecord(
            record_id=ctx.record_id,
            received_at=ctx.received_at,
            sender=ctx.sender,
            headers=headers,
            payload=frame.payload,
            cfg_path=frame.cfg_path,
            request_headers=read_request_header_block(parsed),
        )
        size = record.size
        if not fits_spool(ctx.queued_bytes, size, self.spool_max_bytes):
            return Refuse(
                AckStatus.NO_SPACE,
                f"spool full: {ctx.queued_bytes} bytes queued, the limit is {self.spool_max_bytes}",
                parsed,
            )
        share = self.uid_spool_max_bytes
        if not fits_spool(ctx.uid_queued_bytes, size, share):
            return Refuse(
                AckStatus.NO_SPACE,
                f"spool share full: uid {ctx.sender.uid} has {ctx.uid_queued_bytes} bytes queued; one user may fill "
                f"{self.limiter.policy.uid_share}% of the spool ({share} bytes)",
                parsed,
            )
        decision = self.limiter.decide(ctx.sender.uid, size, ctx.now)
        if decision.verdict is Verdict.REFUSE:
            return Refuse(AckStatus.RATE_LIMITED, decision.reason)
        assert decision.booking is not None
        if decision.verdict is Verdict.DEFER:
            until = ctx.received_at + (decision.booking.at - ctx.now)
            return Accept(replace(record, deferred_until=until), decision.booking, deferred=True,
                          reason=decision.reason, severity=parsed.severity)
        return Accept(record, decision.booking, deferred=False, severity=parsed.severity)
