"""The C client's spool file: one record a file, as its telemprobd stages them.

Layout (telemetrics-client 2.4, staged and spooled files alike): an optional
`CFG:<path>\\n` line, the 15 header lines in wire order, then the body, which is the
probe's payload followed by one `\\n` the C telemprobd adds.  Our queue keeps payloads
byte-exact, so that `\\n` is framing here: `read` removes it and `encode` adds it back,
and a record goes C → ours → C unchanged.

Pure: bytes in, values out.  `read` tells three things apart, because the importer
treats them differently: a record; a file that starts like one but is cut short or
broken (`Damaged`: its bytes are kept, never delivered); anything else (`Foreign`: not
ours to touch).
"""

from __future__ import annotations

from dataclasses import dataclass

from telemetry import headers as H
from telemetry.limits import PAYLOAD_MAX
from telemetry.record import Record, RecordError, parse_header_block

CFG_PREFIX = b"CFG:"
CFG_PATH_MAX = 4096  # the C reader's bound on the CFG line
HEADER_LINE_MAX = 4096
# The largest file a C telemprobd can stage: CFG line, 15 header lines, payload and its
# newline.  A larger file is no C record.
FILE_MAX = len(CFG_PREFIX) + CFG_PATH_MAX + 1 + 15 * HEADER_LINE_MAX + PAYLOAD_MAX + 1
_FIRST = H.RECORD_HEADERS[0].encode()


@dataclass(frozen=True)
class CRecord:
    """A record read from a C spool file; `header_block` is the 15 lines as they were."""

    header_block: bytes
    payload: bytes
    cfg_path: str | None
    record: Record

    @property
    def creation_timestamp(self) -> int:
        return self.record.creation_timestamp


@dataclass(frozen=True)
class Damaged:
    """Starts as a C record but is not a whole, valid one; `reason` says what is wrong."""

    reason: str


@dataclass(frozen=True)
class Foreign:
    """Not a C spool file at all."""

    reason: str


def looks_like_c_record(data: bytes) -> bool:
    return data.startswith(CFG_PREFIX) or data.startswith(_FIRST)


def read(data: bytes) -> CRecord | Damaged | Foreign:
    if not looks_like_c_record(data):
        return Foreign("does not start with 'CFG:' or 'record_format_version'")
    if len(data) > FILE_MAX:
        return Foreign(f"{len(data)} bytes, more than a C record file can hold ({FILE_MAX})")
    pos = 0
    cfg_path: str | None = None
    if data.startswith(CFG_PREFIX):
        end = data.find(b"\n")
        if end < 0:
            return Damaged("the CFG: line has no end")
        try:
            cfg_path = data[len(CFG_PREFIX):end].decode("utf-8")
        except UnicodeDecodeError:
            return Damaged("the CFG: path is not valid UTF-8")
        pos = end + 1
    start = pos
    for name in H.RECORD_HEADERS:
        end = data.find(b"\n", pos)
        if end < 0:
            return Damaged(f"cut short before the end of the {name} line")
        if not data.startswith(name.encode(), pos):
            got = data[pos:end].split(b":", 1)[0][:40].decode("utf-8", "replace")
            return Damaged(f"expected header {name!r}, got {got!r}")
        pos = end + 1
    header_block, body = data[start:pos], data[pos:]
    if not body:
        return Damaged("no payload (cut short after the headers)")
    payload = body[:-1] if body.endswith(b"\n") else body
    try:
        record = parse_header_block(header_block, payload)
    except RecordError as e:
        return Damaged(str(e))
    return CRecord(header_block, payload, cfg_path, record)


def encode(header_block: bytes, payload: bytes, cfg_path: str | None = None) -> bytes:
    """The file a C telemprobd would have staged for this record."""
    # A path the C reader could not take back (a line break, too long) is left out: the
    # CFG: field is recorded, never used for delivery.
    usable = cfg_path is not None and "\n" not in cfg_path and len(cfg_path.encode()) <= CFG_PATH_MAX
    cfg = CFG_PREFIX + cfg_path.encode("utf-8") + b"\n" if usable and cfg_path is not None else b""
    return cfg + header_block + payload + b"\n"


def digest(data: bytes) -> str:
    """What identifies a file's content across a crash (import markers)."""
    import hashlib  # only when there is something to import: it maps libcrypto (3 MiB)

    return hashlib.sha256(data).hexdigest()
