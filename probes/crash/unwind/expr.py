"""Evaluating the DWARF expressions CFI uses (PLT entries, signal trampolines, realigned
stacks).  pyelftools decodes the operations; this is the small stack machine that runs
them over a thread's registers and the kept memory.  Pure, bounded in steps and stack.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from .arch import MASK64, ReadWord, Regs

MAX_STEPS = 256
MAX_STACK = 64


class ExprError(Exception):
    """The expression cannot be evaluated here (unknown operation, missing value)."""


@functools.cache
def _parser():
    from elftools.dwarf.dwarf_expr import DWARFExprParser
    from elftools.dwarf.structs import DWARFStructs

    return DWARFExprParser(DWARFStructs(little_endian=True, dwarf_format=32, address_size=8))


@functools.lru_cache(maxsize=512)
def _decode(code: bytes):
    try:
        return tuple(_parser().parse_expr(code))
    except Exception as e:  # pyelftools raises assorted errors on bad bytes
        raise ExprError(f"undecodable expression: {e}") from None


def _signed(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


_BINARY = {
    "DW_OP_and": lambda a, b: a & b,
    "DW_OP_or": lambda a, b: a | b,
    "DW_OP_xor": lambda a, b: a ^ b,
    "DW_OP_plus": lambda a, b: a + b,
    "DW_OP_minus": lambda a, b: a - b,
    "DW_OP_mul": lambda a, b: a * b,
    "DW_OP_shl": lambda a, b: a << b if b < 64 else 0,
    "DW_OP_shr": lambda a, b: a >> b if b < 64 else 0,
    "DW_OP_shra": lambda a, b: _signed(a) >> min(b, 63),
    "DW_OP_eq": lambda a, b: int(a == b),
    "DW_OP_ne": lambda a, b: int(a != b),
    "DW_OP_ge": lambda a, b: int(_signed(a) >= _signed(b)),
    "DW_OP_gt": lambda a, b: int(_signed(a) > _signed(b)),
    "DW_OP_le": lambda a, b: int(_signed(a) <= _signed(b)),
    "DW_OP_lt": lambda a, b: int(_signed(a) < _signed(b)),
}


_CONSTS = frozenset(
    f"DW_OP_const{n}{s}" for n in ("1", "2", "4", "8") for s in ("u", "s")
) | {"DW_OP_constu", "DW_OP_consts"}


def evaluate(code: bytes | Sequence[int], regs: Regs, read: ReadWord, push: Sequence[int] = ()) -> int:
    """The value on top of the stack when `code` ends; `push` is the initial stack."""
    code = bytes(code)
    ops = _decode(code)
    by_offset = {op.offset: i for i, op in enumerate(ops)}
    stack = [v & MASK64 for v in push]
    i = steps = 0
    while i < len(ops):
        steps += 1
        if steps > MAX_STEPS or len(stack) > MAX_STACK:
            raise ExprError("expression too long")
        op = ops[i]
        name, args = op.op_name, op.args
        i += 1
        # Exact names only: DW_OP_regval_type, DW_OP_const_type and the like share prefixes.
        if name.startswith("DW_OP_lit") and name[9:].isdigit():
            stack.append(int(name[9:]))
        elif name in _CONSTS:
            stack.append(args[0] & MASK64)
        elif name == "DW_OP_addr":
            stack.append(args[0] & MASK64)
        elif name.startswith("DW_OP_breg") and name[10:].isdigit():
            stack.append((_reg(regs, int(name[10:])) + args[0]) & MASK64)
        elif name == "DW_OP_bregx":
            stack.append((_reg(regs, args[0]) + args[1]) & MASK64)
        elif name.startswith("DW_OP_reg") and name[9:].isdigit():
            stack.append(_reg(regs, int(name[9:])))
        elif name == "DW_OP_regx":
            stack.append(_reg(regs, args[0]))
        elif name in ("DW_OP_deref", "DW_OP_deref_size"):
            addr = _pop(stack)
            value = read(addr)
            if value is None:
                raise ExprError(f"memory at {addr:#x} is not in the core")
            if name == "DW_OP_deref_size":
                size = args[0]
                value &= (1 << (8 * size)) - 1 if 0 < size < 8 else MASK64
            stack.append(value)
        elif name == "DW_OP_dup":
            stack.append(_peek(stack, 0))
        elif name == "DW_OP_drop":
            _pop(stack)
        elif name == "DW_OP_over":
            stack.append(_peek(stack, 1))
        elif name == "DW_OP_pick":
            stack.append(_peek(stack, args[0]))
        elif name == "DW_OP_swap":
            b, a = _pop(stack), _pop(stack)
            stack += [b, a]
        elif name == "DW_OP_rot":
            c, b, a = _pop(stack), _pop(stack), _pop(stack)
            stack += [c, a, b]
        elif name == "DW_OP_plus_uconst":
            stack.append((_pop(stack) + args[0]) & MASK64)
        elif name == "DW_OP_neg":
            stack.append(-_signed(_pop(stack)) & MASK64)
        elif name == "DW_OP_not":
            stack.append(~_pop(stack) & MASK64)
        elif name == "DW_OP_abs":
            stack.append(abs(_signed(_pop(stack))) & MASK64)
        elif name in ("DW_OP_div", "DW_OP_mod"):
            b, a = _pop(stack), _pop(stack)
            if b == 0:
                raise ExprError("division by zero")
            stack.append((int(_signed(a) / _signed(b)) if name == "DW_OP_div" else a % b) & MASK64)
        elif name in _BINARY:
            b, a = _pop(stack), _pop(stack)
            stack.append(_BINARY[name](a, b) & MASK64)
        elif name in ("DW_OP_skip", "DW_OP_bra"):
            if name == "DW_OP_bra" and _pop(stack) == 0:
                continue
            target = op.offset + 3 + args[0]  # opcode, then a 2-byte signed displacement
            if target == len(code):
                i = len(ops)
            elif target in by_offset:
                i = by_offset[target]
            else:
                raise ExprError("branch into the middle of an operation")
        elif name == "DW_OP_nop":
            pass
        else:
            raise ExprError(f"unsupported operation {name}")
    return _pop(stack)


def _reg(regs: Regs, n: int) -> int:
    if n not in regs:
        raise ExprError(f"register {n} is not known in this frame")
    return regs[n]


def _pop(stack: list[int]) -> int:
    if not stack:
        raise ExprError("expression stack underflow")
    return stack.pop()


def _peek(stack: list[int], depth: int) -> int:
    if depth >= len(stack):
        raise ExprError("expression stack underflow")
    return stack[-1 - depth]
