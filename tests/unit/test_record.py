"""The Version 4 record: creation rules, the daemon's strict parse, and their agreement."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry.limits import PAYLOAD_MAX
from telemetry.metadata import Metadata
from telemetry.record import (
    PayloadTooLarge,
    RecordError,
    check_classification,
    create_record,
    new_event_id,
    parse_header_block,
    truncate_utf8,
)

MD = Metadata(
    arch="x86_64",
    host_type="QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-3.1",
    build="28790",
    kernel_version="5.0.5-726.native",
    system_name="clear-linux-os",
    board_name="blank|blank",
    cpu_model="Intel(R) Core(TM) i7-7600U CPU @ 2.80GHz",
    bios_version="1.16.1-1",
)
EID = "5de9de8d5f3c6a7d445d75ba01cc3322"


def make(**kw):
    args = dict(classification="org.clearlinux/hello/world", severity=1, payload="hello\n", metadata=MD,
                event_id=EID, now=1554000000)
    args.update(kw)
    return create_record(**args)


def test_headers_in_wire_order_with_original_spelling():
    r = make()
    assert [n for n, _ in r.headers()] == list(H.RECORD_HEADERS)
    assert r.header_block().decode() == (
        "record_format_version: 4\n"
        "classification: org.clearlinux/hello/world\n"
        "severity: 1\n"
        "machine_id: FFFFFFFF\n"
        "creation_timestamp: 1554000000\n"
        "arch: x86_64\n"
        "host_type: QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-3.1\n"
        "build: 28790\n"
        "kernel_version: 5.0.5-726.native\n"
        "payload_format_version: 1\n"
        "system_name: clear-linux-os\n"
        "board_name: blank|blank\n"
        "cpu_model: Intel(R) Core(TM) i7-7600U CPU @ 2.80GHz\n"
        "bios_version: 1.16.1-1\n"
        "event_id: 5de9de8d5f3c6a7d445d75ba01cc3322\n"
    )


@pytest.mark.parametrize(("given_sev", "kept"), [(-5, 1), (0, 1), (1, 1), (3, 3), (4, 4), (5, 4), (2**40, 4)])
def test_severity_is_clamped(given_sev, kept):
    assert make(severity=given_sev).severity == kept


@pytest.mark.parametrize(
    "cls",
    ["a/b/c", "//", "a//", "x" * 41 + "/" + "y" * 40 + "/" + "z" * 39, "org.clearlinux/hello/world"],
)
def test_valid_classifications(cls):
    check_classification(cls)


@pytest.mark.parametrize(
    ("cls", "words"),
    [
        ("", "two '/'"),
        ("a/b", "two '/'"),
        ("a/b/c/d", "two '/'"),
        ("x" * 42 + "/b/c", "segments"),
        ("a/" + "y" * 41 + "/c", "segments"),
        ("a/b/" + "z" * 41, "segments"),
        ("a/b/c\nseverity: 4", "printable"),
        ("a/b/\x7f", "printable"),
        ("a/b/é", "printable"),
    ],
)
def test_invalid_classifications(cls, words):
    with pytest.raises(RecordError, match=words):
        make(classification=cls)


def test_classification_total_limit():
    # 41 + 40 + 40 + 2 slashes = 123 > 122.
    with pytest.raises(RecordError, match="123 bytes; the limit is 122"):
        check_classification("x" * 41 + "/" + "y" * 40 + "/" + "z" * 40)
    check_classification("x" * 40 + "/" + "y" * 40 + "/" + "z" * 40)


def test_event_id_default_is_random_32_hex():
    ids = {new_event_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert re.fullmatch(r"[0-9a-f]{32}", create_record("a/b/c", metadata=MD).event_id)


@pytest.mark.parametrize("bad", ["", "abc", EID.upper(), EID[:-1] + "g", EID + "0"])
def test_event_id_rules(bad):
    with pytest.raises(RecordError, match="event_id"):
        make(event_id=bad)


def test_payload_limits():
    assert make(payload="a" * PAYLOAD_MAX).payload == b"a" * PAYLOAD_MAX
    with pytest.raises(PayloadTooLarge, match="8193 bytes; the limit is 8192"):
        make(payload="a" * (PAYLOAD_MAX + 1))
    cut = make(payload="é" * PAYLOAD_MAX, truncate=True).payload
    assert len(cut) == PAYLOAD_MAX and cut.decode() == "é" * (PAYLOAD_MAX // 2)
    assert make(payload="").payload == b""
    with pytest.raises(RecordError, match="NUL"):
        make(payload="a\0b")
    with pytest.raises(RecordError, match="UTF-8"):
        make(payload=b"\xff\xfe")
    assert make(payload="ünïcødé ✓").payload == "ünïcødé ✓".encode()


def test_payload_format_version_is_uint32():
    assert make(payload_format_version=2**32 - 1).payload_format_version == 2**32 - 1
    with pytest.raises(RecordError, match="payload_format_version"):
        make(payload_format_version=2**32)


def test_parse_accepts_what_create_builds():
    r = make().with_machine_id("6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b")
    assert parse_header_block(r.header_block(), r.payload) == r


def _block(r, **replace):
    lines = []
    for name, value in r.headers():
        lines.append(f"{name}: {replace.get(name, value)}")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(
    ("replace", "words"),
    [
        ({"severity": "0"}, "severity must be 1..4"),
        ({"severity": "5"}, "severity must be 1..4"),
        ({"severity": "two"}, "decimal number"),
        ({"record_format_version": "3"}, "must be 4"),
        ({"creation_timestamp": "-1"}, "decimal number"),
        ({"event_id": ""}, "event_id"),
        ({"classification": "nope"}, "two '/'"),
        ({"cpu_model": "a\tb\x1bc"}, "control character 0x1b"),
        ({"host_type": "x" * 600}, "limit is 512"),
        ({"payload_format_version": str(2**32)}, "32 bits"),
    ],
)
def test_parse_refuses_bad_values(replace, words):
    with pytest.raises(RecordError, match=words):
        parse_header_block(_block(make(), **replace), b"")


def test_parse_refuses_structure_errors():
    good = make().header_block()
    lines = good.split(b"\n")
    with pytest.raises(RecordError, match="expected 15 header lines, got 14"):
        parse_header_block(b"\n".join(lines[:13] + lines[14:]))
    with pytest.raises(RecordError, match="expected header 'severity', got 'machine_id'"):
        parse_header_block(b"\n".join([lines[0], lines[1], lines[3], lines[2]] + lines[4:]))
    with pytest.raises(RecordError, match="got 'severityX'"):
        parse_header_block(good.replace(b"severity: 1", b"severityX: 1"))
    with pytest.raises(RecordError, match="newline"):
        parse_header_block(good[:-1])
    with pytest.raises(RecordError, match="UTF-8"):
        parse_header_block(good.replace(b"blank|blank", b"bl\xffnk"))
    with pytest.raises(RecordError, match="expected 16|expected 15"):
        parse_header_block(good + b"extra: header\n")
    with pytest.raises(RecordError, match="control character 0x0d"):
        parse_header_block(good.replace(b"x86_64", b"x86_64\r"))


def test_truncate_utf8_never_splits():
    assert truncate_utf8("aé".encode(), 2) == b"a"
    assert truncate_utf8(b"abc", 5) == b"abc"
    assert truncate_utf8("a€".encode(), 3) == b"a"
    assert truncate_utf8("a€b".encode(), 4) == "a€".encode()


def test_truncating_does_not_repair_invalid_utf8():
    """Cutting drops only the sequence the cut split; an invalid byte before the cut stays,
    so a long invalid payload is refused like a short one instead of being cleaned."""
    assert truncate_utf8(b"x\xffy" + b"a" * 10, 8) == b"x\xffyaaaaa"
    with pytest.raises(RecordError, match="not valid UTF-8"):
        make(payload=b"x\xffy" + b"a" * PAYLOAD_MAX, truncate=True)


safe_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    max_size=60,
).filter(lambda s: s.isprintable())
segment = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="/"), max_size=40)


@given(
    seg=st.tuples(segment, segment, segment),
    severity=st.integers(-10, 10),
    pfv=st.integers(0, 2**32 - 1),
    payload=st.text(max_size=500).filter(lambda s: "\0" not in s),
    md=st.builds(Metadata, *([safe_text] * 8)),
    now=st.integers(0, 2**40),
)
@settings(max_examples=200)
def test_create_then_parse_roundtrip(seg, severity, pfv, payload, md, now):
    r = create_record("/".join(seg), severity, payload, pfv, metadata=md, now=now)
    assert parse_header_block(r.header_block(), r.payload) == r


def test_real_machine_record_parses():
    r = create_record("org.example/demo/test", 2, "on " + os.uname().nodename)
    assert parse_header_block(r.header_block(), r.payload) == r
