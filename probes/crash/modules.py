"""Which file is mapped where: the module map of a crashed process, from its core alone.

The core's NT_FILE note lists every file mapping; the first page of each mapped ELF file
(which the kernel dumps by default) gives its build id and the link-time address of its
first segment, hence the load bias.  Nothing here opens a file: the module map says what
the process had mapped, and `files.py` decides what may be opened to match it.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from .corefile import CoreDump
from .notes import AT_SYSINFO_EHDR, FileMapping, build_id_from_notes

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
PT_NOTE = 4
VDSO_NAME = "[vdso]"


@dataclass(frozen=True)
class ImageFacts:
    """What the first page of a mapped 64-bit ELF file says about it."""

    build_id: bytes | None
    first_vaddr: int  # p_vaddr of the segment that maps file offset 0, page-aligned


def image_facts(image: bytes) -> ImageFacts | None:
    """Parse an ELF header and its program headers from the start of an image. Pure."""
    if len(image) < 64 or image[:4] != ELF_MAGIC or image[4] != 2 or image[5] != 1:
        return None
    (phoff,) = struct.unpack_from("<Q", image, 32)
    phentsize, phnum = struct.unpack_from("<HH", image, 54)
    if phentsize != 56 or phnum == 0 or phoff + phnum * 56 > len(image):
        return None
    first_vaddr = None
    build_id = None
    for i in range(phnum):
        p_type, _f, p_offset, p_vaddr, _pa, p_filesz, _m, p_align = struct.unpack_from("<IIQQQQQQ", image, phoff + i * 56)
        if p_type == PT_LOAD and first_vaddr is None and p_offset == 0:
            first_vaddr = p_vaddr & ~0xFFF
        elif p_type == PT_NOTE and build_id is None and p_offset + p_filesz <= len(image):
            build_id = build_id_from_notes(image[p_offset : p_offset + p_filesz], 8 if p_align == 8 else 4)
    if first_vaddr is None:
        return None
    return ImageFacts(build_id=build_id, first_vaddr=first_vaddr)


@dataclass(frozen=True)
class ModuleInfo:
    path: str  # as the process mapped it (its mount namespace), or "[vdso]"
    start: int
    end: int
    base: int  # where file offset 0 is mapped
    bias: int | None  # base minus the link-time address; None when the image is not in the core
    build_id: bytes | None
    mappings: tuple[FileMapping, ...]
    vdso: bool = False


class ModuleMap:
    def __init__(self, modules: tuple[ModuleInfo, ...]):
        entries = sorted(((mp.start, mp.end, m) for m in modules for mp in m.mappings), key=lambda t: t[0])
        self._starts = [s for s, _, _ in entries]
        self._entries = entries

    def at(self, addr: int) -> ModuleInfo | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            start, end, module = self._entries[i]
            if start <= addr < end:
                return module
        return None


def build_module_map(core: CoreDump) -> ModuleMap:
    modules: list[ModuleInfo] = []
    open_runs: dict[str, list[FileMapping]] = {}
    order: list[list[FileMapping]] = []
    for mapping in sorted(core.files, key=lambda f: f.start):
        run = open_runs.get(mapping.path)
        if mapping.offset == 0 or run is None:
            run = [mapping]
            open_runs[mapping.path] = run
            order.append(run)
        else:
            run.append(mapping)
    for run in order:
        first = run[0]
        base = first.start - first.offset
        image = core.memory.read_at_most(first.start, 4096) if first.offset == 0 else b""
        if image and image[:4] != ELF_MAGIC:
            continue  # a data file (locale archive, font, database): not code
        facts = image_facts(image) if image else None
        modules.append(
            ModuleInfo(
                path=first.path,
                start=first.start,
                end=max(m.end for m in run),
                base=base,
                bias=(base - facts.first_vaddr) if facts else None,
                build_id=facts.build_id if facts else None,
                mappings=tuple(run),
            )
        )
    vdso = core.aux(AT_SYSINFO_EHDR)
    if vdso:
        seg = core.segment_at(vdso)
        image = core.memory.read_at_most(vdso, 4096)
        facts = image_facts(image)
        if seg is not None and facts is not None:
            end = seg.end
            modules.append(
                ModuleInfo(
                    path=VDSO_NAME,
                    start=vdso,
                    end=end,
                    base=vdso,
                    bias=vdso - facts.first_vaddr,
                    build_id=facts.build_id,
                    mappings=(FileMapping(vdso, end, 0, VDSO_NAME),),
                    vdso=True,
                )
            )
    return ModuleMap(tuple(modules))
