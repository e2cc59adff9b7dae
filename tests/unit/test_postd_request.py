"""Queue rows as HTTP requests (both generations) and the collector-contract check."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry.contract import HEADER_BLOCK_MAX, check_header_block, check_record, first_refusal
from telemetry.daemons.postd.request import RequestFormat, build_request, header_line
from telemetry.metadata import Metadata
from telemetry.record import create_record, parse_header_block

TID = ("X-Telemetry-TID", "6907c830-eed9-4ce9-81ae-76daf8d88f0f")
RID = "0123456789abcdef0123456789abcdef"
MD = Metadata("x86_64", "LENOVO|20L8S2N800|ThinkPad T480s", "38710", "6.1.21-1283.native", "clear-linux-os",
              "blank|blank", "Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", "N22ET37W (1.14 )")
BASE = create_record("org.clearlinux/hello/world", 1, "hello\n", metadata=MD, now=1680000000,
                     event_id="5de9de8d5f3c6a7d445d75ba01cc3322").with_machine_id("6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b")

values = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=0, max_size=60)
payloads = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=300)


def parse_lines(lines: tuple[bytes, ...]) -> list[tuple[str, str]]:
    out = []
    for raw in lines:
        text = raw.decode()
        if text.endswith(";") and ":" not in text:
            out.append((text[:-1], ""))
        else:
            name, _, value = text.partition(": ")
            out.append((name, value))
    return out


def test_header_request_matches_the_collector_contract():
    req = build_request(BASE, RID, RequestFormat.HEADERS, TID)
    pairs = parse_lines(req.headers)
    names = [n for n, _ in pairs]
    assert names[:15] == [H.HTTP_HEADERS[n] for n in H.RECORD_HEADERS]
    assert dict(pairs)["Cpu-Model"] == "Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz"
    assert dict(pairs)["Bios-Version"] == "N22ET37W (1.14 )"
    assert dict(pairs)["X-Telemetry-TID"] == TID[1]
    assert dict(pairs)[H.RECORD_ID_HEADER] == RID
    assert dict(pairs)["Content-Type"] == "application/text"
    assert b"Expect:" in req.headers
    assert len(names) == len(set(names))
    assert req.body == b"hello\n"


def test_json_request_is_the_originals_without_the_space_bug():
    req = build_request(BASE, RID, RequestFormat.JSON, TID)
    assert dict(parse_lines(req.headers))["Content-Type"] == "application/json"
    assert header_line(*TID) in req.headers and header_line(H.RECORD_ID_HEADER, RID) in req.headers
    assert req.body.startswith(b'{"record_format_version":"4","classification":"org.clearlinux/hello/world",')
    doc = json.loads(req.body)
    assert doc["host_type"] == "LENOVO|20L8S2N800|ThinkPad T480s"
    assert doc["bios_version"] == "N22ET37W (1.14 )"
    assert doc["payload"] == "hello\n"
    assert b"\\/" not in req.body


def test_empty_value_is_sent_as_an_empty_header():
    assert header_line("Board-Name", "") == b"Board-Name;"
    assert header_line("Board-Name", "a b") == b"Board-Name: a b"


def as_sent(value: str) -> str:
    """A blank value travels as an empty header (curl would drop `Name: `)."""
    return value if value.strip(" \t") else ""


@given(values, values, values, payloads)
@example(" ", "\t", "  ", "")
def test_values_travel_whole_in_both_formats(host_type, cpu_model, board_name, payload):
    r = dataclasses.replace(BASE, host_type=host_type, cpu_model=cpu_model, board_name=board_name,
                            payload=payload.encode())
    pairs = dict(parse_lines(build_request(r, RID, RequestFormat.HEADERS, TID).headers))
    assert pairs["Host-Type"] == as_sent(host_type)
    assert pairs["Cpu-Model"] == as_sent(cpu_model)
    assert pairs["Board-Name"] == as_sent(board_name)
    doc = json.loads(build_request(r, RID, RequestFormat.JSON, TID).body)
    assert [k for k in doc] == list(H.RECORD_HEADERS) + ["payload"]
    assert doc["host_type"] == host_type and doc["cpu_model"] == cpu_model and doc["payload"] == payload
    assert all(isinstance(v, str) for v in doc.values())


def test_a_staged_row_round_trips_into_the_same_request():
    again = parse_header_block(BASE.header_block(), BASE.payload)
    assert build_request(again, RID, RequestFormat.HEADERS, TID) == build_request(BASE, RID, RequestFormat.HEADERS, TID)


# --- the collector contract -----------------------------------------------------------------


def test_a_normal_record_passes():
    assert check_record(BASE) is None
    assert check_record(dataclasses.replace(BASE, system_name="debian", build="12.5-rc_1")) is None


@pytest.mark.parametrize("field, value, words", [
    ("arch", "riscv64", "architecture is invalid"),
    ("arch", "ppc64le", "architecture is invalid"),
    ("kernel_version", "6.1", "kernel version is invalid"),
    ("kernel_version", "x.1.2", "kernel version is invalid"),
    ("build", "12 3", "Clear Linux OS build version"),
    ("build", "12a", "Clear Linux OS build version"),
    ("host_type", "h" * 250, "host type is invalid"),
    ("board_name", "b" * 200, "board name is invalid"),
    ("cpu_model", "Ïntel", "cpu model is invalid"),
    ("bios_version", "v\x7f", "BIOS version is invalid"),
    ("machine_id", "m" * 33, "Machine id value is invalid"),
    ("payload_format_version", 2147483647, "Payload format version"),
])
def test_what_the_collector_always_refuses(field, value, words):
    v = check_record(dataclasses.replace(BASE, **{field: value}))
    assert v is not None and v.field == field and words in v.message


def test_limits_are_the_collectors():
    assert check_record(dataclasses.replace(BASE, host_type="h" * 249)) is None
    assert check_record(dataclasses.replace(BASE, board_name="b" * 199)) is None
    assert check_record(dataclasses.replace(BASE, cpu_model="tab\there")) is None
    assert check_record(dataclasses.replace(BASE, kernel_version="6.1.0-18-amd64")) is None
    assert check_record(dataclasses.replace(BASE, system_name="debian", build="bookworm/sid")) is not None


def test_header_block_must_fit_the_collectors_buffer():
    small = build_request(BASE, RID, RequestFormat.HEADERS, TID)
    assert check_header_block(small.headers) is None
    # No record within the record model's limits gets near it; the check guards the limits.
    v = check_header_block(small.headers + (b"X-Big: " + b"x" * HEADER_BLOCK_MAX,))
    assert v is not None and str(HEADER_BLOCK_MAX) in v.message


_odd = st.one_of(values, st.sampled_from(["riscv64", "6.1", "12 3", "h" * 250, "m" * 33, "\u00e9", "", "b" * 200]))


@given(st.dictionaries(st.sampled_from([H.ARCH, H.HOST_TYPE, H.KERNEL_VERSION, H.BOARD_NAME, H.CPU_MODEL,
                                        H.BIOS_VERSION, H.SYSTEM_NAME, H.BUILD, H.MACHINE_ID]), _odd, max_size=4),
       st.integers(0, 2**32 - 1), st.integers(0, 10**13))
def test_the_senders_check_is_the_tables_in_its_order(changes, pfv, ts):
    """check_record judges the machine's fields once per set of values; its answer is the
    table's first refusal all the same."""
    r = dataclasses.replace(BASE, payload_format_version=pfv, creation_timestamp=ts, **changes)
    fields = {name: value.strip(" \t") for name, value in r.headers()}
    expected = first_refusal(fields, 4, sender=True)
    got = check_record(r)
    assert (got and got.field) == (expected and expected[0].field)
    if expected:
        assert expected[1] in got.message
