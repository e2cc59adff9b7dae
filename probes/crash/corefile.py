"""An ELF core reader: bytes in, threads, notes and the memory an unwinder needs out.

The kernel hands a core to its handler through a pipe, and a core can be many gigabytes,
so on a pipe this reader never goes back and never holds more than it needs.  It is a
sans-I/O state machine (as h11 is for HTTP): `next_request()` says which byte range of the
file it wants next; the caller fetches it however it can and hands the bytes to `feed()`.

On a pipe (`seekable=False`) every request is at or after the previous one and the caller
skips to it (splice to /dev/null).  What is kept of the memory segments is planned once the
notes are known, within `max_kept_bytes`, most important first: the crashing thread's
stack, the first page of every mapped file (ELF headers and build id), the vDSO, the first
part of every other thread's stack, then the rest of their stacks and the top of the main
stack.  A core whose notes come after its memory (gdb's gcore writes them last) is read
speculatively: the first page and the top of every writable segment are kept, then pruned;
what that misses is said in `problems`.

A seekable core (a file, or bytes in memory) is read where it is needed: the reader asks
only for the headers and notes, and `SeekableMemory` reads the pages the unwinder touches,
within the same budget, wherever they are in the file.

Every length is checked before it is used; a truncated or crafted core ends the reading
with a `problems` entry and whatever was gathered, never an exception or a large
allocation.  ELF parsing is done with struct here rather than pyelftools because
pyelftools needs a seekable stream of the whole file.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import notes as N
from .unwind.arch import stack_pointer as arch_stack_pointer

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
PF_X, PF_W, PF_R = 1, 2, 4
PN_XNUM = 0xFFFF
EHDR_SIZE = 64
PHDR_SIZE = 56
PAGE = 4096
MiB = 1 << 20


class CoreFormatError(ValueError):
    """Raised only inside the reader; the caller sees it as a `problems` entry."""


class NotACore(CoreFormatError):
    """The input is no ELF core at all (another file, not an ELF file)."""


@dataclass(frozen=True)
class ReadLimits:
    max_core_bytes: int = 2048 * MiB  # a pipe is never read past this offset (crash_max_core_size)
    max_note_bytes: int = 8 * MiB
    max_phdrs: int = 65535
    stack_above: int = 256 * 1024  # bytes kept from each thread's stack pointer upwards
    stack_below: int = 512  # and below it (the x86-64 red zone is 128)
    main_stack_top: int = 64 * 1024
    image_bytes: int = PAGE
    vdso_bytes: int = 64 * 1024
    other_stack_first: int = 32 * 1024  # of every other thread's stack, before any thread gets more
    speculative_top: int = 128 * 1024
    max_kept_bytes: int = 24 * MiB


@dataclass(frozen=True)
class Request:
    """`length` bytes at file `offset`; feed() them (fewer means end of file)."""

    offset: int
    length: int


@dataclass(frozen=True)
class Segment:
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int
    align: int = 0

    @property
    def end(self) -> int:
        return self.vaddr + self.memsz

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)

    @property
    def writable(self) -> bool:
        return bool(self.flags & PF_W)


class Memory:
    """The kept pieces of the process's memory; reads outside them return None."""

    def __init__(self, chunks: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...] = ()):
        merged: list[tuple[int, bytearray]] = []
        for addr, data in sorted(chunks):
            if not data:
                continue
            if merged and addr <= merged[-1][0] + len(merged[-1][1]):
                base, buf = merged[-1]
                overlap = base + len(buf) - addr
                buf.extend(data[overlap:])
            else:
                merged.append((addr, bytearray(data)))
        self._starts = [a for a, _ in merged]
        self._chunks = [bytes(b) for _, b in merged]

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks)

    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple((a, a + len(c)) for a, c in zip(self._starts, self._chunks, strict=True))

    def read(self, addr: int, size: int) -> bytes | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or size < 0:
            return None
        off = addr - self._starts[i]
        chunk = self._chunks[i]
        if off + size > len(chunk):
            return None
        return chunk[off : off + size]

    def read_u64(self, addr: int) -> int | None:
        data = self.read(addr, 8)
        return None if data is None else int.from_bytes(data, "little")

    def read_at_most(self, addr: int, size: int) -> bytes:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return b""
        off = addr - self._starts[i]
        return self._chunks[i][off : off + size] if off < len(self._chunks[i]) else b""


MAX_READ = 1 << 20  # the largest single read the unwinder or the module map makes


class SeekableMemory:
    """The memory of a core that can be read anywhere: pages are read from the file when
    first asked for and kept, at most `budget` bytes of them."""

    def __init__(self, read_at: Callable[[int, int], bytes], segments: tuple[Segment, ...], budget: int,
                 file_size: int):
        self._read_at = read_at
        self._segments = segments
        self._budget = budget
        self._size = file_size
        self._pages: dict[int, bytes | None] = {}
        self._kept = 0
        self.exhausted = False

    def __len__(self) -> int:
        return self._kept

    def _page(self, n: int) -> bytes | None:
        if n in self._pages:
            return self._pages[n]
        addr = n * PAGE
        seg = _segment_at(self._segments, addr)
        data = None
        if seg is not None and addr < seg.vaddr + seg.filesz:
            if self._kept + PAGE > self._budget:
                self.exhausted = True
                return None
            offset = seg.offset + (addr - seg.vaddr)
            length = min(PAGE, seg.vaddr + seg.filesz - addr, max(0, self._size - offset))
            if length > 0:
                try:
                    data = self._read_at(offset, length)
                except OSError:
                    data = None
                self._kept += len(data or b"")
        self._pages[n] = data
        return data

    def read_at_most(self, addr: int, size: int) -> bytes:
        size = min(size, MAX_READ)
        parts = []
        pos, end = addr, addr + size
        while pos < end:
            page = self._page(pos // PAGE)
            if page is None:
                break
            off = pos % PAGE
            if off >= len(page):
                break
            piece = page[off : off + end - pos]
            parts.append(piece)
            pos += len(piece)
            if len(page) < PAGE:
                break
        return b"".join(parts)

    def read(self, addr: int, size: int) -> bytes | None:
        if size < 0 or size > MAX_READ:
            return None
        data = self.read_at_most(addr, size)
        return data if len(data) == size else None

    def read_u64(self, addr: int) -> int | None:
        data = self.read(addr, 8)
        return None if data is None else int.from_bytes(data, "little")


@dataclass(frozen=True)
class CoreDump:
    machine: int
    segments: tuple[Segment, ...]
    threads: tuple[N.ThreadStatus, ...]  # the thread that took the signal comes first
    process: N.ProcessInfo | None
    siginfo: N.SignalInfo | None
    auxv: tuple[tuple[int, int], ...]
    files: tuple[N.FileMapping, ...]
    memory: Memory | SeekableMemory
    problems: tuple[str, ...]  # what makes the reading incomplete: the report is an error
    bytes_read: int
    remarks: tuple[str, ...] = ()  # what was left out on purpose (budget, a gcore on a pipe)
    not_a_core: bool = False  # the input was no ELF core at all

    def aux(self, key: int) -> int | None:
        return _aux(self.auxv, key)

    @property
    def memory_gap(self) -> str | None:
        """Why memory the unwinder asks for may be missing, beyond what the kernel dumped."""
        if isinstance(self.memory, SeekableMemory) and self.memory.exhausted:
            return "the memory budget was spent"
        return self.remarks[0] if self.remarks else None

    def segment_at(self, addr: int) -> Segment | None:
        return _segment_at(self.segments, addr)

    @property
    def pid(self) -> int | None:
        if self.process is not None and self.process.pid > 0:
            return self.process.pid
        return self.threads[0].tid if self.threads else None


class CoreReader:
    """The state machine; see the module docstring for the protocol."""

    def __init__(
        self,
        limits: ReadLimits | None = None,
        stack_pointer: Callable[[int, bytes], int | None] = arch_stack_pointer,
        *,
        seekable: bool = False,
        file_size: int | None = None,
    ):
        self.limits = limits or ReadLimits()
        self.seekable = seekable  # requests may go back; memory is not requested at all
        self._file_size = file_size
        self._remarks: list[str] = []
        self._stack_pointer = stack_pointer
        self._state = "ehdr"
        self._pos = 0  # the offset the next unread byte of the input has
        self._pending: Request | None = None
        self._problems: list[str] = []
        self._not_a_core = False
        self._machine = 0
        self._phoff = self._phnum = 0
        self._segments: list[Segment] = []
        self._agenda: list[tuple[int, str, Segment]] = []
        self._notes_known = False
        self._notes_after_loads = False
        self._threads: list[N.ThreadStatus] = []
        self._process: N.ProcessInfo | None = None
        self._siginfo: N.SignalInfo | None = None
        self._auxv: tuple[tuple[int, int], ...] = ()
        self._files: tuple[N.FileMapping, ...] = ()
        self._wanted: list[tuple[int, int]] = []  # exact vaddr ranges, once notes are known
        self._chunks: list[tuple[int, bytes]] = []
        self._kept = 0
        self._queue: list[tuple[int, int, int, str]] = []  # (offset, length, vaddr, kind)
        self._done = False

    # --- protocol ------------------------------------------------------------------

    def next_request(self) -> Request | None:
        if self._done:
            return None
        if self._pending is None:
            self._pending = self._advance()
        return self._pending

    def feed(self, data: bytes, reached: int | None = None) -> None:
        """The bytes of the pending request; `reached` is where the input ended instead,
        when it ended before the request's offset."""
        req = self._pending
        if req is None:
            raise RuntimeError("feed() without a pending request")
        self._pending = None
        if reached is not None and reached < req.offset:
            self._pos = reached
            self._problem(f"core truncated at byte {reached}")
            self._done = True
            return
        self._pos = req.offset + len(data)
        short = len(data) < req.length
        if short and self._state == "body":
            self._problem(f"core truncated at byte {self._pos}")  # said first: it explains the rest
        try:
            self._consume(req, data)
        except CoreFormatError as e:
            self._problem(str(e))
            self._not_a_core = isinstance(e, NotACore)
            self._done = True
            return
        if short:
            self._problem(f"core truncated at byte {self._pos}")
            self._done = True

    def abort(self, reason: str) -> None:
        """Stop reading (the input failed); what was gathered stays."""
        self._pending = None
        self._problem(reason)
        self._done = True

    def result(self, memory: SeekableMemory | None = None) -> CoreDump:
        """The core as read; a seekable core's memory is the caller's `SeekableMemory`."""
        self._finish_speculation()
        return CoreDump(
            machine=self._machine,
            segments=tuple(self._segments),
            threads=tuple(self._threads),
            process=self._process,
            siginfo=self._siginfo,
            auxv=self._auxv,
            files=self._files,
            memory=memory if memory is not None else Memory(self._chunks),
            problems=tuple(self._problems),
            bytes_read=self._pos,
            remarks=tuple(self._remarks),
            not_a_core=self._not_a_core,
        )

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    # --- states ----------------------------------------------------------------------

    def _advance(self) -> Request | None:
        if self._state == "ehdr":
            return Request(0, EHDR_SIZE)
        if self._state == "phdrs":
            return Request(self._phoff, self._phnum * PHDR_SIZE)
        while self._queue or self._agenda:
            if self._queue:
                offset, length, _vaddr, _kind = self._queue[0]
                if offset < self._pos and not self.seekable:
                    self._queue.pop(0)
                    continue
                if offset + length > self.limits.max_core_bytes and not self.seekable:
                    self._problem(f"core larger than the {self.limits.max_core_bytes // MiB} MiB read limit "
                                  "(crash_max_core_size); the rest was not read")
                    self._done = True
                    return None
                return Request(offset, length)
            _, kind, seg = self._agenda.pop(0)
            self._schedule(kind, seg)
        self._done = True
        return None

    def _consume(self, req: Request, data: bytes) -> None:
        if self._state == "ehdr":
            self._parse_ehdr(data)
            return
        if self._state == "phdrs":
            self._parse_phdrs(data)
            return
        offset, _length, vaddr, kind = self._queue.pop(0)  # for notes, vaddr holds the alignment
        if kind == "note":
            self._parse_notes(data, 8 if vaddr == 8 else 4)
        elif data:
            self._keep(vaddr, data)

    def _parse_ehdr(self, data: bytes) -> None:
        if len(data) < EHDR_SIZE:
            raise NotACore("not an ELF core: the input is shorter than an ELF header")
        if data[:4] != ELF_MAGIC:
            raise NotACore("not an ELF core: bad magic")
        if data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
            raise CoreFormatError("unsupported core: only 64-bit little-endian cores are read")
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        (phoff,) = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        if e_type != ET_CORE:
            raise NotACore(f"not a core file (ELF type {e_type})")
        if phentsize != PHDR_SIZE:
            raise CoreFormatError(f"unexpected program header size {phentsize}")
        if phnum == PN_XNUM:
            raise CoreFormatError("core has more than 65534 segments; not supported")
        if phnum == 0:
            raise CoreFormatError("core has no program headers")
        if phnum > self.limits.max_phdrs:
            raise CoreFormatError(f"core has {phnum} program headers; the limit is {self.limits.max_phdrs}")
        if phoff < EHDR_SIZE:
            raise CoreFormatError("program headers overlap the ELF header")
        self._machine = e_machine
        self._phoff, self._phnum = phoff, phnum
        self._state = "phdrs"

    def _parse_phdrs(self, data: bytes) -> None:
        if len(data) < self._phnum * PHDR_SIZE:
            raise CoreFormatError("core truncated in its program headers")
        end_of_headers = self._phoff + len(data)
        agenda: list[tuple[int, str, Segment]] = []
        for i in range(self._phnum):
            p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_align = struct.unpack_from(
                "<IIQQQQQQ", data, i * PHDR_SIZE
            )
            seg = Segment(p_offset, p_vaddr, p_filesz, p_memsz, p_flags)
            if p_type == PT_LOAD:
                if p_vaddr + p_memsz > 1 << 64 or p_filesz > p_memsz and p_memsz:
                    self._problem(f"ignored a malformed memory segment at {p_vaddr:#x}")
                    continue
                self._segments.append(seg)
                if p_filesz:
                    agenda.append((p_offset, "load", seg))
            elif p_type == PT_NOTE and p_filesz:
                agenda.append((p_offset, "note", Segment(p_offset, 0, p_filesz, 0, 0, p_align)))
        agenda.sort(key=lambda t: (t[0], t[1] != "note"))
        notes = [a for a in agenda if a[1] == "note"]
        self._segments.sort(key=lambda s: s.vaddr)
        if self._file_size is not None:
            ends = [a[0] + a[2].filesz for a in agenda]
            if ends and max(ends) > self._file_size:
                self._problem(f"core truncated at byte {self._file_size}")
        if not notes:
            self._problem("core has no notes (no threads or registers)")
        elif self.seekable:
            agenda = notes[:1]  # the memory is read where the unwinder needs it
        elif any(a[1] == "load" and a[0] < notes[0][0] for a in agenda):
            self._notes_after_loads = True
        self._agenda = [a for a in agenda if a[0] + a[2].filesz > end_of_headers]
        self._state = "body"

    def _schedule(self, kind: str, seg: Segment) -> None:
        start = seg.offset if self.seekable else max(seg.offset, self._pos)
        if kind == "note":
            if self._notes_known:
                return  # a second PT_NOTE adds nothing the first did not
            if start != seg.offset:
                self._problem("notes overlap earlier data; ignored")
                return
            length = min(seg.filesz, self.limits.max_note_bytes)
            if length < seg.filesz:
                self._problem(f"notes are {seg.filesz} bytes; read the first {length}")
            self._queue.append((seg.offset, length, seg.align, "note"))
            return
        ranges = self._wanted_in(seg) if self._notes_known else self._speculative_in(seg)
        for lo, hi in ranges:
            off = seg.offset + (lo - seg.vaddr)
            if off < start:
                lo += start - off
                off = start
            if hi > lo:
                self._queue.append((off, hi - lo, lo, "load"))

    # --- notes -------------------------------------------------------------------------

    def _parse_notes(self, data: bytes, align: int) -> None:
        for note in N.iter_notes(data, align):
            if note.name != b"CORE":
                continue
            if note.type == N.NT_PRSTATUS:
                st = N.parse_prstatus(note.desc)
                if st is not None:
                    self._threads.append(st)
            elif note.type == N.NT_PRPSINFO and self._process is None:
                self._process = N.parse_prpsinfo(note.desc)
            elif note.type == N.NT_SIGINFO and self._siginfo is None:
                self._siginfo = N.parse_siginfo(note.desc)
            elif note.type == N.NT_AUXV and not self._auxv:
                self._auxv = N.parse_auxv(note.desc)
            elif note.type == N.NT_FILE and not self._files:
                self._files = N.parse_nt_file(note.desc)
        if not self._threads:
            self._problem("core has no thread status notes")
        self._notes_known = True
        if self.seekable:
            return
        if self._notes_after_loads:
            self._remark("the core's notes come after its memory (as gdb writes cores) and it came "
                         f"through a pipe: only the top {self.limits.speculative_top // 1024} KiB of each "
                         "writable segment was kept before the notes said where the stacks are")
        self._wanted = self._plan()
        self._finish_speculation()

    def _plan(self) -> list[tuple[int, int]]:
        """The memory to keep, allocated from the budget most important first: the crashing
        thread's stack and the images' first pages, then the start of every other stack,
        then the rest of those stacks and the top of the main stack."""
        lim = self.limits
        tiers: list[list[tuple[int, int]]] = [[], [], []]
        for i, t in enumerate(self._threads):
            sp = self._stack_pointer(self._machine, t.regs)
            if not sp:
                continue
            lo, hi = max(0, sp - lim.stack_below), sp + lim.stack_above
            if i == 0:
                tiers[0].append((lo, hi))
            else:
                split = min(hi, sp + lim.other_stack_first)
                tiers[1].append((lo, split))
                tiers[2].append((split, hi))
        for f in self._files:
            if f.offset == 0:
                tiers[0].append((f.start, min(f.end, f.start + lim.image_bytes)))
        vdso = _aux(self._auxv, N.AT_SYSINFO_EHDR)
        if vdso:
            tiers[0].append((vdso, vdso + lim.vdso_bytes))
        execfn = _aux(self._auxv, N.AT_EXECFN) or _aux(self._auxv, N.AT_RANDOM)
        if execfn:
            seg = _segment_at(self._segments, execfn)  # sorted by _parse_phdrs
            if seg is not None:
                tiers[2].append((max(seg.vaddr, seg.end - lim.main_stack_top), seg.end))
        budget = lim.max_kept_bytes
        planned: list[tuple[int, int]] = []
        for tier in tiers:
            for lo, hi in tier:
                for a, b in _dumped_parts(self._segments, lo, hi):
                    take = min(b - a, budget)
                    if take < b - a:
                        self._remark(f"the memory budget ({lim.max_kept_bytes // MiB} MiB) was spent: "
                                     "some stacks were kept only in part")
                    if take > 0:
                        planned.append((a, a + take))
                        budget -= take
        return _merge(planned)

    def _wanted_in(self, seg: Segment) -> list[tuple[int, int]]:
        lo_seg, hi_seg = seg.vaddr, seg.vaddr + seg.filesz
        out = []
        for lo, hi in self._wanted:
            lo, hi = max(lo, lo_seg), min(hi, hi_seg)
            if lo < hi:
                out.append((lo, hi))
        return _merge(out)

    def _speculative_in(self, seg: Segment) -> list[tuple[int, int]]:
        lim = self.limits
        lo_seg, hi_seg = seg.vaddr, seg.vaddr + seg.filesz
        out = [(lo_seg, min(hi_seg, lo_seg + lim.image_bytes))]
        if seg.writable:
            out.append((max(lo_seg, hi_seg - lim.speculative_top), hi_seg))
        return _merge(out)

    def _keep(self, vaddr: int, data: bytes) -> None:
        if self._kept + len(data) > self.limits.max_kept_bytes:
            room = self.limits.max_kept_bytes - self._kept
            if room <= 0:
                return
            self._remark("the memory budget was spent; some stacks were not kept")
            data = data[:room]
        self._chunks.append((vaddr, bytes(data)))
        self._kept += len(data)

    def _finish_speculation(self) -> None:
        """Once the notes are known, drop what was kept only in case it was needed."""
        if not (self._notes_known and self._notes_after_loads and self._chunks):
            return
        kept: list[tuple[int, bytes]] = []
        for addr, data in self._chunks:
            for lo, hi in self._wanted:
                a, b = max(lo, addr), min(hi, addr + len(data))
                if a < b:
                    kept.append((a, data[a - addr : b - addr]))
        self._chunks = kept
        self._kept = sum(len(d) for _, d in kept)
        self._notes_after_loads = False

    def _problem(self, text: str) -> None:
        if text not in self._problems:
            self._problems.append(text)

    def _remark(self, text: str) -> None:
        if text not in self._remarks:
            self._remarks.append(text)


def _aux(auxv: tuple[tuple[int, int], ...], key: int) -> int | None:
    for k, v in auxv:
        if k == key:
            return v
    return None


def _segment_at(segments: list[Segment] | tuple[Segment, ...], addr: int) -> Segment | None:
    """The segment holding `addr`, in segments sorted by address (they do not overlap in a
    kernel core; with a crafted overlap, the one starting last at or below `addr` counts)."""
    i = bisect.bisect_right(segments, addr, key=lambda s: s.vaddr) - 1
    if i >= 0 and segments[i].vaddr <= addr < segments[i].end:
        return segments[i]
    return None


def _dumped_parts(segments: list[Segment], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of [lo, hi) that the core holds bytes for (segments sorted by address)."""
    out = []
    i = max(0, bisect.bisect_right(segments, lo, key=lambda s: s.vaddr) - 1)
    while i < len(segments) and segments[i].vaddr < hi:
        seg = segments[i]
        a, b = max(lo, seg.vaddr), min(hi, seg.vaddr + seg.filesz)
        if a < b:
            out.append((a, b))
        i += 1
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def parse_core(data: bytes, limits: ReadLimits | None = None, *, seekable: bool = False) -> CoreDump:
    """The whole reader over bytes already in memory: read as a pipe would give them, or
    (`seekable`) where they are needed."""
    if not seekable:
        reader = CoreReader(limits)
        while (req := reader.next_request()) is not None:
            reader.feed(data[req.offset : req.offset + req.length], reached=min(req.offset, len(data)))
        return reader.result()
    view = memoryview(data)
    return read_seekable(lambda offset, n: bytes(view[offset : offset + n]), len(data), limits)


def read_seekable(read_at: Callable[[int, int], bytes], size: int, limits: ReadLimits | None = None) -> CoreDump:
    """Headers and notes now; memory later, where the unwinder asks for it."""
    reader = CoreReader(limits, seekable=True, file_size=size)
    while (req := reader.next_request()) is not None:
        data = read_at(req.offset, req.length) if req.offset < size else b""
        reader.feed(data, reached=min(req.offset, size) if not data else None)
    return reader.result(SeekableMemory(read_at, reader.segments, reader.limits.max_kept_bytes, size))
