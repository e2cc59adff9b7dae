"""parse_header_block reads a block in one match of its grammar; on every input it must
agree with a plain line-by-line reading of the same rules, refusals and their messages
included.  `strict_reading` below is that reading, kept here as the oracle.
read_header_block (telemprobd's reading: the machine id written in, the stored block taken
from the block as received) must agree with parse_header_block, with_machine_id and
header_block called one after the other."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry.limits import (
    PAYLOAD_FORMAT_VERSION_MAX,
    RECORD_FORMAT_VERSION,
    SEVERITY_MAX,
    SEVERITY_MIN,
)
from telemetry.record import (
    Record,
    RecordError,
    _check_value,
    check_classification,
    check_event_id,
    check_payload,
    parse_header_block,
    read_header_block,
)

INT_FIELDS = {H.RECORD_FORMAT_VERSION, H.SEVERITY, H.CREATION_TIMESTAMP, H.PAYLOAD_FORMAT_VERSION}
DIGITS = re.compile(r"[0-9]+")


def strict_reading(block: bytes, payload: bytes) -> Record:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError("headers", f"header block is not valid UTF-8 (byte {e.start})") from None
    if not text.endswith("\n"):
        raise RecordError("headers", "header block does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) != len(H.RECORD_HEADERS):
        raise RecordError("headers", f"expected {len(H.RECORD_HEADERS)} header lines, got {len(lines)}")
    values: dict[str, object] = {}
    for name, line in zip(H.RECORD_HEADERS, lines, strict=True):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            got = line.split(":", 1)[0][:40]
            raise RecordError(name, f"expected header {name!r}, got {got!r}")
        value = line[len(prefix):]
        _check_value(name, value)
        if name in INT_FIELDS:
            if not DIGITS.fullmatch(value) or len(value) > 20:
                raise RecordError(name, f"{name} must be a decimal number, got {value[:40]!r}")
            values[name] = int(value)
        else:
            values[name] = value
    if values[H.RECORD_FORMAT_VERSION] != RECORD_FORMAT_VERSION:
        raise RecordError(H.RECORD_FORMAT_VERSION, f"record_format_version must be {RECORD_FORMAT_VERSION}")
    if not SEVERITY_MIN <= values[H.SEVERITY] <= SEVERITY_MAX:  # type: ignore[operator]
        raise RecordError(H.SEVERITY, f"severity must be {SEVERITY_MIN}..{SEVERITY_MAX}")
    if values[H.PAYLOAD_FORMAT_VERSION] > PAYLOAD_FORMAT_VERSION_MAX:  # type: ignore[operator]
        raise RecordError(H.PAYLOAD_FORMAT_VERSION, "payload_format_version must fit in 32 bits")
    check_classification(values[H.CLASSIFICATION])  # type: ignore[arg-type]
    check_event_id(values[H.EVENT_ID])  # type: ignore[arg-type]
    check_payload(payload)
    return Record(payload=payload, **values)  # type: ignore[arg-type]


BASE = {
    H.RECORD_FORMAT_VERSION: "4",
    H.CLASSIFICATION: "org.example/fast/path",
    H.SEVERITY: "2",
    H.MACHINE_ID: "FFFFFFFF",
    H.CREATION_TIMESTAMP: "1700000000",
    H.ARCH: "x86_64",
    H.HOST_TYPE: "LENOVO|20L8S2N800|ThinkPad T480s",
    H.BUILD: "41000",
    H.KERNEL_VERSION: "6.6.1-1.native",
    H.PAYLOAD_FORMAT_VERSION: "1",
    H.SYSTEM_NAME: "clear-linux-os",
    H.BOARD_NAME: "blank|blank",
    H.CPU_MODEL: "Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz",
    H.BIOS_VERSION: "N22ET37W (1.14 )",
    H.EVENT_ID: "0123456789abcdef0123456789abcdef",
}

tricky = st.sampled_from([
    "", "4", "04", "0", "5", "1", "+1", "-1", " 2", "4294967295", "4294967296", "99999999999999999999",
    "999999999999999999999", "a/b/c", "a//", "//", "a/b", "a/b/c/d", "x" * 41 + "/b/c", "x" * 42 + "/b/c",
    "a/" + "y" * 40 + "/c", "a/" + "y" * 41 + "/c", "x" * 41 + "/" + "y" * 40 + "/" + "z" * 40,
    "tab\there", "a\tb/c/d", "é/b/c", "0123456789abcdef0123456789abcdeF", "0123456789abcdef0123456789abcde",
    "x" * 512, "x" * 513, "FFFFFFFF", "caf\u00e9", "\u2028", "\x7f", "\x00", "\x1b[0m", "a:b", "a\rb",
    "\u00ad", "\x85", "é" * 512, "é" * 513, "\tcafé\t",
])
text = st.text(st.characters(min_codepoint=0, max_codepoint=0x3000), max_size=40)
values = st.one_of(tricky, text, st.from_regex(r"[0-9a-f/ .\t-]{0,40}", fullmatch=True))


def outcome(parse, block: bytes, payload: bytes):
    try:
        return parse(block, payload)
    except RecordError as e:
        return ("error", e.field, str(e))


def build(values: dict[str, str], order: list[str]) -> bytes:
    return "".join(f"{name}: {values[name]}\n" for name in order).encode("utf-8", "surrogatepass")


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.sampled_from(H.RECORD_HEADERS), values, max_size=4),
       st.one_of(st.just(b"payload"), st.binary(max_size=20)))
def test_the_parser_agrees_on_values(overrides, payload):
    block = build({**BASE, **overrides}, list(H.RECORD_HEADERS))
    assert outcome(parse_header_block, block, payload) == outcome(strict_reading, block, payload)


@settings(max_examples=500, deadline=None)
@given(st.permutations(list(H.RECORD_HEADERS)), st.integers(min_value=0, max_value=16),
       st.binary(max_size=8), st.integers(min_value=0, max_value=600))
def test_the_parser_agrees_on_structure(order, keep, junk, cut):
    block = build(BASE, order[:keep]) + junk
    block = block[:cut] if cut < len(block) else block
    assert outcome(parse_header_block, block, b"x") == outcome(strict_reading, block, b"x")


def test_the_usual_record_and_a_non_ascii_one_are_read_alike():
    block = build(BASE, list(H.RECORD_HEADERS))
    assert parse_header_block(block, b"hello") == strict_reading(block, b"hello")
    other = block.replace(b"x86_64", "x86_\u00e9".encode())
    assert parse_header_block(other, b"") == strict_reading(other, b"")


def stamped(block: bytes, payload: bytes, machine_id: str):
    record = parse_header_block(block, payload).with_machine_id(machine_id)
    return record, record.header_block()


machine_ids = st.one_of(st.sampled_from(["a" * 32, "FFFFFFFF", "", " ", ": 0", "caf\u00e9", "x" * 40]),
                        st.text(max_size=40))
numbers = st.one_of(st.sampled_from(["0", "00", "04", "4", "02", "007", "0000000000000000000001"]),
                    st.from_regex(r"0{0,3}[0-9]{1,12}", fullmatch=True))


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.sampled_from(H.RECORD_HEADERS), values, max_size=4),
       st.dictionaries(st.sampled_from(sorted(INT_FIELDS)), numbers, max_size=2),
       st.one_of(st.just(b"payload"), st.binary(max_size=20)), machine_ids)
def test_telemprobds_reading_agrees(overrides, numbers_written, payload, machine_id):
    block = build({**BASE, **overrides, **numbers_written}, list(H.RECORD_HEADERS))
    assert outcome(lambda b, p: read_header_block(b, p, machine_id), block, payload) == \
        outcome(lambda b, p: stamped(b, p, machine_id), block, payload)


def test_numbers_with_leading_zeros_are_stored_as_numbers():
    block = build({**BASE, H.SEVERITY: "02", H.CREATION_TIMESTAMP: "0017"}, list(H.RECORD_HEADERS))
    record, stored = read_header_block(block, b"", "m" * 32)
    assert b"severity: 2\n" in stored and b"creation_timestamp: 17\n" in stored
    assert (record, stored) == stamped(block, b"", "m" * 32)
