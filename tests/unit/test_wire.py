"""The libtelemetry frame: golden bytes from the spec, round trips, and hostile bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.limits import FRAME_MAX, PATH_MAX, PAYLOAD_MAX
from telemetry.wire import (
    CFG_MAGIC,
    Frame,
    FrameDecoder,
    FrameSizeError,
    FramingError,
    IncompleteFrame,
    MalformedFrame,
    decode_frame,
    encode_frame,
    frame_size,
)

# spec/wire-and-records.md section 3, "Worked example".
SPEC_HEADERS = b"".join(
    line.encode() + b"\n"
    for line in (
        "record_format_version: 4",
        "classification: org.example/demo/test",
        "severity: 2",
        "machine_id: FFFFFFFF",
        "creation_timestamp: 1700000000",
        "arch: x86_64",
        "host_type: no_sv_file|no_pn_file|no_pvr_file",
        "build: 41000",
        "kernel_version: 6.6.1-1.native",
        "payload_format_version: 1",
        "system_name: clear-linux-os",
        "board_name: no_bn_file|no_bv_file",
        "cpu_model: blank",
        "bios_version: no_bv_file",
        "event_id: 0123456789abcdef0123456789abcdef",
    )
)


def test_golden_frame_matches_the_spec_dump():
    frame = encode_frame(SPEC_HEADERS, b"hello")
    assert len(SPEC_HEADERS) == 402
    assert len(frame) == 416
    assert frame[:16] == bytes.fromhex("a0010000920100007265636f72645f66")
    assert frame[0x10:0x20] == b"ormat_version: 4"
    assert frame[0x16F:0x179] == b"event_id: "
    assert frame[0x190:0x1A0] == bytes.fromhex("373839616263646566 0a 68656c6c6f 00".replace(" ", ""))


def test_golden_frame_with_cfg_field():
    frame = encode_frame(SPEC_HEADERS, b"hello", "/etc/t.conf")
    assert len(frame) == 432
    assert frame[:0x18] == bytes.fromhex("b001000043 46473a2f6574632f742e636f6e6600 92010000".replace(" ", ""))
    assert decode_frame(frame) == Frame(SPEC_HEADERS, b"hello", "/etc/t.conf")


def c_layout(headers: bytes, payload: bytes, cfg: bytes | None = None) -> bytes:
    """The C library's packing, written from the spec independently of encode_frame."""
    cfg_field = b"CFG:" + cfg + b"\0" if cfg is not None else b""
    size = 4 + len(cfg_field) + 4 + len(headers) + len(payload) + 1
    return struct.pack("<I", size) + cfg_field + struct.pack("<I", len(headers)) + headers + payload + b"\0"


@pytest.mark.parametrize("payload", [b"", b"x", b"hello\n" * 100, b"a" * PAYLOAD_MAX])
def test_encoder_equals_the_c_layout(payload):
    assert encode_frame(SPEC_HEADERS, payload) == c_layout(SPEC_HEADERS, payload)
    assert encode_frame(SPEC_HEADERS, payload, "/x.conf") == c_layout(SPEC_HEADERS, payload, b"/x.conf")


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", IncompleteFrame, "incomplete"),
        (b"\x03\x00", IncompleteFrame, "incomplete"),
        (struct.pack("<I", 4), FrameSizeError, "record size 4"),
        (struct.pack("<I", FRAME_MAX + 1), FrameSizeError, "record size 13501"),
        (struct.pack("<I", 0xFFFFFFFF), FrameSizeError, "outside"),
        (c_layout(SPEC_HEADERS, b"hi")[:-3], IncompleteFrame, "of"),
        (c_layout(SPEC_HEADERS, b"hi") + b"x", MalformedFrame, "follow"),
        (c_layout(SPEC_HEADERS, b"hi")[:-1] + b"x", MalformedFrame, "NUL terminator"),
        (c_layout(SPEC_HEADERS, b"h\0i"), MalformedFrame, "payload contains a NUL"),
        (c_layout(SPEC_HEADERS.replace(b"org", b"o\0g"), b"hi"), MalformedFrame, "header block contains a NUL"),
    ],
)
def test_malformed_frames_name_the_problem(data, error, words):
    with pytest.raises(error, match=words):
        decode_frame(data)


def test_header_size_larger_than_the_frame():
    frame = bytearray(c_layout(SPEC_HEADERS, b"hi"))
    frame[4:8] = struct.pack("<I", 5000)
    with pytest.raises(MalformedFrame, match="header_size 5000"):
        decode_frame(bytes(frame))


def test_cfg_path_without_terminator_or_relative():
    size = 4 + 4 + 10
    with pytest.raises(MalformedFrame, match="not NUL-terminated"):
        decode_frame(struct.pack("<I", size) + b"CFG:/abcdefghi")
    with pytest.raises(MalformedFrame, match="absolute"):
        decode_frame(c_layout(SPEC_HEADERS, b"", b"relative.conf"))


def test_payload_over_the_limit_is_refused_by_the_encoder_too():
    with pytest.raises(FramingError):
        encode_frame(SPEC_HEADERS, b"a" * (FRAME_MAX))
    with pytest.raises(MalformedFrame):
        encode_frame(SPEC_HEADERS, b"a\0")


def test_incremental_decoder_byte_by_byte():
    frame = encode_frame(SPEC_HEADERS, b"hello", "/t.conf")
    dec = FrameDecoder()
    out = None
    for i in range(len(frame)):
        assert out is None
        out = dec.feed(frame[i : i + 1])
    assert out == Frame(SPEC_HEADERS, b"hello", "/t.conf")


def test_incremental_decoder_refuses_oversize_before_the_body():
    dec = FrameDecoder()
    with pytest.raises(FrameSizeError):
        dec.feed(struct.pack("<I", 1 << 30))
    dec = FrameDecoder()
    dec.feed(b"\x20")
    with pytest.raises(IncompleteFrame, match="closed after 1 bytes"):
        dec.eof()


header_blocks = st.binary(min_size=1, max_size=2000).filter(lambda b: b"\0" not in b)
payloads = st.binary(max_size=PAYLOAD_MAX).filter(lambda b: b"\0" not in b)
cfgs = st.none() | st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=200
).map(lambda s: "/" + s)


@given(header_blocks, payloads, cfgs)
@settings(max_examples=300)
def test_roundtrip(headers, payload, cfg):
    try:
        frame = encode_frame(headers, payload, cfg)
    except FramingError:
        return
    assert decode_frame(frame) == Frame(headers, payload, cfg)
    dec = FrameDecoder()
    got = None
    for i in range(0, len(frame), 97):
        got = dec.feed(frame[i : i + 97])
    assert got == Frame(headers, payload, cfg)


@given(st.binary(max_size=3000))
@settings(max_examples=1000)
def test_random_bytes_raise_only_the_typed_error(data):
    try:
        decode_frame(data)
    except FramingError:
        pass


@given(st.binary(min_size=1, max_size=2000), st.data())
@settings(max_examples=300)
def test_mutated_frames_raise_only_the_typed_error(mutation, data):
    frame = bytearray(encode_frame(SPEC_HEADERS, b"hello world"))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos : pos + len(mutation)] = mutation[: max(1, len(frame) - pos)]
    try:
        decode_frame(bytes(frame))
    except FramingError:
        pass


def reading_by_views(data: bytes) -> Frame:
    """The frame read through a memoryview of the body, as decode_frame once did: the oracle
    its offsets into the whole frame must agree with, errors and messages included."""
    size = frame_size(data)
    if size is None or len(data) < size:
        have = len(data)
        raise IncompleteFrame(f"frame incomplete: have {have} bytes" + (f" of {size}" if size else ""))
    if len(data) > size:
        raise MalformedFrame(f"{len(data) - size} bytes follow the frame")
    body = memoryview(data)[4:size]
    pos = 0
    cfg_path = None
    if bytes(body[: len(CFG_MAGIC)]) == CFG_MAGIC:
        end = data.find(b"\0", 4 + len(CFG_MAGIC), size)
        if end < 0:
            raise MalformedFrame("CFG path is not NUL-terminated")
        raw_path = data[4 + len(CFG_MAGIC):end]
        if not raw_path.startswith(b"/") or len(raw_path) >= PATH_MAX:
            raise MalformedFrame("CFG path must be an absolute path shorter than PATH_MAX")
        try:
            cfg_path = raw_path.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedFrame("CFG path is not valid UTF-8") from None
        pos = end + 1 - 4
    if len(body) - pos < 4 + 1:
        raise MalformedFrame("frame too short for header_size and terminator")
    (header_size,) = struct.unpack_from("<I", body, pos)
    pos += 4
    room = len(body) - pos - 1
    if header_size == 0 or header_size > room:
        raise MalformedFrame(f"header_size {header_size} does not fit the {room} bytes left in the frame")
    if body[-1] != 0:
        raise MalformedFrame("frame does not end with a NUL terminator")
    header_block = bytes(body[pos : pos + header_size])
    payload = bytes(body[pos + header_size : -1])
    if len(payload) > PAYLOAD_MAX:
        raise MalformedFrame(f"payload is {len(payload)} bytes; the limit is {PAYLOAD_MAX}")
    if b"\0" in header_block:
        raise MalformedFrame("header block contains a NUL byte")
    if b"\0" in payload:
        raise MalformedFrame("payload contains a NUL byte")
    return Frame(header_block, payload, cfg_path)


def decoded(decode, data):
    try:
        return decode(data)
    except FramingError as e:
        return type(e), str(e)


@given(st.binary(min_size=1, max_size=64), st.data(), st.sampled_from([None, "/etc/telemetrics.conf", "rel"]),
       st.booleans())
@settings(max_examples=1000)
def test_the_decoder_agrees_with_reading_by_views(mutation, data, cfg, resize):
    frame = bytearray(encode_frame(SPEC_HEADERS, b"hello world", None if cfg == "rel" else cfg))
    if cfg == "rel":
        frame[4:4] = CFG_MAGIC + b"rel\0"
    if resize:
        struct.pack_into("<I", frame, 0, len(frame))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos : pos + len(mutation)] = mutation[: max(1, len(frame) - pos)]
    if data.draw(st.booleans()):
        struct.pack_into("<I", frame, 0, len(frame))  # the size field agrees, so the body is read
    assert decoded(decode_frame, bytes(frame)) == decoded(reading_by_views, bytes(frame))
    assert decoded(decode_frame, frame) == decoded(reading_by_views, bytes(frame))


@given(st.sampled_from([b"", CFG_MAGIC + b"/c\0", CFG_MAGIC + b"/c", CFG_MAGIC + b"\xff\0", CFG_MAGIC]),
       st.binary(max_size=24), st.integers(0, 30))
@settings(max_examples=1000)
def test_short_frames_are_read_as_by_views(cfg, body, header_size):
    rest = struct.pack("<I", header_size) + body if body[:1] != b"!" else body
    frame = cfg + rest
    frame = struct.pack("<I", len(frame) + 4) + frame
    assert decoded(decode_frame, frame) == decoded(reading_by_views, frame)
