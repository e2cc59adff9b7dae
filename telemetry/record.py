"""The Version 4 record: its 15 headers, its payload and every rule that binds them.

`create_record` is the probe side (libtelemetry's tm_create_record + tm_set_payload):
it fills the headers from the machine and clamps what the original clamps.
`parse_header_block` is the daemon side: it accepts exactly the 15 lines in order and
refuses, with the name of the offending header, anything an original peer would not
produce or a collector could be harmed by (line breaks, NULs, invalid UTF-8).
"""

from __future__ import annotations

import codecs
import dataclasses
import operator
import os
import re
import struct
import time
from dataclasses import dataclass

from . import headers as H
from .errors import TelemetryError
from .limits import (
    CLASSIFICATION_FIRST_SEGMENT_MAX,
    CLASSIFICATION_MAX,
    CLASSIFICATION_SEGMENT_MAX,
    EVENT_ID_LEN,
    HEADER_VALUE_MAX,
    MACHINE_ID_PLACEHOLDER,
    PAYLOAD_FORMAT_VERSION_MAX,
    PAYLOAD_MAX,
    RECORD_FORMAT_VERSION,
    SEVERITY_MAX,
    SEVERITY_MIN,
)
from .metadata import Metadata, read_metadata

_EVENT_ID = re.compile(r"[0-9a-f]{32}")
_DIGITS = re.compile(r"[0-9]+")


class RecordError(TelemetryError):
    """A record that must not be built or accepted; `field` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class PayloadTooLarge(RecordError):
    def __init__(self, size: int):
        super().__init__("payload", f"payload is {size} bytes; the limit is {PAYLOAD_MAX}")
        self.size = size


def new_event_id() -> str:
    """16 random bytes printed as two host-order uint64, as libtelemetry does."""
    hi, lo = struct.unpack("=QQ", os.urandom(16))
    return f"{hi:016x}{lo:016x}"


def check_classification(classification: str) -> None:
    raw = classification.encode("utf-8", errors="surrogateescape")
    if raw.count(b"/") != 2:
        raise RecordError(H.CLASSIFICATION, "classification should have two '/'s (most/to/least specific)")
    if len(raw) > CLASSIFICATION_MAX:
        raise RecordError(
            H.CLASSIFICATION, f"classification is {len(raw)} bytes; the limit is {CLASSIFICATION_MAX}"
        )
    first, second, third = raw.split(b"/")
    if len(first) > CLASSIFICATION_FIRST_SEGMENT_MAX or max(len(second), len(third)) > CLASSIFICATION_SEGMENT_MAX:
        raise RecordError(
            H.CLASSIFICATION,
            f"classification segments hold at most {CLASSIFICATION_SEGMENT_MAX} characters each",
        )
    if not (raw.isascii() and raw.decode("ascii").isprintable()):
        raise RecordError(H.CLASSIFICATION, "classification must be printable ASCII")


def check_event_id(event_id: str) -> None:
    if len(event_id) != EVENT_ID_LEN:
        raise RecordError(H.EVENT_ID, f"event_id length {len(event_id)}; it should have {EVENT_ID_LEN} characters")
    if not _EVENT_ID.fullmatch(event_id):
        raise RecordError(H.EVENT_ID, "event_id must be 32 characters from 0123456789abcdef")


def check_payload(payload: bytes) -> None:
    if len(payload) > PAYLOAD_MAX:
        raise PayloadTooLarge(len(payload))
    if b"\0" in payload:
        raise RecordError("payload", "payload contains a NUL byte")
    if payload.isascii():  # valid UTF-8, known without decoding a copy
        return
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError("payload", f"payload is not valid UTF-8 (byte {e.start})") from None


def _check_value(name: str, value: str) -> None:
    if len(value) > HEADER_VALUE_MAX:
        raise RecordError(name, f"{name} is {len(value)} characters; the limit is {HEADER_VALUE_MAX}")
    if value.isprintable():  # the usual case, checked in one C call
        return
    for ch in value:
        if not (ch.isprintable() or ch == "\t"):
            raise RecordError(name, f"{name} contains the control character {ord(ch):#04x}")


def truncate_utf8(data: bytes, limit: int) -> bytes:
    """Cut at `limit` bytes without splitting a UTF-8 sequence.

    Only a sequence the cut left incomplete is dropped; invalid bytes before it stay, so
    that `check_payload` refuses a cut payload exactly as it refuses an uncut one.
    """
    if len(data) <= limit:
        return data
    cut = data[:limit]
    try:
        _, complete = codecs.utf_8_decode(cut, "strict", False)  # final=False: stops before a partial tail
    except UnicodeDecodeError:
        return cut
    return cut[:complete]


@dataclass(frozen=True)
class Record:
    """A Version 4 telemetry record: its headers and payload."""
    classification: str
    severity: int
    machine_id: str
    creation_timestamp: int
    arch: str
    host_type: str
    build: str
    kernel_version: str
    payload_format_version: int
    system_name: str
    board_name: str
    cpu_model: str
    bios_version: str
    event_id: str
    payload: bytes = b""
    record_format_version: int = RECORD_FORMAT_VERSION

    def headers(self) -> tuple[tuple[str, str], ...]:
        """The 15 (name, value) pairs in wire order."""
        return tuple(zip(H.RECORD_HEADERS, map(str, wire_values(self)), strict=True))

    def header_block(self) -> bytes:
        """The 15 lines as a frame and the queue carry them."""
        return (_BLOCK_TEMPLATE % wire_values(self)).encode("utf-8")

    def with_machine_id(self, machine_id: str) -> Record:
        """This record as telemprobd queues it: the machine id written in, as the original does."""
        stamped = object.__new__(Record)  # a copy with one field changed, without __init__'s cost
        stamped.__dict__.update(self.__dict__, machine_id=machine_id)
        return stamped

    def with_payload(self, payload: bytes | str, *, truncate: bool = False) -> Record:
        return dataclasses.replace(self, payload=prepare_payload(payload, truncate=truncate))


wire_values = operator.attrgetter(*H.RECORD_HEADERS)  # a record's 15 values in wire order
_BLOCK_TEMPLATE = "".join(f"{name}: %s\n" for name in H.RECORD_HEADERS)


def prepare_payload(payload: bytes | str, *, truncate: bool = False) -> bytes:
    """UTF-8 bytes within PAYLOAD_MAX; over the limit is an error unless asked to cut."""
    data = payload.encode("utf-8", errors="strict") if isinstance(payload, str) else bytes(payload)
    if truncate:
        data = truncate_utf8(data, PAYLOAD_MAX)
    check_payload(data)
    return data


def clamp_severity(severity: int) -> int:
    return min(max(int(severity), SEVERITY_MIN), SEVERITY_MAX)


def create_record(
    classification: str,
    severity: int = 1,
    payload: bytes | str = b"",
    payload_format_version: int = 1,
    *,
    event_id: str | None = None,
    metadata: Metadata | None = None,
    root: str = "/",
    now: float | None = None,
    truncate: bool = False,
) -> Record:
    check_classification(classification)
    if not 0 <= int(payload_format_version) <= PAYLOAD_FORMAT_VERSION_MAX:
        raise RecordError(H.PAYLOAD_FORMAT_VERSION, "payload_format_version must be 0..4294967295")
    if event_id is None:
        event_id = new_event_id()
    check_event_id(event_id)
    md = metadata or read_metadata(root)
    return Record(
        classification=classification,
        severity=clamp_severity(severity),
        machine_id=MACHINE_ID_PLACEHOLDER,
        creation_timestamp=int(time.time() if now is None else now),
        arch=md.arch,
        host_type=md.host_type,
        build=md.build,
        kernel_version=md.kernel_version,
        payload_format_version=int(payload_format_version),
        system_name=md.system_name,
        board_name=md.board_name,
        cpu_model=md.cpu_model,
        bios_version=md.bios_version,
        event_id=event_id,
        payload=prepare_payload(payload, truncate=truncate),
    )


# --- reading a header block (the daemon side) ------------------------------------------
#
# One grammar: the 15 lines in order, `name: value\n`, each value as `_VALUES` says.  The
# block is read in one regex match built from it (first with numbers as `header_block`
# writes them, the usual block, then as the grammar allows); a block the match refuses is
# walked line by line (`_refusal`) only to name the first header at fault and why.

_INT_FIELDS = frozenset({H.RECORD_FORMAT_VERSION, H.SEVERITY, H.CREATION_TIMESTAMP, H.PAYLOAD_FORMAT_VERSION})
_NUMBER_DIGITS_MAX = 20
_SEGMENT = "[ -.0-~]"  # printable ASCII except '/'
# A free value: tab or anything but a control character; a non-ASCII one is checked with
# str.isprintable after the match (Unicode's control and format characters).
_FREE = f"[^\x00-\x08\x0a-\x1f\x7f]{{0,{HEADER_VALUE_MAX}}}"
_NUMBER = f"[0-9]{{1,{_NUMBER_DIGITS_MAX}}}"
_PLAIN_NUMBER = f"(?:0|[1-9][0-9]{{0,{_NUMBER_DIGITS_MAX - 1}}})"  # no leading zeros, as header_block writes
_VALUES: dict[str, str] = {
    **{name: _NUMBER for name in _INT_FIELDS},
    H.CLASSIFICATION: f"{_SEGMENT}{{0,{CLASSIFICATION_FIRST_SEGMENT_MAX}}}/{_SEGMENT}{{0,"
                      f"{CLASSIFICATION_SEGMENT_MAX}}}/{_SEGMENT}{{0,{CLASSIFICATION_SEGMENT_MAX}}}",
    H.EVENT_ID: f"[0-9a-f]{{{EVENT_ID_LEN}}}",
}


def _block(number: str) -> re.Pattern[str]:
    """The grammar, with `number` for the numbers' values."""
    return re.compile("".join(f"{name}: ({number if name in _INT_FIELDS else _VALUES.get(name, _FREE)})\n"
                              for name in H.RECORD_HEADERS))


_BLOCK = _block(_NUMBER)
_PLAIN_BLOCK = _block(_PLAIN_NUMBER)  # a match of it also says that no number is padded
_FREE_GROUPS = tuple(i for i, name in enumerate(H.RECORD_HEADERS) if name not in _VALUES)
_INT_GROUPS = tuple(i for i, name in enumerate(H.RECORD_HEADERS) if name in _INT_FIELDS)
_RECORD_FORMAT_VERSION_AT, _CLASSIFICATION_AT, _SEVERITY_AT, _MACHINE_ID_AT, _PAYLOAD_FORMAT_VERSION_AT = map(
    H.RECORD_HEADERS.index,
    (H.RECORD_FORMAT_VERSION, H.CLASSIFICATION, H.SEVERITY, H.MACHINE_ID, H.PAYLOAD_FORMAT_VERSION))


def parse_header_block(block: bytes, payload: bytes = b"") -> Record:
    """The daemon's strict reading of a frame's header block and payload: the Record, or
    RecordError naming the first header (in wire order) that is not as the grammar says."""
    return _record(_read(block, payload)[1], payload)


def read_header_block(block: bytes, payload: bytes, machine_id: str) -> tuple[Record, bytes]:
    """`parse_header_block(block, payload).with_machine_id(machine_id)` and that record's
    `header_block()`, as telemprobd queues them, from one reading of the block.

    The stored block is the block as received with the machine id's value replaced: that
    is what `header_block` renders from the values, unless a number was written with
    leading zeros (such a block is rendered)."""
    m, values = _read(block, payload)
    values[_MACHINE_ID_AT] = machine_id
    record = _record(values, payload)
    if m.re is not _PLAIN_BLOCK:
        return record, record.header_block()
    text = m.string
    start, end = m.span(_MACHINE_ID_AT + 1)
    return record, (text[:start] + machine_id + text[end:]).encode("utf-8")


def _read(block: bytes, payload: bytes) -> tuple[re.Match[str], list]:
    """The grammar's match of the block and the Record's 15 values in wire order (numbers
    as int), or the RecordError `_refusal` names."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    m = (_PLAIN_BLOCK.fullmatch(text) or _BLOCK.fullmatch(text)) if text else None
    if m is None:
        raise _refusal(block)
    values: list = list(m.groups())
    if not text.isascii() and not all(_printable(values[i]) for i in _FREE_GROUPS):
        raise _refusal(block)
    for i in _INT_GROUPS:
        values[i] = int(values[i])
    if (values[_RECORD_FORMAT_VERSION_AT] != RECORD_FORMAT_VERSION
            or not SEVERITY_MIN <= values[_SEVERITY_AT] <= SEVERITY_MAX
            or values[_PAYLOAD_FORMAT_VERSION_AT] > PAYLOAD_FORMAT_VERSION_MAX
            or len(values[_CLASSIFICATION_AT]) > CLASSIFICATION_MAX):
        raise _refusal(block)
    check_payload(payload)
    return m, values


def _record(values: list, payload: bytes) -> Record:
    """Record(...) from `_read`'s values, without the frozen dataclass's __init__: its 16
    object.__setattr__ calls were a microsecond of every record telemprobd reads."""
    record = object.__new__(Record)
    fields = record.__dict__
    # The field names are the header names; `values` has one per header (strict= would add
    # a keyword call's cost).
    fields.update(zip(H.RECORD_HEADERS, values))  # noqa: B905
    fields["payload"] = payload
    return record


def _printable(value: str) -> bool:
    return value.isprintable() or value.replace("\t", " ").isprintable()


def _refusal(block: bytes) -> RecordError:
    """Why `block` is no header block: the first fault, line by line, in wire order."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as e:
        return RecordError("headers", f"header block is not valid UTF-8 (byte {e.start})")
    if not text.endswith("\n"):
        return RecordError("headers", "header block does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) != len(H.RECORD_HEADERS):
        return RecordError("headers", f"expected {len(H.RECORD_HEADERS)} header lines, got {len(lines)}")
    numbers: dict[str, int] = {}
    for name, line in zip(H.RECORD_HEADERS, lines, strict=True):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            got = line.split(":", 1)[0][:40]
            return RecordError(name, f"expected header {name!r}, got {got!r}")
        value = line[len(prefix) :]
        try:
            _check_value(name, value)
        except RecordError as e:
            return e
        if name in _INT_FIELDS:
            if not _DIGITS.fullmatch(value) or len(value) > _NUMBER_DIGITS_MAX:
                return RecordError(name, f"{name} must be a decimal number, got {value[:40]!r}")
            numbers[name] = int(value)
    if numbers[H.RECORD_FORMAT_VERSION] != RECORD_FORMAT_VERSION:
        return RecordError(H.RECORD_FORMAT_VERSION, f"record_format_version must be {RECORD_FORMAT_VERSION}")
    if not SEVERITY_MIN <= numbers[H.SEVERITY] <= SEVERITY_MAX:
        return RecordError(H.SEVERITY, f"severity must be {SEVERITY_MIN}..{SEVERITY_MAX}")
    if numbers[H.PAYLOAD_FORMAT_VERSION] > PAYLOAD_FORMAT_VERSION_MAX:
        return RecordError(H.PAYLOAD_FORMAT_VERSION, "payload_format_version must fit in 32 bits")
    by_name = dict(zip(H.RECORD_HEADERS, lines, strict=True))
    for name, check in ((H.CLASSIFICATION, check_classification), (H.EVENT_ID, check_event_id)):
        try:
            check(by_name[name][len(name) + 2 :])
        except RecordError as e:
            return e
    return RecordError("headers", "header block is not a record")  # the grammar and this walk disagree
