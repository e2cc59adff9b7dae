"""parse_header_block's one-regex fast path must agree with the strict reader on every input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry.record import RecordError, _parse_fast, _parse_strict, parse_header_block

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
def test_fast_path_agrees_on_values(overrides, payload):
    block = build({**BASE, **overrides}, list(H.RECORD_HEADERS))
    assert outcome(parse_header_block, block, payload) == outcome(_parse_strict, block, payload)


@settings(max_examples=500, deadline=None)
@given(st.permutations(list(H.RECORD_HEADERS)), st.integers(min_value=0, max_value=16),
       st.binary(max_size=8), st.integers(min_value=0, max_value=600))
def test_fast_path_agrees_on_structure(order, keep, junk, cut):
    block = build(BASE, order[:keep]) + junk
    block = block[:cut] if cut < len(block) else block
    assert outcome(parse_header_block, block, b"x") == outcome(_parse_strict, block, b"x")


def test_the_usual_record_takes_the_fast_path():
    block = build(BASE, list(H.RECORD_HEADERS))
    assert _parse_fast(block, b"hello") == _parse_strict(block, b"hello")
    assert _parse_fast(block.replace(b"x86_64", "x86_\u00e9".encode()), b"") is None  # non-ASCII: strict reader
