"""check_read_record and read_request_header_block skip what the record grammar already
keeps; for every record parse_header_block accepts they must answer exactly as check_record
(the message included) and request_header_block (byte for byte)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import contract, limits
from telemetry import headers as H
from telemetry.contract import (
    check_read_record,
    check_record,
    read_request_header_block,
    request_header_block,
)
from telemetry.record import RecordError, parse_header_block

BASE = {
    H.RECORD_FORMAT_VERSION: "4", H.CLASSIFICATION: "org.example/fast/path", H.SEVERITY: "2",
    H.MACHINE_ID: "FFFFFFFF", H.CREATION_TIMESTAMP: "1700000000", H.ARCH: "x86_64",
    H.HOST_TYPE: "LENOVO|20L8S2N800|ThinkPad T480s", H.BUILD: "41000", H.KERNEL_VERSION: "6.6.1-1.native",
    H.PAYLOAD_FORMAT_VERSION: "1", H.SYSTEM_NAME: "clear-linux-os", H.BOARD_NAME: "blank|blank",
    H.CPU_MODEL: "Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", H.BIOS_VERSION: "N22ET37W (1.14 )",
    H.EVENT_ID: "0123456789abcdef0123456789abcdef",
}
ODD = {
    H.CLASSIFICATION: ["a/b/c", "//", " a/b/c ", "x" * 41 + "/" + "y" * 40 + "/" + "z" * 40],
    H.SEVERITY: ["1", "4", "04", "0004"],
    H.CREATION_TIMESTAMP: ["0", "253402300799", "253402300800", "99999999999999999999", "000253402300799"],
    H.ARCH: ["riscv64", "ppc64le", "aarch64", " x86_64", "x86_64\t", ""],
    H.HOST_TYPE: ["h" * 249, "h" * 250, " " + "h" * 249, "", " "],
    H.BUILD: ["12 3", "12a", "'41000'", "\"\"", "1" * 200, "12.5-rc_1", "bookworm/sid", " 7 "],
    H.KERNEL_VERSION: ["6.1", "x.1.2", "6.1.0-18-amd64", " 6.1.2", "6.1." + "x" * 250],
    H.PAYLOAD_FORMAT_VERSION: ["0", "2147483646", "2147483647", "4294967295", "01"],
    H.SYSTEM_NAME: ["debian", "'clear-linux-os'", "\"" * 300, "s" * 250, ""],
    H.BOARD_NAME: ["b" * 199, "b" * 200, "Ïntel", "tab\there", ""],
    H.BIOS_VERSION: ["v\u2028", "v" * 200, "1.0 ", " \t"],
    H.CPU_MODEL: ["c\u00e9", "c" * 199, "\t", "100%", "%s", "%(x)s %%"],
}
machine_ids = st.one_of(st.sampled_from(["a" * 32, "m" * 33, " " + "m" * 32, "m" * 32 + "\t", "", " ", "%s",
                                         "\u00e9" * 32]),
                        st.text(max_size=40))
field_values = st.one_of(
    *(st.tuples(st.just(name), st.sampled_from(choices)) for name, choices in ODD.items()),
    st.tuples(st.sampled_from(sorted(ODD)), st.text(max_size=30)),
)


def test_the_grammar_keeps_the_rules_that_are_skipped():
    assert limits.CLASSIFICATION_MAX <= contract.TEXT_MAX
    assert range(limits.SEVERITY_MIN, limits.SEVERITY_MAX + 1) == contract.SEVERITY_RANGE
    assert limits.EVENT_ID_LEN == contract.EVENT_ID_LEN
    assert limits.RECORD_FORMAT_VERSION in contract.RECORD_FORMAT_VERSIONS


@settings(max_examples=1500, deadline=None)
@given(st.lists(field_values, max_size=4), machine_ids)
def test_a_read_record_is_judged_and_written_as_the_plain_functions_do(changes, machine_id):
    block = "".join(f"{n}: {v}\n" for n, v in {**BASE, **dict(changes)}.items()).encode()
    try:
        record = parse_header_block(block, b"payload").with_machine_id(machine_id)
    except RecordError:
        return
    assert check_read_record(record) == check_record(record)
    assert read_request_header_block(record) == request_header_block(record)


def test_a_usual_record_passes_and_a_bad_one_is_named():
    block = "".join(f"{n}: {v}\n" for n, v in BASE.items()).encode()
    record = parse_header_block(block, b"").with_machine_id("a" * 32)
    assert check_read_record(record) is None
    v = check_read_record(record.with_machine_id("m" * 33))
    assert v is not None and v.field == H.MACHINE_ID and "Machine id value is invalid" in v.message
