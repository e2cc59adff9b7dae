"""The notes a Linux core carries besides memory: threads, process, signal, auxv, mapped files.

Pure functions over bytes.  The layouts are the kernel's 64-bit ones (struct elf_prstatus,
elf_prpsinfo, siginfo_t, the NT_FILE table); a note that is too short or inconsistent is
skipped rather than trusted, since a crafted core can say anything.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_AUXV = 6
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
NT_GNU_BUILD_ID = 3

AT_NULL = 0
AT_PHDR = 3
AT_ENTRY = 9
AT_RANDOM = 25
AT_EXECFN = 31
AT_SYSINFO_EHDR = 33

# struct elf_prstatus_common on 64-bit: siginfo (12) + cursig (2+2) + sigpend/sighold (16)
# + pid/ppid/pgrp/sid (16) + four timevals (64); pr_reg follows, then pr_fpvalid (4+4).
PRSTATUS_REGS_OFFSET = 112
PRSTATUS_TAIL = 8
PRPSINFO_SIZE = 136
SIGINFO_MIN = 24
NT_FILE_MAX_ENTRIES = 1 << 16
BUILD_ID_MAX = 64


@dataclass(frozen=True)
class Note:
    name: bytes
    type: int
    desc: bytes


@dataclass(frozen=True)
class ThreadStatus:
    """One NT_PRSTATUS: a thread's id, the signal it got and its raw general registers."""

    tid: int
    signal: int
    regs: bytes


@dataclass(frozen=True)
class ProcessInfo:
    """NT_PRPSINFO.  `name` and `args` are what the process chose to be called: never trusted."""

    pid: int
    ppid: int
    uid: int
    gid: int
    name: str
    args: str


@dataclass(frozen=True)
class SignalInfo:
    signo: int
    code: int
    errno: int
    addr: int  # the fault address for SIGSEGV/SIGBUS/SIGILL/SIGFPE, else the sender's pid/uid word


@dataclass(frozen=True)
class FileMapping:
    """One NT_FILE entry: [start, end) maps `path` from byte `offset` of the file."""

    start: int
    end: int
    offset: int
    path: str


def iter_notes(data: bytes, align: int = 4) -> Iterator[Note]:
    """Every well-formed note in a PT_NOTE payload; stops at the first malformed one."""
    pos, end = 0, len(data)
    align = 8 if align == 8 else 4
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_at = pos + 12
        desc_at = name_at + _round(namesz, align)
        nxt = desc_at + _round(descsz, align)
        if desc_at + descsz > end or nxt <= pos:
            return
        name = bytes(data[name_at : name_at + namesz]).rstrip(b"\0")
        yield Note(name, ntype, bytes(data[desc_at : desc_at + descsz]))
        pos = nxt


def _round(n: int, align: int) -> int:
    return (n + align - 1) & ~(align - 1)


def parse_prstatus(desc: bytes) -> ThreadStatus | None:
    if len(desc) < PRSTATUS_REGS_OFFSET + PRSTATUS_TAIL + 8:
        return None
    cursig = struct.unpack_from("<h", desc, 12)[0]
    pid = struct.unpack_from("<i", desc, 32)[0]
    return ThreadStatus(tid=pid, signal=cursig, regs=desc[PRSTATUS_REGS_OFFSET : len(desc) - PRSTATUS_TAIL])


def parse_prpsinfo(desc: bytes) -> ProcessInfo | None:
    if len(desc) < PRPSINFO_SIZE:
        return None
    uid, gid, pid, ppid = struct.unpack_from("<IIii", desc, 16)
    fname = desc[40:56].split(b"\0", 1)[0]
    psargs = desc[56:136].split(b"\0", 1)[0]
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        uid=uid,
        gid=gid,
        name=fname.decode("utf-8", "replace"),
        args=psargs.decode("utf-8", "replace"),
    )


def parse_siginfo(desc: bytes) -> SignalInfo | None:
    if len(desc) < SIGINFO_MIN:
        return None
    signo, errno, code = struct.unpack_from("<iii", desc, 0)
    (addr,) = struct.unpack_from("<Q", desc, 16)
    return SignalInfo(signo=signo, code=code, errno=errno, addr=addr)


def parse_auxv(desc: bytes) -> tuple[tuple[int, int], ...]:
    out = []
    for key, value in struct.iter_unpack("<QQ", desc[: len(desc) - len(desc) % 16]):
        if key == AT_NULL:
            break
        out.append((key, value))
    return tuple(out)


def parse_nt_file(desc: bytes) -> tuple[FileMapping, ...]:
    """The NT_FILE table; an inconsistent table yields the entries that are consistent."""
    if len(desc) < 16:
        return ()
    count, page_size = struct.unpack_from("<QQ", desc, 0)
    if count > NT_FILE_MAX_ENTRIES or page_size == 0 or page_size > 1 << 30:
        return ()
    table_end = 16 + count * 24
    if table_end > len(desc):
        return ()
    names = desc[table_end:].split(b"\0")
    out = []
    for i in range(count):
        if i >= len(names):
            break
        start, end, pgoff = struct.unpack_from("<QQQ", desc, 16 + i * 24)
        if end <= start:
            continue
        path = names[i].decode("utf-8", "surrogateescape")
        out.append(FileMapping(start, end, pgoff * page_size, path))
    return tuple(out)


def build_id_from_notes(data: bytes, align: int = 4) -> bytes | None:
    for note in iter_notes(data, align):
        if note.name == b"GNU" and note.type == NT_GNU_BUILD_ID and 0 < len(note.desc) <= BUILD_ID_MAX:
            return note.desc
    return None
