"""The unwinder, its DWARF expression machine and its CFI rows, on synthetic stacks."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.probes.crash.unwind import StopReason, for_machine, unwind
from telemetry.probes.crash.unwind.cfi import CfiRow, RuleKind, parse_eh_frame_hdr
from telemetry.probes.crash.unwind.expr import ExprError, evaluate
from telemetry.probes.crash.unwind.unwinder import FrameSource, apply_row
from telemetry.probes.crash.unwind.x86_64 import RBP, RIP, RSP, SIGRETURN_CODE

ARCH = for_machine(62)
TEXT = range(0x400000, 0x500000)


def sleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if (v == 0 and not b & 0x40) or (v == -1 and b & 0x40):
            return bytes(out + bytes([b]))
        out.append(b | 0x80)


def uleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if not v:
            return bytes(out + bytes([b]))
        out.append(b | 0x80)


# A standard x86-64 frame after `push %rbp; mov %rsp,%rbp`, and a leaf frame at entry.
FP_ROW = CfiRow(RBP, 16, None, ((RIP, RuleKind.OFFSET, -8), (RBP, RuleKind.OFFSET, -16)), RIP)
ENTRY_ROW = CfiRow(RSP, 8, None, ((RIP, RuleKind.OFFSET, -8),), RIP)
END_ROW = CfiRow(RSP, 8, None, ((RIP, RuleKind.UNDEFINED, 0),), RIP)


class Stack:
    """Memory, CFI and code of a made-up process."""

    def __init__(self, words: dict[int, int] | None = None, rows: dict[int, CfiRow] | None = None,
                 code: dict[int, bytes] | None = None):
        self.words = words or {}
        self.rows = rows or {}
        self.code = code or {}

    def read_word(self, addr):
        return self.words.get(addr)

    def cfi_row(self, pc):
        return self.rows.get(pc)

    def is_code(self, pc):
        return pc in TEXT

    def code_at(self, pc, size):
        return self.code.get(pc)


def test_frame_pointer_chain_through_cfi():
    # main (0x401000) -> f (0x402000) -> g (0x403000, crashed), each with a standard frame
    sp = 0x7000_0000
    words = {
        sp + 0x10: sp + 0x100, sp + 0x18: 0x402010,  # g's frame: saved rbp, return into f
        sp + 0x100: sp + 0x200, sp + 0x108: 0x401010,  # f's frame: return into main
        sp + 0x200: 0, sp + 0x208: 0x400010,  # main's frame: return into _start
    }
    rows = {0x403000: FP_ROW, 0x40200F: FP_ROW, 0x40100F: FP_ROW, 0x40000F: END_ROW}
    result = unwind(ARCH, 0x403000, {RSP: sp, RBP: sp + 0x10}, Stack(words, rows))
    assert [f.pc for f in result.frames] == [0x403000, 0x402010, 0x401010, 0x400010]
    assert result.stop is StopReason.END
    assert result.frames[0].exact and not result.frames[1].exact
    assert [f.lookup_pc for f in result.frames][1:] == [0x40200F, 0x40100F, 0x40000F]


def test_frame_pointer_fallback_without_cfi():
    sp = 0x7000_0000
    words = {sp + 0x10: sp + 0x40, sp + 0x18: 0x402010, sp + 0x40: 0, sp + 0x48: 0x401010}
    result = unwind(ARCH, 0x403000, {RSP: sp, RBP: sp + 0x10}, Stack(words))
    assert [f.pc for f in result.frames] == [0x403000, 0x402010, 0x401010]
    assert result.frames[1].source is FrameSource.FRAME_POINTER
    assert result.stop is StopReason.NO_UNWIND_INFO


def test_call_through_a_null_pointer():
    sp = 0x7000_0000
    words = {sp: 0x402010}
    rows = {0x40200F: END_ROW}
    result = unwind(ARCH, 0, {RSP: sp}, Stack(words, rows))
    assert [f.pc for f in result.frames] == [0, 0x402010]
    assert result.frames[1].source is FrameSource.CALL
    assert result.stop is StopReason.END


def test_signal_trampoline_by_its_code():
    sp = 0x7000_0000
    uc = sp  # at __restore_rt the stack pointer is at the ucontext
    interrupted_sp = 0x7100_0000
    words = {uc + 40 + 8 * i: 0 for i in range(17)}
    words[uc + 40 + 8 * 15] = interrupted_sp  # rsp
    words[uc + 40 + 8 * 16] = 0x405000  # rip
    words[uc + 40 + 8 * 10] = 0  # rbp
    # handler frame: returning pops the trampoline's address, leaving the stack at the ucontext
    hsp = sp - 8
    words[hsp] = 0x404000
    rows = {0x406000: ENTRY_ROW, 0x405000: END_ROW}
    result = unwind(ARCH, 0x406000, {RSP: hsp}, Stack(words, rows, {0x404000: SIGRETURN_CODE}))
    assert [f.pc for f in result.frames] == [0x406000, 0x404000, 0x405000]
    assert result.frames[1].trampoline and result.frames[1].symbol_pc == 0x404000
    assert result.frames[2].exact  # the interrupted instruction, not a return address
    assert result.frames[2].lookup_pc == 0x405000


def test_signal_frame_row_makes_the_next_pc_exact():
    sp = 0x7000_0000
    sig_row = CfiRow(None, 0, bytes([0x77]) + sleb(160) + bytes([0x06]),  # DW_OP_breg7 160; DW_OP_deref
                     ((RIP, RuleKind.EXPRESSION, bytes([0x77]) + sleb(168)),), RIP, signal_frame=True)
    words = {sp + 160: 0x7100_0000, sp + 168: 0x405000}
    rows = {0x404000: sig_row, 0x405000: END_ROW}
    result = unwind(ARCH, 0x404000, {RSP: sp}, Stack(words, rows))
    assert [f.pc for f in result.frames] == [0x404000, 0x405000]
    assert result.frames[0].trampoline and result.frames[1].exact


def test_loop_and_limits():
    sp = 0x7000_0000
    words = {sp: 0x402000, sp + 8: 0x402000}
    same = CfiRow(RSP, 0, None, ((RIP, RuleKind.OFFSET, 0),), RIP)  # CFA = sp: no progress
    result = unwind(ARCH, 0x402000, {RSP: sp}, Stack(words, {0x402000: same, 0x401FFF: same}))
    assert result.stop is StopReason.LOOP
    words = {sp + 8 * i: 0x402001 for i in range(200)}
    rows = {0x402000: ENTRY_ROW}
    result = unwind(ARCH, 0x402000, {RSP: sp}, Stack(words, rows), max_frames=10)
    assert len(result.frames) == 10 and result.stop is StopReason.FRAME_LIMIT


def test_missing_memory_and_bad_addresses():
    result = unwind(ARCH, 0x402000, {RSP: 0x7000_0000}, Stack({}, {0x402000: ENTRY_ROW}))
    assert result.stop is StopReason.NO_MEMORY and len(result.frames) == 1
    result = unwind(ARCH, 0x402000, {RSP: 0x7000_0000}, Stack({0x7000_0000: 1 << 60}, {0x402000: ENTRY_ROW}))
    assert result.stop is StopReason.BAD_ADDRESS


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0x7000_0000, 0x7000_0400).map(lambda a: a & ~7), st.integers(0, 2**64 - 1),
                       max_size=64),
       st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_garbage_stacks_end_cleanly(words, pc, rbp):
    rows = {p: FP_ROW for p in range(0x400000, 0x400100)}
    result = unwind(ARCH, pc, {RSP: 0x7000_0000, RBP: rbp}, Stack(words, rows))
    assert 1 <= len(result.frames) <= 64
    sps = [f.pc for f in result.frames]
    assert len(sps) == len(result.frames)


def test_apply_row_rules():
    regs = {RSP: 0x1000, RBP: 0x2000, 3: 7}
    read = {0x1010: 0xAAAA, 0x1008: 0x401000}.get
    row = CfiRow(RSP, 16, None, ((RIP, RuleKind.OFFSET, -8), (RBP, RuleKind.VAL_OFFSET, -16),
                                 (3, RuleKind.REGISTER, RBP), (12, RuleKind.UNDEFINED, 0)), RIP)
    step = apply_row(ARCH, row, 0x402000, regs, read)
    assert step.pc == 0x401000
    assert step.regs[RSP] == 0x1010 and step.regs[RBP] == 0x1000 and step.regs[3] == 0x2000
    assert 12 not in step.regs and RIP not in step.regs


# --- expressions -----------------------------------------------------------------------------

def test_plt_expression():
    # DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus
    code = bytes([0x77, 8, 0x80, 0, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])
    assert evaluate(code, {7: 0x1000, 16: 0x401000 + 5}, {}.get) == 0x1008
    assert evaluate(code, {7: 0x1000, 16: 0x401000 + 12}, {}.get) == 0x1010


def test_branches_and_stack_ops():
    # lit1; bra +1 (skip lit2); lit2 ; lit3 -> stack [3] or [2,3]
    code = bytes([0x31, 0x28]) + struct.pack("<h", 1) + bytes([0x32, 0x33])
    assert evaluate(code, {}, {}.get) == 3
    code = bytes([0x30, 0x28]) + struct.pack("<h", 1) + bytes([0x32, 0x33, 0x1C])  # ... minus
    assert evaluate(code, {}, {}.get) == (2 - 3) & (2**64 - 1)
    # const2u 0x1234; dup; plus; lit1; swap; minus: 1 - 0x2468
    code = bytes([0x0A, 0x34, 0x12, 0x12, 0x22, 0x31, 0x16, 0x1C])
    assert evaluate(code, {}, {}.get) == (1 - 0x2468) % 2**64


@pytest.mark.parametrize(
    "code",
    [b"", bytes([0x06]), bytes([0x22]), bytes([0x70]), bytes([0x31, 0x30, 0x1B]), bytes([0xE0]),
     bytes([0x2F]) + struct.pack("<h", -3),
     bytes([0xA5, 0x00, 0x00]),  # DW_OP_regval_type: not a DW_OP_reg<n>
     bytes([0xA4, 0x00, 0x01, 0x05])],  # DW_OP_const_type: not a DW_OP_const<n>
)
def test_bad_expressions_raise_expr_error(code):
    with pytest.raises(ExprError):
        evaluate(code, {}, {}.get)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.dictionaries(st.integers(0, 16), st.integers(0, 2**64 - 1)))
def test_any_expression_terminates_with_a_value_or_expr_error(code, regs):
    try:
        value = evaluate(code, regs, lambda a: a & 0xFFFF)
    except ExprError:
        return
    assert 0 <= value < 2**64


@given(st.integers(0, 2**32), st.integers(0, 2**32))
def test_arithmetic_matches_python(a, b):
    consts = bytes([0x10]) + uleb(a) + bytes([0x10]) + uleb(b)  # DW_OP_constu a; DW_OP_constu b
    assert evaluate(consts + bytes([0x22]), {}, {}.get) == (a + b) % 2**64
    assert evaluate(consts + bytes([0x1E]), {}, {}.get) == (a * b) % 2**64
    assert evaluate(consts + bytes([0x1C]), {}, {}.get) == (a - b) % 2**64


# --- .eh_frame_hdr -----------------------------------------------------------------------------

def test_eh_frame_hdr_table():
    hdr_addr, eh_addr = 0x2000, 0x3000
    table = [(0x1000 - hdr_addr, eh_addr + 0x18 - hdr_addr), (0x1100 - hdr_addr, eh_addr + 0x40 - hdr_addr)]
    data = bytes([1, 0x1B, 0x03, 0x3B]) + struct.pack("<iI", eh_addr - hdr_addr - 4, 2)
    data += b"".join(struct.pack("<ii", a, b) for a, b in table)
    assert parse_eh_frame_hdr(data, hdr_addr, eh_addr, 0x100) == [(0x1000, 0x18), (0x1100, 0x40)]
    assert parse_eh_frame_hdr(data, hdr_addr, eh_addr, 0x20) is None  # points outside .eh_frame
    assert parse_eh_frame_hdr(data[:4], hdr_addr, eh_addr, 0x100) is None
    assert parse_eh_frame_hdr(bytes([1, 0x1B, 0x03, 0x1B]) + data[4:], hdr_addr, eh_addr, 0x100) is None
