"""Names for addresses: the symbol of `.symtab` (preferably from the separate debug file)
or `.dynsym` that contains the address, as gdb's minimal symbols do it, so reports read like
the backtraces developers see in gdb:

- a sized symbol covers its size; an unsized one covers up to the next symbol of its own
  section (a label in `.fini` never names an address in `.data`);
- functions and labels name code; sized data objects name only the bytes they occupy
  (a jump into a buffer shows the buffer);
- among aliases of one address: a function over an untyped label, a sized symbol over an
  unsized one, a global or weak symbol over a local one (`__stack_chk_fail` rather than
  `__stack_chk_fail_local`), then the name that sorts last (`raise` rather than
  `gsignal` or `__GI_raise`).

pyelftools locates the symbol and string tables; the entries themselves are unpacked in
bulk with struct, because libc's debug symbol table has over ten thousand entries and
building a pyelftools object per entry would cost more than the whole backtrace.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from dataclasses import dataclass

from .elfbounds import section_data

STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_TLS, STT_GNU_IFUNC = 0, 1, 2, 6, 10
STB_LOCAL = 0
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHF_ALLOC = 0x2
_SYM = struct.Struct("<IBBHQQ")
SYMTAB_MAX = 400_000 * _SYM.size  # entries past this many would cost more memory than a report may
NAME_MAX = 4096  # a mangled name is demangled whole; the payload cuts what it shows


@dataclass(frozen=True)
class SymbolHit:
    name: str
    offset: int  # from the symbol's start


class SymbolTable:
    """Sorted, de-aliased symbols of one ELF file: [start, end) -> name."""

    def __init__(self, starts, ends, names, strtab: bytes):  # sequences of int: lists or arrays
        self._starts = starts
        self._ends = ends
        self._names = names  # offsets into strtab
        self._strtab = strtab

    @classmethod
    def from_elf(cls, elf) -> SymbolTable | None:
        sections = _alloc_sections(elf)
        for name in (".symtab", ".dynsym"):
            table = _read(elf, name, sections)
            if table is not None and len(table):
                return table
        return None

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, addr: int) -> SymbolHit | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        # A bigger function may enclose smaller symbols just before addr.
        for j in range(i, max(-1, i - 8), -1):
            if self._starts[j] <= addr < self._ends[j]:
                return SymbolHit(self._name(self._names[j]), addr - self._starts[j])
        return None

    def _name(self, off: int) -> str:
        return _bare(self._strtab, off).decode("utf-8", "replace")

    def arrays(self) -> tuple:
        return self._starts, self._ends, self._names, self._strtab


def _alloc_sections(elf) -> dict[int, tuple[int, int]]:
    """Index -> [start, end) of the sections the program loads."""
    out = {}
    try:
        for i, section in enumerate(elf.iter_sections()):
            h = section.header
            if h["sh_flags"] & SHF_ALLOC and h["sh_size"]:
                out[i] = (h["sh_addr"], h["sh_addr"] + h["sh_size"])
    except Exception:
        return {}
    return out


def _read(elf, name: str, sections: dict[int, tuple[int, int]]) -> SymbolTable | None:
    section = elf.get_section_by_name(name)
    if section is None or section["sh_type"] == "SHT_NOBITS" or section["sh_entsize"] != _SYM.size:
        return None
    strtab_section = elf.get_section(section["sh_link"])
    strtab = section_data(elf, strtab_section)  # TooLarge says why a claimed size is refused
    data = section_data(elf, section, SYMTAB_MAX)
    # value -> (code, sized, global, size, name offset, section)
    best: dict[int, tuple[bool, bool, bool, int, int, int]] = {}
    clashes: dict[int, list[tuple[bool, bool, bool, int, int, int]]] = {}
    usable = len(data) - len(data) % _SYM.size
    for st_name, st_info, _other, st_shndx, st_value, st_size in _SYM.iter_unpack(data[:usable]):
        stype = st_info & 0xF
        if st_shndx == SHN_UNDEF or st_shndx >= SHN_LORESERVE or st_value == 0 or st_name == 0:
            continue
        is_code = stype in (STT_FUNC, STT_GNU_IFUNC)
        if stype == STT_NOTYPE:
            pass
        elif stype == STT_OBJECT:
            if not st_size:
                continue
        elif not is_code:
            continue  # sections, files, TLS offsets: not addresses of the process
        candidate = (is_code, st_size > 0, (st_info >> 4) != STB_LOCAL, st_size, st_name, st_shndx)
        prev = best.get(st_value)
        if prev is None:
            best[st_value] = candidate
        else:
            clashes.setdefault(st_value, [prev]).append(candidate)
    for value, candidates in clashes.items():  # names are compared only where aliases meet
        best[value] = max(candidates, key=lambda c: (c[0], c[1], c[2], _bare(strtab, c[4])))
    values = sorted(best)
    starts, ends, names = array("Q"), array("Q"), array("L")
    for k, value in enumerate(values):
        _code, sized, _global, size, name_off, shndx = best[value]
        if sized:
            end = value + size
        else:  # up to the next symbol, within the symbol's own section
            section_end = sections.get(shndx, (value, value))[1]
            nxt = values[k + 1] if k + 1 < len(values) else section_end
            end = min(nxt, section_end)
        if end > value:
            starts.append(value)
            ends.append(end)
            names.append(name_off)
    return SymbolTable(starts, ends, names, strtab)


def _bare(strtab: bytes, off: int) -> bytes:
    """The name at `off` without its symbol version (`memcpy@GLIBC_2.2.5`); a name with no
    NUL within NAME_MAX bytes is cut there."""
    end = strtab.find(b"\0", off, off + NAME_MAX)
    raw = strtab[off : end if end >= 0 else off + NAME_MAX]
    return raw.split(b"@", 1)[0] if b"@" in raw[1:] else raw
