"""Walking one thread's stack: registers in, return addresses out.  Pure.

Each step uses, in order: the CFI row for the frame's address; at frame 0 outside any
code, the return address a call left on the stack (a call through a bad pointer); a
signal trampoline recognised by its instructions; the frame-pointer chain.  A step whose
result makes no sense (stack pointer not moving up, address outside user space, a frame
seen before) ends the walk with a reason instead of wandering through garbage.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Protocol, cast

from .arch import MASK64, Arch, Regs, Step
from .cfi import CfiRow, RuleKind
from .expr import ExprError, evaluate

MAX_FRAMES = 64
HARD_FRAME_LIMIT = 1024


class FrameSource(enum.Enum):
    REGISTERS = "registers"
    CFI = "cfi"
    SIGNAL = "signal trampoline"
    CALL = "return address at the stack pointer"
    FRAME_POINTER = "frame pointer"


class StopReason(enum.Enum):
    END = "end of the stack"
    NO_UNWIND_INFO = "no unwind information"
    NO_MEMORY = "stack memory is not in the core"
    LOOP = "stack pointer did not move"
    BAD_ADDRESS = "return address outside user space"
    FRAME_LIMIT = "frame limit reached"

    @property
    def clean(self) -> bool:
        return self is StopReason.END


@dataclass(frozen=True)
class RawFrame:
    pc: int
    exact: bool  # pc is the faulting/interrupted instruction, not a return address
    source: FrameSource
    trampoline: bool = False  # a signal trampoline: the kernel, not a call, made this frame

    @property
    def lookup_pc(self) -> int:
        """The address that identifies the call site: a return address minus one."""
        return self.pc if self.exact else self.pc - 1

    @property
    def symbol_pc(self) -> int:
        """The address to name the frame by: a trampoline was entered at its first byte."""
        return self.pc if self.trampoline else self.lookup_pc


@dataclass(frozen=True)
class Unwound:
    frames: tuple[RawFrame, ...]
    stop: StopReason
    detail: str = ""


class Target(Protocol):
    """What the unwinder asks about the crashed process."""

    def read_word(self, addr: int) -> int | None: ...

    def cfi_row(self, pc: int) -> CfiRow | None: ...

    def is_code(self, pc: int) -> bool: ...

    def code_at(self, pc: int, size: int) -> bytes | None: ...


class _MissingMemory(Exception):
    pass


class _EndOfStack(Exception):
    pass


def unwind(arch: Arch, pc: int, regs: Regs, target: Target, max_frames: int = MAX_FRAMES) -> Unwound:
    max_frames = max(1, min(max_frames, HARD_FRAME_LIMIT))
    frames = [RawFrame(pc & MASK64, True, FrameSource.REGISTERS)]
    cur_regs = dict(regs)
    seen = {(pc, cur_regs.get(arch.sp))}
    while True:
        if len(frames) >= max_frames:
            return Unwound(tuple(frames), StopReason.FRAME_LIMIT)
        try:
            out = _step(arch, frames[-1], cur_regs, target, first=len(frames) == 1)
        except _EndOfStack:
            return Unwound(tuple(frames), StopReason.END)
        if out.step is None:
            return Unwound(tuple(frames), out.stop, out.detail)
        step = out.step
        new_pc = step.pc & MASK64
        old_sp, new_sp = cur_regs.get(arch.sp), step.regs.get(arch.sp)
        if new_pc == 0:
            return Unwound(tuple(frames), StopReason.END)
        if new_pc > arch.max_address:
            return Unwound(tuple(frames), StopReason.BAD_ADDRESS, f"{new_pc:#x}")
        if new_sp is None:
            return Unwound(tuple(frames), StopReason.NO_UNWIND_INFO, "stack pointer lost")
        moved_up = old_sp is None or new_sp > old_sp
        if not (moved_up or out.after_signal) or (new_pc, new_sp) in seen:
            return Unwound(tuple(frames), StopReason.LOOP, f"at {new_pc:#x}")
        seen.add((new_pc, new_sp))
        if out.after_signal:
            frames[-1] = dataclasses.replace(frames[-1], trampoline=True)
        frames.append(RawFrame(new_pc, step.exact_pc or out.after_signal, out.source))
        cur_regs = step.regs


@dataclass(frozen=True)
class _Outcome:
    step: Step | None
    source: FrameSource = FrameSource.CFI
    after_signal: bool = False  # the frame just left was a signal frame: the next pc is exact
    stop: StopReason = StopReason.NO_UNWIND_INFO
    detail: str = ""


def _step(arch: Arch, frame: RawFrame, regs: Regs, target: Target, first: bool) -> _Outcome:
    read = target.read_word
    in_code = target.is_code(frame.pc)
    failure = _Outcome(None, stop=StopReason.NO_UNWIND_INFO, detail=f"at {frame.pc:#x}")
    if in_code:
        row = target.cfi_row(frame.lookup_pc)
        if row is not None:
            try:
                return _Outcome(apply_row(arch, row, frame.pc, regs, read), FrameSource.CFI, row.signal_frame)
            except _MissingMemory as e:
                failure = _Outcome(None, stop=StopReason.NO_MEMORY, detail=str(e))
            except ExprError as e:
                failure = _Outcome(None, stop=StopReason.NO_UNWIND_INFO, detail=str(e))
    elif first:
        step = arch.call_step(regs, read)
        if step is not None and target.is_code(step.pc):
            return _Outcome(step, FrameSource.CALL)
    if in_code and target.code_at(frame.pc, len(arch.sigreturn_code)) == arch.sigreturn_code:
        step = arch.sigreturn_step(regs, read)
        if step is not None:
            return _Outcome(step, FrameSource.SIGNAL, True)
    step = arch.frame_pointer_step(regs, read)
    if step is not None and target.is_code(step.pc):
        return _Outcome(step, FrameSource.FRAME_POINTER)
    return failure


def apply_row(arch: Arch, row: CfiRow, pc: int, regs: Regs, read) -> Step:
    """The caller's registers by one CFI row (DWARF 6.4.1)."""
    here = dict(regs)
    if arch.pc_reg is not None:
        here[arch.pc_reg] = pc

    def load(addr: int) -> int:
        value = read(addr & MASK64)
        if value is None:
            raise _MissingMemory(f"no memory at {addr & MASK64:#x}")
        return value

    if row.cfa_expr is not None:
        cfa = evaluate(row.cfa_expr, here, read)
    else:
        if row.cfa_reg is None or row.cfa_reg not in here:
            raise ExprError("CFA register unknown")
        cfa = (here[row.cfa_reg] + row.cfa_offset) & MASK64
    new: Regs = dict(regs)
    ra_rule = False
    for reg, kind, arg in row.rules:
        if reg == row.ra_column:
            ra_rule = True
        if kind is RuleKind.UNDEFINED:
            if reg == row.ra_column:
                raise _EndOfStack
            new.pop(reg, None)
        elif kind is RuleKind.SAME_VALUE:
            if reg in here:
                new[reg] = here[reg]
        elif kind is RuleKind.OFFSET:
            new[reg] = load(cfa + cast(int, arg))
        elif kind is RuleKind.VAL_OFFSET:
            new[reg] = (cfa + cast(int, arg)) & MASK64
        elif kind is RuleKind.REGISTER:
            if arg in here:
                new[reg] = here[arg]
            else:
                new.pop(reg, None)
        elif kind is RuleKind.EXPRESSION:
            new[reg] = load(evaluate(cast(bytes, arg), here, read, push=(cfa,)))
        elif kind is RuleKind.VAL_EXPRESSION:
            new[reg] = evaluate(cast(bytes, arg), here, read, push=(cfa,)) & MASK64
    if not any(reg == arch.sp for reg, _, _ in row.rules):
        new[arch.sp] = cfa
    # Without a rule the return-address column keeps its value, unless it is the pc itself.
    ra = new.get(row.ra_column) if ra_rule or row.ra_column != arch.pc_reg else None
    if ra is None:
        raise ExprError("no rule for the return address")
    if row.ra_column == arch.pc_reg:
        new.pop(row.ra_column, None)
    return Step(pc=ra, regs=new)
