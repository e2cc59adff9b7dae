"""The libtelemetry socket frame, byte for byte, with no I/O.

Layout (all integers uint32 little-endian, which is what the C library writes on x86)::

    record_size   4        length of the whole frame, this field and the final NUL included
    CFG field     4+n+1    optional: b"CFG:", a path, NUL
    header_size   4        length of the header lines
    headers       header_size
    payload       p        raw bytes, no NUL inside
    terminator    1        NUL

`FrameDecoder` is fed bytes as they arrive and yields a `Frame` once one is complete; a
frame that can never become valid raises a `FramingError` subclass naming the problem,
as early as the bytes allow (an oversized size field is refused before its body is read).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import TelemetryError
from .limits import FRAME_MAX, FRAME_MIN, FRAME_SIZE_FIELD, PATH_MAX, PAYLOAD_MAX

_U32 = struct.Struct("<I")  # both size fields (FRAME_SIZE_FIELD bytes): record_size and header_size
CFG_MAGIC = b"CFG:"
_SIZE = FRAME_SIZE_FIELD


class FramingError(TelemetryError):
    """A frame that cannot be decoded; the message names what is wrong."""


class FrameSizeError(FramingError):
    pass


class IncompleteFrame(FramingError):
    pass


class MalformedFrame(FramingError):
    pass


@dataclass(slots=True)
class Frame:
    """One frame read from the socket, not yet parsed into a record.

    Not frozen (never changed once made): telemprobd makes one for every frame, and a frozen
    dataclass's __init__, an object.__setattr__ per field, costs three times as much."""

    header_block: bytes
    payload: bytes
    cfg_path: str | None = None


def encode_frame(header_block: bytes, payload: bytes, cfg_path: str | None = None) -> bytes:
    if b"\0" in payload:
        raise MalformedFrame("payload contains a NUL byte")
    cfg = b""
    if cfg_path is not None:
        path = cfg_path.encode("utf-8")
        if b"\0" in path or len(path) >= PATH_MAX:
            raise MalformedFrame("CFG path contains a NUL byte or is longer than PATH_MAX")
        cfg = CFG_MAGIC + path + b"\0"
    size = _SIZE + len(cfg) + _SIZE + len(header_block) + len(payload) + 1
    if size > FRAME_MAX:
        raise FrameSizeError(f"frame would be {size} bytes; the limit is {FRAME_MAX}")
    return b"".join((_U32.pack(size), cfg, _U32.pack(len(header_block)), header_block, payload, b"\0"))


def frame_size(prefix: bytes) -> int | None:
    """The declared size once its field is complete, checked against the limits."""
    if len(prefix) < _SIZE:
        return None
    (size,) = _U32.unpack_from(prefix)
    if size < FRAME_MIN or size > FRAME_MAX:
        raise FrameSizeError(f"record size {size} outside {FRAME_MIN}..{FRAME_MAX}")
    return size


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one whole frame; trailing bytes beyond record_size are an error."""
    size = frame_size(data)
    if size is None or len(data) < size:
        have = len(data)
        raise IncompleteFrame(f"frame incomplete: have {have} bytes" + (f" of {size}" if size else ""))
    if len(data) > size:
        raise MalformedFrame(f"{len(data) - size} bytes follow the frame")
    if type(data) is not bytes:
        data = bytes(data)  # slices of it are the frame's parts, which are bytes
    pos = _SIZE  # offsets are into `data` from here on: no memoryview, no copy but the parts
    cfg_path = None
    if data.startswith(CFG_MAGIC, _SIZE):
        end = data.find(b"\0", _SIZE + len(CFG_MAGIC), size)
        if end < 0:
            raise MalformedFrame("CFG path is not NUL-terminated")
        raw_path = data[_SIZE + len(CFG_MAGIC):end]
        if not raw_path.startswith(b"/") or len(raw_path) >= PATH_MAX:
            raise MalformedFrame("CFG path must be an absolute path shorter than PATH_MAX")
        try:
            cfg_path = raw_path.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedFrame("CFG path is not valid UTF-8") from None
        pos = end + 1
    if size - pos < _SIZE + 1:
        raise MalformedFrame("frame too short for header_size and terminator")
    (header_size,) = _U32.unpack_from(data, pos)
    pos += _SIZE
    room = size - pos - 1
    if header_size == 0 or header_size > room:
        raise MalformedFrame(f"header_size {header_size} does not fit the {room} bytes left in the frame")
    if data[size - 1] != 0:
        raise MalformedFrame("frame does not end with a NUL terminator")
    header_block = data[pos : pos + header_size]
    payload = data[pos + header_size : size - 1]
    if len(payload) > PAYLOAD_MAX:
        raise MalformedFrame(f"payload is {len(payload)} bytes; the limit is {PAYLOAD_MAX}")
    if b"\0" in header_block:
        raise MalformedFrame("header block contains a NUL byte")
    if b"\0" in payload:
        raise MalformedFrame("payload contains a NUL byte")
    return Frame(header_block, payload, cfg_path)


class FrameDecoder:
    """Incremental: feed bytes, get a Frame when one is complete (one frame per connection)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._size: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def wanted(self) -> int:
        """How many more bytes complete the frame (or the size field)."""
        if self._size is None:
            return _SIZE - len(self._buf)
        return self._size - len(self._buf)

    def feed(self, data: bytes) -> Frame | None:
        if self._size is not None and len(self._buf) + len(data) > self._size:
            raise MalformedFrame("bytes follow the frame on the same connection")
        self._buf += data
        if self._size is None:
            self._size = frame_size(bytes(self._buf[:_SIZE]))
            if self._size is None:
                return None
            if len(self._buf) > self._size:
                raise MalformedFrame("bytes follow the frame on the same connection")
        if len(self._buf) < self._size:
            return None
        return decode_frame(bytes(self._buf))

    def eof(self) -> None:
        """The peer closed: anything buffered is an incomplete frame."""
        if self._buf:
            size = f" of {self._size}" if self._size else ""
            raise IncompleteFrame(f"connection closed after {len(self._buf)} bytes{size}")
