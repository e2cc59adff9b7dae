"""The streaming core reader and the note parsers: pure, so every case runs on bytes."""

from __future__ import annotations

import struct

import pytest
from core_builder import (
    NT_FILE,
    NT_PRSTATUS,
    CoreSpec,
    Load,
    note,
    nt_file,
    prstatus,
    simple_core,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.probes.crash import notes as N
from telemetry.probes.crash.corefile import CoreReader, Memory, ReadLimits, parse_core


def test_reads_threads_notes_and_only_the_needed_memory():
    data, facts = simple_core()
    core = parse_core(data)
    assert core.problems == ()
    assert core.machine == 62
    assert [t.tid for t in core.threads] == [100]
    assert core.threads[0].signal == 11
    assert core.process.pid == 100 and core.process.name == "prog"
    assert core.siginfo.signo == 11
    assert core.aux(9) == 0x401000
    assert core.files == (N.FileMapping(0x400000, 0x402000, 0, "/usr/bin/prog"),)
    # the stack above the stack pointer and the mapped image, never the heap
    assert core.memory.read(facts["sp"], 8) == b"\0" * 8
    assert core.memory.read(0x400000, 4)[:4] == b"\x7fELF"
    assert core.memory.read(facts["heap"], 1) is None
    assert core.pid == 100


def test_gcore_layout_keeps_speculatively_then_prunes():
    data, facts = simple_core(notes_last=True)
    core = parse_core(data)
    assert core.problems == ()
    assert core.memory.read(facts["sp"], 8) == b"\0" * 8
    assert core.memory.read(0x400000, 4) == b"\x7fELF"
    assert core.memory.read(facts["heap"] + 100, 1) is None  # pruned once the notes said what matters


def test_requests_only_move_forward_and_are_bounded():
    data, _ = simple_core(heap_size=1 << 20)
    reader = CoreReader()
    last = 0
    total = 0
    while (req := reader.next_request()) is not None:
        assert req.offset >= last
        assert req.length <= 8 << 20
        last = req.offset + req.length
        total += req.length
        reader.feed(data[req.offset : req.offset + req.length])
    assert total < len(data) // 4  # the heap was skipped


def test_every_truncation_is_a_problem_not_an_exception():
    data, _ = simple_core(stack_size=0x2000, heap_size=0x1000)
    for cut in range(0, len(data), 97):
        core = parse_core(data[:cut])
        assert core.problems, cut
        assert core.bytes_read <= cut


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: b"", "not an ELF core: the input is shorter than an ELF header"),
        (lambda d: b"\x7fELG" + d[4:], "not an ELF core: bad magic"),
        (lambda d: d[:4] + b"\x01" + d[5:], "unsupported core: only 64-bit little-endian cores are read"),
        (lambda d: d[:16] + struct.pack("<H", 2) + d[18:], "not a core file (ELF type 2)"),
        (lambda d: d[:56] + struct.pack("<H", 0xFFFF) + d[58:], "core has more than 65534 segments; not supported"),
        (lambda d: d[:54] + struct.pack("<H", 32) + d[56:], "unexpected program header size 32"),
        (lambda d: d[:32] + struct.pack("<Q", 8) + d[40:], "program headers overlap the ELF header"),
    ],
)
def test_malformed_headers(mutate, problem):
    data, _ = simple_core()
    assert parse_core(mutate(data)).problems[0] == problem


def test_read_limit_stops_before_the_rest():
    data, _ = simple_core(heap_size=1 << 20)
    core = parse_core(data, ReadLimits(max_core_bytes=64 << 10))
    assert any("read limit" in p for p in core.problems)
    assert core.threads  # what came before the limit is kept


def test_memory_budget_is_respected():
    threads = [note(b"CORE", NT_PRSTATUS, prstatus(200 + i, 11, 0x1000, 0x10000000 + i * 0x100000 + 0x1000))
               for i in range(40)]
    loads = [Load(0x10000000 + i * 0x100000, b"\1" * 0x40000) for i in range(40)]
    data = CoreSpec(notes=threads, loads=loads).build()
    limits = ReadLimits(max_kept_bytes=1 << 20)
    core = parse_core(data, limits)
    assert len(core.threads) == 40
    assert len(core.memory) <= limits.max_kept_bytes
    assert any("budget" in p for p in core.remarks)
    assert not core.problems  # a budget spent is a remark, not an error


def test_budget_goes_to_the_crashing_thread_first():
    """The thread that took the signal comes first in the notes; its stack is kept whole
    even when it is last in the file and the budget cannot hold every stack."""
    n = 40
    sps = [0x10000000 + i * 0x100000 + 0x1000 for i in range(n)]
    order = [n - 1] + list(range(n - 1))  # the crashing thread's stack is the last segment
    threads = [note(b"CORE", NT_PRSTATUS, prstatus(200 + i, 11, 0x1000, sps[i])) for i in order]
    loads = [Load(0x10000000 + i * 0x100000, b"\1" * 0x40000) for i in range(n)]
    data = CoreSpec(notes=threads, loads=loads).build()
    limits = ReadLimits(max_kept_bytes=2 << 20)
    core = parse_core(data, limits)
    crashing = sps[n - 1]
    assert core.memory.read(crashing, limits.stack_above - 0x1000 - 8) is not None
    for i in range(n - 1):  # every other thread has at least the start of its stack
        assert core.memory.read(sps[i], limits.other_stack_first) is not None


def test_seekable_core_is_read_where_needed():
    data, facts = simple_core(heap_size=1 << 20)
    core = parse_core(data, seekable=True)
    assert core.problems == ()
    assert core.memory.read(facts["sp"], 8) == b"\0" * 8
    assert core.memory.read(facts["heap"] + 256, 4) == bytes(range(4))  # anywhere, on demand
    assert len(core.memory) == 2 * 4096
    assert core.bytes_read < 8192  # headers and notes only


def test_seekable_gcore_layout_needs_no_speculation():
    data, facts = simple_core(notes_last=True, stack_size=0x40000)
    core = parse_core(data, seekable=True)
    assert core.problems == () and core.remarks == ()
    assert core.memory.read(facts["stack_base"], 8) == b"\0" * 8  # below the speculative top


def test_gcore_layout_through_a_pipe_says_what_it_missed():
    data, facts = simple_core(notes_last=True, stack_size=0x40000)
    core = parse_core(data)
    assert core.memory.read(facts["stack_base"], 8) is None
    assert "gdb" in core.memory_gap


def test_truncation_is_said_before_what_it_breaks():
    data, _ = simple_core()
    notes_at = struct.unpack_from("<Q", data, 64 + 8)[0]
    core = parse_core(data[: notes_at + 20])
    assert core.problems[0] == f"core truncated at byte {notes_at + 20}"
    core = parse_core(data[: notes_at + 20], seekable=True)
    assert core.problems[0] == f"core truncated at byte {notes_at + 20}"


def test_notes_cap():
    big = note(b"CORE", NT_FILE, nt_file([(0x1000 * i, 0x1000 * i + 0x1000, 0, "/x" * 100) for i in range(1, 3000)]))
    data = CoreSpec(notes=[note(b"CORE", NT_PRSTATUS, prstatus(1, 11, 0, 0)), big]).build()
    core = parse_core(data, ReadLimits(max_note_bytes=4096))
    assert [t.tid for t in core.threads] == [1]
    assert core.files == ()  # the table was cut, so it is not trusted
    assert any("notes are" in p for p in core.problems)


def test_memory_reads_across_adjacent_chunks():
    mem = Memory([(100, b"abcd"), (104, b"efgh"), (200, b"z")])
    assert mem.read(102, 4) == b"cdef"
    assert mem.read(199, 2) is None
    assert mem.read_u64(100) == int.from_bytes(b"abcdefgh", "little")
    assert mem.read_at_most(106, 100) == b"gh"
    assert len(mem) == 9
    assert mem.ranges() == ((100, 108), (200, 201))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(data):
    core = parse_core(data)
    assert core.problems or core.threads == ()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_mutated_cores_never_raise_and_stay_bounded(draw):
    data, _ = simple_core(stack_size=0x2000, heap_size=0x2000, notes_last=draw.draw(st.booleans()))
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 20))):
        pos = draw.draw(st.integers(0, min(len(buf) - 1, 2000)))
        buf[pos] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(buf)))
    limits = ReadLimits(max_kept_bytes=64 << 10)
    core = parse_core(bytes(buf[:cut]), limits)
    assert len(core.memory) <= limits.max_kept_bytes
    assert core.bytes_read <= cut


# --- notes -------------------------------------------------------------------------------

def test_note_iteration_stops_at_garbage():
    good = note(b"CORE", 1, b"x" * 5)
    assert [n.desc for n in N.iter_notes(good + b"\xff" * 11)] == [b"x" * 5]
    assert list(N.iter_notes(struct.pack("<III", 5, 1 << 30, 1) + b"CORE\0")) == []


def test_nt_file_with_inconsistent_table():
    desc = nt_file([(0x1000, 0x2000, 0x3000, "/a"), (0x5000, 0x4000, 0, "/backwards")])
    assert N.parse_nt_file(desc) == (N.FileMapping(0x1000, 0x2000, 0x3000, "/a"),)
    assert N.parse_nt_file(struct.pack("<QQ", 1 << 40, 4096)) == ()
    assert N.parse_nt_file(b"short") == ()


def test_short_notes_are_ignored():
    assert N.parse_prstatus(b"\0" * 100) is None
    assert N.parse_prpsinfo(b"\0" * 100) is None
    assert N.parse_siginfo(b"\0" * 10) is None
    assert N.parse_auxv(struct.pack("<QQQ", 3, 4, 5)) == ((3, 4),)


@given(st.binary(max_size=2048))
def test_note_parsers_never_raise(data):
    list(N.iter_notes(data))
    N.parse_prstatus(data)
    N.parse_prpsinfo(data)
    N.parse_siginfo(data)
    N.parse_auxv(data)
    N.parse_nt_file(data)
    N.build_id_from_notes(data)
