"""The ingestion rules (collector-contract.md §4), one valid and one invalid value each, in order."""

from __future__ import annotations

import re
from types import MappingProxyType

import pytest
from collector_support import TID, VALID, record_fields
from hypothesis import given
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry_collector.model import NOT_APPLICABLE, StoredRecord, to_json
from telemetry_collector.rules import (
    ARCHITECTURES,
    Rejected,
    Rule,
    Submission,
    required_headers,
    validate,
)

NOW = 1_700_000_000


def sub(fields: dict[str, str] | None = None, *, tid: str | None = TID, payload: str = "hello\n",
        external: str | None = None, record_id: str | None = None, defect: Rejected | None = None) -> Submission:
    return Submission(fields=MappingProxyType(VALID if fields is None else fields), payload=payload, tid=tid,
                      external=external, record_id=record_id, defect=defect)


def check(fields: dict[str, str] | None = None, **kw):
    return validate(sub(fields, **kw), {TID}, NOW)


def refused(fields: dict[str, str] | None = None, **kw) -> Rejected:
    with pytest.raises(Rejected) as info:
        check(fields, **kw)
    return info.value


def test_valid_version_4_record_is_stored_as_sent():
    rec = check()
    assert rec.record_format_version == 4 and rec.severity == 1
    assert rec.classification == VALID[H.CLASSIFICATION]
    assert rec.ts_capture == 1554000000 and rec.ts_reception == NOW
    assert rec.event_id == VALID[H.EVENT_ID] and rec.board_name == VALID[H.BOARD_NAME]
    assert rec.payload == "hello\n" and rec.external is False and rec.record_id is None


# --- 1: TID -------------------------------------------------------------------------

@pytest.mark.parametrize("tid", [None, "", TID.upper(), TID + " ", "0" * 36])
def test_tid_must_match_exactly(tid):
    r = refused(tid=tid)
    assert (r.rule, r.message, r.status) == (Rule.TID, "Telemetry ID mismatch", 400)


def test_tid_is_checked_before_anything_else():
    assert refused({}, tid="wrong").rule is Rule.TID
    defect = Rejected(Rule.MALFORMED, "broken")
    assert refused(tid="wrong", defect=defect).rule is Rule.TID
    assert refused(defect=defect) is defect


def test_any_configured_tid_is_accepted():
    assert validate(sub(tid="second"), {TID, "second"}, NOW).severity == 1


# --- 2: Record-Format-Version ---------------------------------------------------------

@pytest.mark.parametrize("value", ["1", "2", "3", "4", "04"])
def test_record_format_version_valid(value):
    fields = record_fields(**{H.RECORD_FORMAT_VERSION: value})
    assert check(fields).record_format_version == int(value)


@pytest.mark.parametrize("value", [None, "", "0", "5", "abc", "\u00b2", "+4", "-4", " 4", "4.0", "1_0"])
def test_record_format_version_invalid(value):
    r = refused(record_fields(**{H.RECORD_FORMAT_VERSION: value}))
    assert (r.rule, r.message) == (Rule.RECORD_FORMAT_VERSION, "Record-Format-Version is invalid")


def test_leading_zero_version_gets_every_version_4_check():
    """The reference compared '04' as a string and skipped steps 3, 11 and 12 (§11.3)."""
    r = refused(record_fields(**{H.RECORD_FORMAT_VERSION: "04", H.EVENT_ID: None}))
    assert r.message == "Record-Format-Version headers are invalid, Event-Id missing"
    r = refused(record_fields(**{H.RECORD_FORMAT_VERSION: "04", H.EVENT_ID: "x"}))
    assert r.rule is Rule.EVENT_ID


# --- 3: presence ------------------------------------------------------------------

_KEY_OF = {
    "Arch": H.ARCH, "Build": H.BUILD, "Creation-Timestamp": H.CREATION_TIMESTAMP,
    "Classification": H.CLASSIFICATION, "Host-Type": H.HOST_TYPE, "Kernel-Version": H.KERNEL_VERSION,
    "Machine-Id": H.MACHINE_ID, "Severity": H.SEVERITY, "Payload-Format-Version": H.PAYLOAD_FORMAT_VERSION,
    "System-Name": H.SYSTEM_NAME, "Board-Name": H.BOARD_NAME, "Bios-Version": H.BIOS_VERSION,
    "Cpu-Model": H.CPU_MODEL, "Event-Id": H.EVENT_ID,
}


def test_required_headers_grow_with_the_version():
    v1 = required_headers(1)
    assert v1[-3:] == ("Payload-Format-Version", "System-Name", "X-Telemetry-Tid")
    assert required_headers(2) == v1
    assert required_headers(3) == v1 + ("Board-Name", "Bios-Version", "Cpu-Model")
    assert required_headers(4) == required_headers(3) + ("Event-Id",)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_each_required_header_missing_is_named(version):
    for name in required_headers(version):
        if name in ("Record-Format-Version", "X-Telemetry-Tid"):
            continue
        fields = record_fields(**{H.RECORD_FORMAT_VERSION: str(version), _KEY_OF[name]: None})
        r = refused(fields)
        assert (r.rule, r.message) == (Rule.PRESENCE, f"Record-Format-Version headers are invalid, {name} missing")


def test_first_missing_header_in_rule_order_is_reported():
    r = refused(record_fields(**{H.EVENT_ID: None, H.SEVERITY: None, H.BUILD: None}))
    assert r.message == "Record-Format-Version headers are invalid, Build missing"


def test_missing_system_name_is_a_400_not_a_500():
    """The reference crashed (500) on a v1 record without System-Name (§11.4)."""
    r = refused(record_fields(**{H.RECORD_FORMAT_VERSION: "1", H.SYSTEM_NAME: None}))
    assert r.message == "Record-Format-Version headers are invalid, System-Name missing"


def test_older_versions_ignore_and_do_not_store_newer_fields():
    v2 = check(record_fields(**{H.RECORD_FORMAT_VERSION: "2", H.BOARD_NAME: "\u00e9", H.EVENT_ID: "bad"}))
    assert (v2.board_name, v2.cpu_model, v2.bios_version, v2.event_id) == (NOT_APPLICABLE,) * 4
    v3 = check(record_fields(**{H.RECORD_FORMAT_VERSION: "3", H.EVENT_ID: None}))
    assert v3.event_id == NOT_APPLICABLE and v3.board_name == VALID[H.BOARD_NAME]
    v1 = check(record_fields(**{H.RECORD_FORMAT_VERSION: "1", H.BOARD_NAME: None, H.CPU_MODEL: None,
                                H.BIOS_VERSION: None, H.EVENT_ID: None}))
    assert v1.record_format_version == 1


# --- 4-16: field by field ---------------------------------------------------------

CASES = [
    # (field, valid values, invalid values, rule, message)
    (H.SEVERITY, ["1", "2", "3", "4", "04"], ["0", "5", "-1", "\u00b2", "1.0", "", "+1", "a"],
     Rule.SEVERITY, "severity value is out of range"),
    (H.CLASSIFICATION, ["a/b/c", "//", "org.clearlinux/crash/clr", "a/" + "b" * 245 + "/c"],
     ["a/b", "a/b/c/d", "", "abc", "a/" + "b" * 246 + "/c"], Rule.CLASSIFICATION, "Classification value is invalid"),
    (H.MACHINE_ID, ["", "0", "x" * 32, "FFFFFFFF"], ["x" * 33], Rule.MACHINE_ID, "Machine id value is invalid"),
    (H.CREATION_TIMESTAMP, ["0", "1554000000", "253402300799", "0001"],
     ["-1", "1.5", "", "\u00b2", "253402300800", "1" + "0" * 17, " 1", "+1"], Rule.TIMESTAMP, "timestamp is invalid"),
    (H.ARCH, sorted(ARCHITECTURES), ["X86_64", "unknown", "", "x86-64", "mips"], Rule.ARCH, "architecture is invalid"),
    (H.HOST_TYPE, ["", "blank|blank|blank", "h" * 249], ["h" * 250], Rule.HOST_TYPE, "host type is invalid"),
    (H.KERNEL_VERSION, ["6.1.0-18-amd64", "5.0.5-726.native", "6.1.", "10.20.30"],
     ["6.1", "6", "", "a.1.0", "6.b.0", "6..0", ".1.0", "\u00b2.1.0", "6.1." + "x" * 250], Rule.KERNEL_VERSION,
     "kernel version is invalid"),
    (H.BOARD_NAME, ["", "blank|blank", "b" * 199, "a\tb"], ["b" * 200, "\u00e9", "caf\u00e9"], Rule.BOARD_NAME,
     "board name is invalid"),
    (H.CPU_MODEL, ["Intel(R) Core(TM) i7", "c" * 199], ["c" * 200, "\u00b5"], Rule.CPU_MODEL, "cpu model is invalid"),
    (H.BIOS_VERSION, ["1.16.1-1", "N22ET37W (1.14 )"], ["v" * 200, "\u2122"], Rule.BIOS_VERSION,
     "BIOS version is invalid"),
    (H.EVENT_ID, ["0123456789abcdef0123456789abcdef"],
     ["0123456789ABCDEF0123456789ABCDEF", "0" * 31, "0" * 33, "g" * 32, ""], Rule.EVENT_ID, "Event id is invalid"),
    (H.PAYLOAD_FORMAT_VERSION, ["0", "1", "2147483646", "007"], ["2147483647", "9" * 30], Rule.PAYLOAD_FORMAT_VERSION,
     "Payload format version outside of range supported"),
]


@pytest.mark.parametrize(("field", "good", "bad", "rule", "message"), CASES, ids=[c[0] for c in CASES])
def test_field_rule(field, good, bad, rule, message):
    for value in good:
        check(record_fields(**{field: value}))
    for value in bad:
        r = refused(record_fields(**{field: value}))
        assert (r.rule, r.message, r.status) == (rule, message, 400), value


@pytest.mark.parametrize("value", ["abc", "-1", "+7", " 7", "1_000", "", "\u00b2"])
def test_payload_format_version_not_a_number(value):
    r = refused(record_fields(**{H.PAYLOAD_FORMAT_VERSION: value}))
    assert r.rule is Rule.PAYLOAD_FORMAT_VERSION
    assert r.message == f"Error parsing payload_format_version, invalid literal for int() with base 10: {value!r}"


def test_system_name_quotes_are_removed_and_length_bounded():
    assert check(record_fields(**{H.SYSTEM_NAME: "\"clear-linux-os\""})).system_name == "clear-linux-os"
    assert check(record_fields(**{H.SYSTEM_NAME: "'debian'", H.BUILD: "12"})).system_name == "debian"
    r = refused(record_fields(**{H.SYSTEM_NAME: "s" * 250}))
    assert (r.rule, r.message) == (Rule.SYSTEM_NAME, "system name is invalid")


@pytest.mark.parametrize(("system", "build", "stored"), [
    ("clear-linux-os", "28790", "28790"),
    ("clear-linux-os", "\"12\"", "12"),
    ("debian", "12.04-beta_1", "12.04-beta_1"),
    ("debian", "'bookworm'", "bookworm"),
    ("debian", "b" * 199, "b" * 199),
])
def test_build_valid(system, build, stored):
    assert check(record_fields(**{H.SYSTEM_NAME: system, H.BUILD: build})).build == stored


@pytest.mark.parametrize(("system", "build", "message"), [
    ("clear-linux-os", "12a", "Clear Linux OS build version has invalid characters"),
    ("clear-linux-os", "12.1", "Clear Linux OS build version has invalid characters"),
    ("clear-linux-os", "", "Clear Linux OS build version has invalid characters"),
    ("debian", "12 3", "Build version has invalid characters"),
    ("debian", "", "Build version has invalid characters"),
    ("debian", "12\n", "Build version has invalid characters"),
    ("debian", "b" * 200, "Build version is too long"),
])
def test_build_invalid(system, build, message):
    r = refused(record_fields(**{H.SYSTEM_NAME: system, H.BUILD: build}))
    assert (r.rule, r.message) == (Rule.BUILD, message)


@pytest.mark.parametrize(("value", "external"), [("true", True), ("TRUE", False), ("1", False), (None, False)])
def test_external_is_exactly_true(value, external):
    assert check(external=value).external is external


@pytest.mark.parametrize("record_id", ["0123456789abcdef0123456789abcdef", "a", "A-b_c.9", "x" * 64])
def test_record_id_valid(record_id):
    assert check(record_id=record_id).record_id == record_id


@pytest.mark.parametrize("record_id", ["", "x" * 65, "a b", "a/b", "\u00e9"])
def test_record_id_invalid(record_id):
    r = refused(record_id=record_id)
    assert (r.rule, r.message) == (Rule.RECORD_ID, "X-Telemetry-Record-Id is invalid")


def test_nul_in_payload_is_refused_not_a_500():
    r = refused(payload="a\0b")
    assert (r.rule, r.message) == (Rule.PAYLOAD, "payload contains a NUL byte")


def test_nul_in_a_field_is_refused():
    r = refused(record_fields(**{H.HOST_TYPE: "a\0b"}))
    assert (r.rule, r.message) == (Rule.MALFORMED, "Host-Type contains a NUL character")


def test_rules_run_in_the_reference_order():
    """With everything wrong, each fix reveals the next rule, in the contract's order."""
    bad = {
        H.SEVERITY: "9", H.CLASSIFICATION: "x", H.MACHINE_ID: "m" * 40, H.CREATION_TIMESTAMP: "now",
        H.ARCH: "vax", H.HOST_TYPE: "h" * 300, H.KERNEL_VERSION: "6", H.BOARD_NAME: "\u00e9",
        H.CPU_MODEL: "\u00e9", H.BIOS_VERSION: "\u00e9", H.EVENT_ID: "E", H.SYSTEM_NAME: "s" * 300,
        H.BUILD: "a b", H.PAYLOAD_FORMAT_VERSION: "x",
    }
    expected = [Rule.SEVERITY, Rule.CLASSIFICATION, Rule.MACHINE_ID, Rule.TIMESTAMP, Rule.ARCH, Rule.HOST_TYPE,
                Rule.KERNEL_VERSION, Rule.BOARD_NAME, Rule.CPU_MODEL, Rule.BIOS_VERSION, Rule.EVENT_ID,
                Rule.SYSTEM_NAME, Rule.BUILD, Rule.PAYLOAD_FORMAT_VERSION]
    fields = record_fields(**bad)
    seen = []
    for _ in expected:
        r = refused(fields, record_id="bad id", payload="\0")
        seen.append(r.rule)
        key = H.CREATION_TIMESTAMP if r.rule is Rule.TIMESTAMP else r.rule.value
        fields[key] = VALID[key]
    assert seen == expected
    assert refused(fields, record_id="bad id", payload="\0").rule is Rule.RECORD_ID
    assert refused(fields, payload="\0").rule is Rule.PAYLOAD


# --- properties -----------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=40)
_values = st.one_of(_text, st.sampled_from(list(VALID.values())), st.from_regex(r"[0-9]{1,25}", fullmatch=True))


@given(st.dictionaries(st.sampled_from(H.RECORD_HEADERS), _values), _text, st.one_of(st.none(), _text))
def test_any_submission_is_stored_or_refused_with_a_rule(fields, payload, record_id):
    """Never an unexpected exception, and whatever passes can be rendered (no commit-then-500)."""
    merged = {**VALID, **fields}
    try:
        rec = validate(sub(merged, payload=payload, record_id=record_id), {TID}, NOW)
    except Rejected as r:
        assert r.status == 400 and r.message and isinstance(r.rule, Rule)
        return
    to_json(StoredRecord(id=1, record=rec).as_json_dict())


@given(st.text(st.characters(exclude_characters="\0"), max_size=6))
def test_severity_is_ascii_digits_one_to_four(value):
    expected = re.fullmatch(r"[0-9]+", value) is not None and 1 <= int(value) <= 4
    try:
        check(record_fields(**{H.SEVERITY: value}))
        accepted = True
    except Rejected as r:
        assert r.rule is Rule.SEVERITY
        accepted = False
    assert accepted is expected


@given(st.integers(min_value=0, max_value=10**20))
def test_creation_timestamp_bound(ts):
    try:
        rec = check(record_fields(**{H.CREATION_TIMESTAMP: str(ts)}))
    except Rejected as r:
        assert r.rule is Rule.TIMESTAMP and ts > 253402300799
    else:
        assert rec.ts_capture == ts and ts <= 253402300799


@given(st.text(max_size=8))
def test_board_name_is_python_printable_and_short(value):
    """Rule 11 keeps the reference's meaning: every character in string.printable."""
    import string

    expected = all(c in string.printable for c in value)
    try:
        check(record_fields(**{H.BOARD_NAME: value}))
        accepted = True
    except Rejected as r:
        assert r.rule in (Rule.BOARD_NAME, Rule.MALFORMED)
        accepted = False
    assert accepted is expected
