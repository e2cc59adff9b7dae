"""Function names for addresses: the symbol of `.symtab` (preferably from the separate
debug file) or `.dynsym` that contains the address.  Among aliases of one address the
choice is gdb's (a function over an untyped label, a sized symbol over an unsized one,
then the name that sorts last, which puts `raise` before `gsignal` and `__GI_raise`), so
reports read like the backtraces developers see in gdb.

pyelftools locates the symbol and string tables; the entries themselves are unpacked in
bulk with struct, because libc's debug symbol table has over ten thousand entries and
building a pyelftools object per entry would cost more than the whole backtrace.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC = 0, 2, 10
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
_SYM = struct.Struct("<IBBHQQ")
NAME_MAX = 256


@dataclass(frozen=True)
class SymbolHit:
    name: str
    offset: int  # from the symbol's start


class SymbolTable:
    """Sorted, de-aliased function symbols of one ELF file."""

    def __init__(self, entries: list[tuple[int, int, int]], strtab: bytes):
        # entries: (value, size, name offset), one per address, sorted by value
        self._values = [e[0] for e in entries]
        self._entries = entries
        self._strtab = strtab

    @classmethod
    def from_elf(cls, elf) -> SymbolTable | None:
        for name in (".symtab", ".dynsym"):
            table = _read(elf, name)
            if table is not None and table._entries:
                return table
        return None

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, addr: int) -> SymbolHit | None:
        i = bisect.bisect_right(self._values, addr) - 1
        if i < 0:
            return None
        value, size, name_off = self._entries[i]
        if size == 0 or addr < value + size:
            return SymbolHit(self._name(name_off), addr - value)
        # A bigger function may enclose a smaller symbol just before addr.
        for j in range(i - 1, max(-1, i - 8), -1):
            value, size, name_off = self._entries[j]
            if value <= addr < value + size:
                return SymbolHit(self._name(name_off), addr - value)
        return None

    def _name(self, off: int) -> str:
        return _bare(self._strtab, off).decode("utf-8", "replace")[:NAME_MAX]


def _read(elf, name: str) -> SymbolTable | None:
    section = elf.get_section_by_name(name)
    if section is None or section["sh_type"] == "SHT_NOBITS" or section["sh_entsize"] != _SYM.size:
        return None
    try:
        strtab_section = elf.get_section(section["sh_link"])
        strtab = strtab_section.data()
        data = section.data()
    except Exception:
        return None
    best: dict[int, tuple[bool, bool, int, int]] = {}  # value -> (function, sized, size, name offset)
    clashes: dict[int, list[tuple[bool, bool, int, int]]] = {}
    usable = len(data) - len(data) % _SYM.size
    for st_name, st_info, _other, st_shndx, st_value, st_size in _SYM.iter_unpack(data[:usable]):
        stype = st_info & 0xF
        if st_shndx == SHN_UNDEF or st_shndx >= SHN_LORESERVE or st_value == 0:
            continue
        is_func = stype in (STT_FUNC, STT_GNU_IFUNC)
        if not is_func and not (stype == STT_NOTYPE and st_size):
            continue
        candidate = (is_func, st_size > 0, st_size, st_name)
        prev = best.get(st_value)
        if prev is None:
            best[st_value] = candidate
        else:
            clashes.setdefault(st_value, [prev]).append(candidate)
    for value, candidates in clashes.items():  # names are compared only where aliases meet
        best[value] = max(candidates, key=lambda c: (c[0], c[1], _bare(strtab, c[3])))
    entries = sorted((value, c[2], c[3]) for value, c in best.items())
    return SymbolTable(entries, strtab)


def _bare(strtab: bytes, off: int) -> bytes:
    """The name at `off` without its symbol version (`memcpy@GLIBC_2.2.5`); a name with no
    NUL within 4 KiB is cut at NAME_MAX bytes."""
    end = strtab.find(b"\0", off, off + 4096)
    raw = strtab[off : end if end >= 0 else off + NAME_MAX]
    return raw.split(b"@", 1)[0] if b"@" in raw[1:] else raw
