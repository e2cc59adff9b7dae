"""klogscanner's pure core: /dev/kmsg records, the scan position and the memory of what
was sent.  No I/O.

The original drains the kernel ring with syslog(2) READ, so whatever it read is gone for
everyone else, and a restart can neither resume nor resend.  We read /dev/kmsg, which
leaves the ring intact, and keep two facts in a state file:

- ``next_seq``: the kmsg sequence number to resume from in this boot.  While an oops is
  open it is the number of the oops' first line, so an oops cut by a restart is read
  again whole;
- ``sent``: fingerprints of the last oopses whose records telemprobd acknowledged, so an
  oops read again after a crash between the acknowledgement and the state write is
  not sent twice.

Only records of the kernel facility (0) are scanned: user space can write to /dev/kmsg,
but the kernel never lets it claim facility 0, so no program can forge an oops report.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .oops import Oops, OopsParser, decode_line

KERNEL_FACILITY = 0
SENT_MEMORY = 512
STATE_VERSION = 1

_PREFIX = re.compile(rb"([0-9]+),([0-9]+),([0-9]+),[^;]*;")


@dataclass(frozen=True)
class KmsgRecord:
    facility: int
    level: int
    seq: int
    ts_usec: int
    message: str

    @property
    def from_kernel(self) -> bool:
        return self.facility == KERNEL_FACILITY

    def log_line(self) -> str:
        """The record as a dmesg line, the form the oops parser normalises."""
        sec, usec = divmod(self.ts_usec, 1_000_000)
        return f"<{self.level}>[{sec:5d}.{usec:06d}] {self.message}"


def parse_record(line: bytes) -> KmsgRecord | None:
    """One `prefix,seq,usec,flags[,…];message` line; None for continuation (` KEY=value`) or junk."""
    m = _PREFIX.match(line)
    if not m:
        return None
    prefix, seq, usec = (int(g) for g in m.groups())
    message = decode_line(line[m.end() :].rstrip(b"\n"))
    return KmsgRecord(prefix >> 3, prefix & 7, seq, usec, message)


@dataclass(frozen=True)
class ScanState:
    boot_id: str = ""
    next_seq: int = 0
    sent: tuple[str, ...] = field(default=())

    def remember(self, fingerprint: str) -> ScanState:
        sent = tuple(s for s in self.sent if s != fingerprint) + (fingerprint,)
        return replace(self, sent=sent[-SENT_MEMORY:])

    def encode(self) -> bytes:
        return json.dumps(
            {"version": STATE_VERSION, "boot_id": self.boot_id, "next_seq": self.next_seq, "sent": list(self.sent)},
            indent=0,
        ).encode()


class StateError(Exception):
    pass


def decode_state(data: bytes) -> ScanState:
    try:
        obj = json.loads(data.decode("utf-8"))
        boot_id, next_seq, sent = obj["boot_id"], obj["next_seq"], obj["sent"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise StateError(f"unreadable state ({e.__class__.__name__})") from None
    if not isinstance(boot_id, str) or not isinstance(next_seq, int) or next_seq < 0:
        raise StateError("state has a bad boot_id or next_seq")
    if not isinstance(sent, list) or not all(isinstance(s, str) for s in sent):
        raise StateError("state has a bad sent list")
    return ScanState(boot_id, next_seq, tuple(sent[-SENT_MEMORY:]))


@dataclass(frozen=True)
class Found:
    """An oops, where it began (kmsg seq; 0 for replayed text) and its fingerprint."""

    oops: Oops
    first_seq: int
    fingerprint: str


def text_fingerprint(first_line: str, oops: Oops) -> str:
    digest = hashlib.sha256("\n".join((first_line,) + oops.lines).encode("utf-8", "surrogatepass"))
    return "text:" + digest.hexdigest()[:32]


class KmsgScanner:
    """Feeds kernel records to the oops parser and keeps the resume position."""

    def __init__(self, boot_id: str, state: ScanState | None = None):
        self.boot_id = boot_id
        same_boot = state is not None and state.boot_id == boot_id
        self.resume_from = state.next_seq if same_boot and state else 0
        self.parser = OopsParser()
        self._first_seq = 0
        self._last_seq: int | None = None

    @property
    def next_seq(self) -> int:
        """Where to resume after a restart."""
        if self.parser.open:
            return self._first_seq
        return self.resume_from if self._last_seq is None else self._last_seq + 1

    def feed(self, record: KmsgRecord) -> list[Found]:
        if record.seq < self.resume_from or (self._last_seq is not None and record.seq <= self._last_seq):
            return []
        self._last_seq = record.seq
        if not record.from_kernel:
            return []
        first = self._first_seq
        was_open = self.parser.open
        done = self.parser.feed(record.log_line())
        if self.parser.open and (done or not was_open):
            self._first_seq = record.seq
        return [Found(o, first, f"kmsg:{self.boot_id}:{first}") for o in done]


class TextScanner:
    """Replay of a plain kernel log (dmesg output, a saved console log)."""

    def __init__(self) -> None:
        self.parser = OopsParser()
        self._first_line = ""

    def feed(self, line: str) -> list[Found]:
        was_open = self.parser.open
        first = self._first_line
        done = self.parser.feed(line)
        if self.parser.open and (done or not was_open):
            self._first_line = line
        return [Found(o, 0, text_fingerprint(first, o)) for o in done]

    def feed_all(self, lines: Iterable[str]) -> list[Found]:
        out: list[Found] = []
        for line in lines:
            out.extend(self.feed(line))
        return out
