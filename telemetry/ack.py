"""The acknowledgement telemprobd writes after a frame, and its decoding. No I/O.

The original daemon never replies; ours writes one line once the record is committed to
the queue or once it has decided to refuse it::

    reply  = "TM/1 " status [" " detail] "\\n"       at most 512 bytes, ASCII
    status = "accepted" | "deferred"                 kept; detail is the record id, then
                                                     " on-disk" or " in-wal" (durability)
           | "not-opted-in" | "rate-limited" | "invalid" | "forbidden" | "no-space" | "busy"
           | "error"
                                                     refused; detail says why

`on-disk`: the record was synced before the reply (it survives a power cut); `in-wal`:
it is committed to the queue's write-ahead log (it survives the crash or kill of any
process) and synced within `sync_interval`.  The word was added after the record id so
that a library reading only "status, then the id" still reads the line; a reader takes
the first word of the detail as the id and ignores words it does not know.

"deferred" means kept but held back by the rate limit (strategy spool).  A client that
reads EOF without any reply is talking to an original telemprobd, which keeps what it
reads: that counts as accepted.  An original client never reads and closes at once; the
daemon's write then fails harmlessly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import TelemetryError
from .limits import ACK_MAX

MAGIC = b"TM/1 "


class AckStatus(enum.Enum):
    ACCEPTED = "accepted"
    DEFERRED = "deferred"
    NOT_OPTED_IN = "not-opted-in"
    RATE_LIMITED = "rate-limited"
    INVALID = "invalid"
    FORBIDDEN = "forbidden"  # a classification this sender may not use (reserved_classifications)
    NO_SPACE = "no-space"
    BUSY = "busy"
    ERROR = "error"

    @property
    def kept(self) -> bool:
        return self in (AckStatus.ACCEPTED, AckStatus.DEFERRED)


class Durability(enum.Enum):
    """How far a kept record got before the reply: the ack line's word after the id."""

    ON_DISK = "on-disk"  # synced: survives a power cut
    IN_WAL = "in-wal"  # committed: survives any process's crash; synced within sync_interval


_DURABILITY = {d.value: d for d in Durability}


# Encoded once: an acknowledgement is written for every record telemprobd receives.
_LEADS = {status: MAGIC + status.value.encode("ascii") for status in AckStatus}
_TAILS = {durability: b" " + durability.value.encode("ascii") for durability in Durability}
_KEPT = frozenset(status for status in AckStatus if status.kept)


class AckError(TelemetryError):
    """The daemon's reply could not be understood."""


@dataclass(frozen=True)
class Ack:
    """telemprobd's answer to one record."""
    status: AckStatus
    detail: str = ""
    # True when the peer closed without replying: an original telemprobd.
    legacy: bool = False
    # Said by telemprobd for a kept record; None: not said (an older or original daemon).
    durability: Durability | None = None

    @property
    def kept(self) -> bool:
        return self.status.kept

    @property
    def record_id(self) -> str | None:
        return self.detail if self.kept and self.detail and not self.legacy else None

    def encode(self) -> bytes:
        detail = self.detail
        if not (detail.isascii() and detail.isprintable()):
            detail = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in detail)
        status = self.status
        line = b"".join((_LEADS[status], b" " if detail else b"", detail.encode("ascii"),
                         b"" if self.durability is None or status not in _KEPT else _TAILS[self.durability]))
        return line + b"\n" if len(line) < ACK_MAX else line[: ACK_MAX - 1] + b"\n"

    def __str__(self) -> str:
        return f"{self.status.value}: {self.detail}" if self.detail else self.status.value


LEGACY_ACCEPT = Ack(AckStatus.ACCEPTED, "no reply (original telemprobd)", legacy=True)


def decode_ack(data: bytes) -> Ack:
    """Decode a reply; b"" (EOF, no reply) is the original daemon's silent accept."""
    if not data:
        return LEGACY_ACCEPT
    if not data.endswith(b"\n") or len(data) > ACK_MAX:
        raise AckError("daemon reply is truncated or too long")
    if not data.startswith(MAGIC):
        raise AckError("daemon reply has an unknown format")
    try:
        text = data[len(MAGIC) : -1].decode("ascii")
    except UnicodeDecodeError:
        raise AckError("daemon reply is not ASCII") from None
    status, _, detail = text.partition(" ")
    try:
        kind = AckStatus(status)
    except ValueError:
        raise AckError(f"daemon reply has an unknown status {status[:20]!r}") from None
    if not kind.kept:
        return Ack(kind, detail)
    record_id, *words = detail.split(" ")
    durability = next((_DURABILITY[w] for w in words if w in _DURABILITY), None)
    return Ack(kind, record_id, durability=durability)
