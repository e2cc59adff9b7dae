"""Synthetic ELF cores for the reader's unit tests: the kernel's layout (header, program
headers, one PT_NOTE, PT_LOADs in address order), or gcore's (notes last)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

NT_PRSTATUS, NT_PRPSINFO, NT_AUXV, NT_SIGINFO, NT_FILE = 1, 3, 6, 0x53494749, 0x46494C45
PF_X, PF_W, PF_R = 1, 2, 4
RSP_WORD, RIP_WORD = 19, 16


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def prstatus(tid: int, signal: int, rip: int, rsp: int, rbp: int = 0) -> bytes:
    regs = [0] * 27
    regs[RIP_WORD], regs[RSP_WORD], regs[4] = rip, rsp, rbp
    head = struct.pack("<iiih2xQQiiii", signal, 0, 0, signal, 0, 0, tid, 1, tid, tid) + b"\0" * 64
    return head + struct.pack("<27Q", *regs) + struct.pack("<i4x", 1)


def prpsinfo(pid: int, name: bytes = b"prog") -> bytes:
    return (struct.pack("<bbbb4xQIIiiii", 0, ord("R"), 0, 0, 0, 1000, 1000, pid, 1, pid, pid)
            + name[:16].ljust(16, b"\0") + b"prog arg".ljust(80, b"\0"))


def auxv(pairs: list[tuple[int, int]]) -> bytes:
    return b"".join(struct.pack("<QQ", k, v) for k, v in pairs + [(0, 0)])


def nt_file(entries: list[tuple[int, int, int, str]], page: int = 4096) -> bytes:
    head = struct.pack("<QQ", len(entries), page)
    table = b"".join(struct.pack("<QQQ", s, e, off // page) for s, e, off, _ in entries)
    return head + table + b"".join(p.encode() + b"\0" for _, _, _, p in entries)


@dataclass
class Load:
    vaddr: int
    data: bytes
    flags: int = PF_R | PF_W
    memsz: int | None = None


@dataclass
class CoreSpec:
    notes: list[bytes] = field(default_factory=list)
    loads: list[Load] = field(default_factory=list)
    notes_last: bool = False
    machine: int = 62

    def build(self) -> bytes:
        notes = b"".join(self.notes)
        phnum = 1 + len(self.loads)
        offset = 64 + 56 * phnum
        phdrs = []
        body = b""
        if not self.notes_last:
            phdrs.append(struct.pack("<IIQQQQQQ", 4, 0, offset, 0, 0, len(notes), 0, 4))
            body += notes
            offset += len(notes)
        for load in self.loads:
            pad = -offset % 4096
            body += b"\0" * pad
            offset += pad
            memsz = load.memsz if load.memsz is not None else len(load.data)
            phdrs.append(struct.pack("<IIQQQQQQ", 1, load.flags, offset, load.vaddr, 0, len(load.data), memsz, 4096))
            body += load.data
            offset += len(load.data)
        if self.notes_last:
            phdrs.insert(0, struct.pack("<IIQQQQQQ", 4, 0, offset, 0, 0, len(notes), 0, 1))
            body += notes
        header = (b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
                  + struct.pack("<HHIQQQIHHHHHH", 4, self.machine, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0))
        return header + b"".join(phdrs) + body


def simple_core(notes_last: bool = False, stack_size: int = 0x4000, heap_size: int = 0x10000) -> tuple[bytes, dict]:
    """One thread, a heap, a stack, a mapped ELF image: what tests check against."""
    stack_base = 0x7FFF0000_0000
    sp = stack_base + stack_size - 0x800
    image = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9 + struct.pack("<HH", 3, 62) + b"\0" * 4000
    heap = bytes(range(256)) * (heap_size // 256)
    stack = bytes(stack_size)
    spec = CoreSpec(
        notes=[
            note(b"CORE", NT_PRSTATUS, prstatus(100, 11, 0x401000, sp)),
            note(b"CORE", NT_PRPSINFO, prpsinfo(100)),
            note(b"CORE", NT_SIGINFO, struct.pack("<iii4xQ", 11, 0, 1, 0) + b"\0" * 104),
            note(b"CORE", NT_AUXV, auxv([(33, 0), (9, 0x401000)])),
            note(b"CORE", NT_FILE, nt_file([(0x400000, 0x402000, 0, "/usr/bin/prog")])),
            note(b"LINUX", 0x202, b"\0" * 512),
        ],
        loads=[
            Load(0x400000, image.ljust(4096, b"\0"), PF_R | PF_X, memsz=0x2000),
            Load(0x600000, heap),
            Load(stack_base, stack),
        ],
        notes_last=notes_last,
    )
    return spec.build(), {"sp": sp, "stack_base": stack_base, "heap": 0x600000, "heap_size": heap_size}
