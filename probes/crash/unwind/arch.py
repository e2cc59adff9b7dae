"""What the unwinder needs to know about a CPU, and the table of CPUs it knows.

An `Arch` maps the registers a core stores (NT_PRSTATUS pr_reg) to DWARF register numbers
and carries the few rules CFI does not give: the frame-pointer chain, how a signal
trampoline saved the interrupted registers, and where a call left its return address.
x86-64 is implemented (unwind/x86_64.py); another CPU is one more module and one more
entry in `_ARCHES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Regs = dict[int, int]
ReadWord = Callable[[int], "int | None"]
MASK64 = (1 << 64) - 1

EM_X86_64 = 62
EM_AARCH64 = 183


@dataclass(frozen=True)
class Step:
    """The caller's state as an architecture rule found it."""

    pc: int
    regs: Regs
    exact_pc: bool = False  # pc is not a return address (after a signal frame)


@dataclass(frozen=True)
class Arch:
    name: str
    machine: int
    sp: int  # DWARF number of the stack pointer
    ra: int  # DWARF column of the return address
    pc_reg: int | None  # DWARF number that names the pc in expressions (x86-64: 16), if any
    word: int
    max_address: int
    # pr_reg bytes -> (pc, DWARF-numbered registers)
    decode: Callable[[bytes], tuple[int, Regs] | None]
    # One step along the frame-pointer chain, or None when the chain looks wrong.
    frame_pointer_step: Callable[[Regs, ReadWord], Step | None]
    # At the entry of a call whose target was garbage: the return address the call left.
    call_step: Callable[[Regs, ReadWord], Step | None]
    # The registers a signal trampoline will restore, given the stack pointer at it.
    sigreturn_step: Callable[[Regs, ReadWord], Step | None]
    # The trampoline's instructions (rt_sigreturn), to spot it without CFI.
    sigreturn_code: bytes


_ARCHES: dict[int, Callable[[], Arch]] = {}


def register(machine: int, factory: Callable[[], Arch]) -> None:
    _ARCHES[machine] = factory


def for_machine(machine: int) -> Arch | None:
    _load_builtin()
    factory = _ARCHES.get(machine)
    return factory() if factory else None


def machine_name(machine: int) -> str:
    return {EM_X86_64: "x86-64", EM_AARCH64: "aarch64", 3: "i386", 40: "arm"}.get(machine, f"machine {machine}")


def stack_pointer(machine: int, raw_regs: bytes) -> int | None:
    """The stack pointer in a thread's raw registers; the core reader uses it to pick stacks."""
    arch = for_machine(machine)
    if arch is None:
        return None
    decoded = arch.decode(raw_regs)
    return None if decoded is None else decoded[1].get(arch.sp)


def _load_builtin() -> None:
    if EM_X86_64 not in _ARCHES:
        from . import x86_64

        register(EM_X86_64, x86_64.arch)
