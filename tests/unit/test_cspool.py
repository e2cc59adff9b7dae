"""The C client's spool file and text journal, read and written (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from telemetry.daemons.store import cjournal, cspool
from telemetry.daemons.store.journal import Outcome

NAMES = ("record_format_version", "classification", "severity", "machine_id", "creation_timestamp", "arch",
         "host_type", "build", "kernel_version", "payload_format_version", "system_name", "board_name",
         "cpu_model", "bios_version", "event_id")


def c_file(payload: bytes = b"hello", cfg: bytes | None = None, **override: str) -> bytes:
    """A staged file as spec/wire-and-records.md section 5 lays it out."""
    values = dict(zip(NAMES, ("4", "org.example/c/spool", "2", "0123456789abcdef0123456789abcdef", "1700000000",
                              "x86_64", "no_sv_file|no_pn_file|no_pvr_file", "41000", "6.6.1-1.native", "1",
                              "clear-linux-os", "no_bn_file|no_bv_file", "blank", "no_bv_file",
                              "0123456789abcdef0123456789abcdef"), strict=True))
    values.update(override)
    head = b"CFG:" + cfg + b"\n" if cfg is not None else b""
    return head + b"".join(f"{n}: {values[n]}\n".encode() for n in NAMES) + payload + b"\n"


def test_a_staged_file_is_read_with_its_cfg_line_and_without_the_newline_telemprobd_added():
    r = cspool.read(c_file(b"hello", cfg=b"/etc/t.conf"))
    assert isinstance(r, cspool.CRecord)
    assert r.payload == b"hello" and r.cfg_path == "/etc/t.conf"
    assert r.header_block.startswith(b"record_format_version: 4\n") and r.header_block.endswith(b"\n")
    assert r.record.creation_timestamp == 1700000000 and r.record.classification == "org.example/c/spool"


def test_the_payload_a_c_probe_sent_with_its_own_newline_keeps_it():
    r = cspool.read(c_file(b"line\n"))
    assert isinstance(r, cspool.CRecord) and r.payload == b"line\n"


def test_an_empty_payload_is_a_record():
    r = cspool.read(c_file(b""))
    assert isinstance(r, cspool.CRecord) and r.payload == b""


def test_files_that_are_no_c_record_are_foreign():
    for data in (b"", b"hello world\n", b"\x7fELF\x02\x01", b"# notes\nrecord_format_version: 4\n"):
        assert isinstance(cspool.read(data), cspool.Foreign), data
    assert isinstance(cspool.read(c_file(b"x" * (cspool.FILE_MAX + 1))), cspool.Foreign)


def test_a_file_cut_after_its_headers_or_inside_them_is_damaged():
    whole = c_file(b"payload")
    body_at = whole.index(b"payload")
    for cut in (body_at, body_at - 1, whole.index(b"event_id"), 40, len("record_format_version")):
        r = cspool.read(whole[:cut])
        assert isinstance(r, cspool.Damaged), cut
    assert "cut short" in cspool.read(whole[:40]).reason


def test_headers_out_of_order_or_invalid_values_are_damaged():
    swapped = c_file().replace(b"severity: 2\n", b"sevority: 2\n")
    assert "severity" in cspool.read(swapped).reason
    assert isinstance(cspool.read(c_file(severity="9")), cspool.Damaged)
    assert isinstance(cspool.read(c_file(cfg=b"\xff\xfe")), cspool.Damaged)


@given(st.binary(max_size=300), st.one_of(st.none(), st.text(max_size=40).filter(lambda s: "\n" not in s)))
def test_encode_then_read_gives_the_record_back(payload_tail, cfg):
    payload = bytes(b for b in payload_tail if 0x20 <= b < 0x7F or 0x09 <= b <= 0x0D)
    staged = c_file(payload)
    r = cspool.read(staged)
    assert isinstance(r, cspool.CRecord)
    again = cspool.encode(r.header_block, r.payload, cfg)
    back = cspool.read(again)
    assert isinstance(back, cspool.CRecord)
    assert (back.header_block, back.payload, back.cfg_path) == (r.header_block, r.payload, cfg)
    if cfg is None:
        assert again == staged  # byte for byte what the C telemprobd wrote


@given(st.binary(max_size=2000))
def test_any_bytes_are_read_without_raising(data):
    assert isinstance(cspool.read(data), cspool.CRecord | cspool.Damaged | cspool.Foreign)
    assert isinstance(cspool.read(b"record_format_version: 4\n" + data), cspool.CRecord | cspool.Damaged)


def test_a_cfg_path_the_c_reader_could_not_take_back_is_left_out():
    block = cspool.read(c_file()).header_block
    assert cspool.encode(block, b"x", "/a\nb").startswith(b"record_format_version")
    assert cspool.encode(block, b"x", "/etc/t.conf").startswith(b"CFG:/etc/t.conf\nrecord_format_version")


RS = "\x1e"


def test_the_c_journal_lines_become_imported_entries_and_bad_lines_are_named():
    good = RS.join(("a19a0d41ba16788881e274b19b8a1be4", "1522691281", "org.clearlinux/hello/world",
                    "5de9de8d5f3c6a7d445d75ba01cc3322", "60c014cd-4693-40f1-b334-548cd932949b"))
    text = "\n".join((good, "not an entry", good.replace("1522691281", "soon"), "")) + "\n"
    parsed = cjournal.parse(text)
    assert parsed.bad_lines == (2, 3)
    (e,) = parsed.entries
    assert (e.record_id, e.timestamp, e.classification, e.event_id, e.boot_id, e.outcome) == (
        "a19a0d41ba16788881e274b19b8a1be4", 1522691281.0, "org.clearlinux/hello/world",
        "5de9de8d5f3c6a7d445d75ba01cc3322", "60c014cd-4693-40f1-b334-548cd932949b", Outcome.IMPORTED)


@given(st.text(max_size=500))
def test_any_journal_text_parses_without_raising(text):
    parsed = cjournal.parse(text)
    assert len(parsed.entries) + len(parsed.bad_lines) <= text.count("\n") + 1
