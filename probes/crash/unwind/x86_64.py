"""x86-64: register layout of NT_PRSTATUS, DWARF numbering, frame-pointer and signal rules."""

from __future__ import annotations

import functools
import struct

from .arch import EM_X86_64, MASK64, Arch, ReadWord, Regs, Step

RAX, RDX, RCX, RBX, RSI, RDI, RBP, RSP = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
RIP = 16

# struct user_regs_struct, in order, as DWARF numbers (None: not a DWARF register).
_USER_REGS = (R15, R14, R13, R12, RBP, RBX, R11, R10, R9, R8, RAX, RCX, RDX, RSI, RDI,
              None, RIP, None, None, RSP)
_USER_REGS_WORDS = 27

# struct ucontext_t: uc_flags, uc_link, uc_stack (24 bytes), then mcontext's gregs.
_MCONTEXT = 40
_SIGCONTEXT_REGS = (R8, R9, R10, R11, R12, R13, R14, R15, RDI, RSI, RBP, RBX, RDX, RAX, RCX, RSP, RIP)

# mov $15, %rax ; syscall  -- glibc's and musl's __restore_rt
SIGRETURN_CODE = bytes.fromhex("48c7c00f0000000f05")

USER_MAX = (1 << 47) - 1


def decode(raw: bytes) -> tuple[int, Regs] | None:
    if len(raw) < _USER_REGS_WORDS * 8:
        return None
    words = struct.unpack_from(f"<{_USER_REGS_WORDS}Q", raw)
    regs = {reg: words[i] for i, reg in enumerate(_USER_REGS) if reg is not None}
    return regs.pop(RIP), regs


def frame_pointer_step(regs: Regs, read: ReadWord) -> Step | None:
    rbp, rsp = regs.get(RBP), regs.get(RSP)
    if rbp is None or rsp is None or rbp % 8 or rbp < rsp or rbp - rsp > 1 << 24:
        return None
    saved_rbp, ra = read(rbp), read(rbp + 8)
    if saved_rbp is None or ra is None:
        return None
    new = dict(regs)
    new[RBP] = saved_rbp
    new[RSP] = (rbp + 16) & MASK64
    return Step(pc=ra, regs=new)


def call_step(regs: Regs, read: ReadWord) -> Step | None:
    rsp = regs.get(RSP)
    if rsp is None:
        return None
    ra = read(rsp)
    if ra is None:
        return None
    new = dict(regs)
    new[RSP] = (rsp + 8) & MASK64
    return Step(pc=ra, regs=new)


def sigreturn_step(regs: Regs, read: ReadWord) -> Step | None:
    """At __restore_rt the stack pointer points at the ucontext the kernel pushed."""
    rsp = regs.get(RSP)
    if rsp is None:
        return None
    new: Regs = {}
    for i, reg in enumerate(_SIGCONTEXT_REGS):
        value = read(rsp + _MCONTEXT + 8 * i)
        if value is None:
            return None
        new[reg] = value
    pc = new.pop(RIP)
    return Step(pc=pc, regs=new, exact_pc=True)


@functools.cache
def arch() -> Arch:
    return Arch(
        name="x86-64",
        machine=EM_X86_64,
        sp=RSP,
        ra=RIP,
        pc_reg=RIP,
        word=8,
        max_address=USER_MAX,
        decode=decode,
        frame_pointer_step=frame_pointer_step,
        call_step=call_step,
        sigreturn_step=sigreturn_step,
        sigreturn_code=SIGRETURN_CODE,
    )
