"""Source file and line for an address, from DWARF `.debug_line` (pyelftools).

Only the compile unit that holds the address is touched: `.debug_aranges` names it, its
top DIE gives the line program, and only that program is decoded.  Sections are exposed
to pyelftools as lazy windows over the file, and compressed sections (SHF_COMPRESSED,
zlib) are inflated only as far as the reads go, so libc's 6 MB of `.debug_info` is not
inflated to find one unit near its start.
"""

from __future__ import annotations

import bisect
import inspect
import io
import os
import posixpath
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from .elfbounds import SECTION_MAX, TooLarge, stream_size

SHF_COMPRESSED = 0x800
ELFCOMPRESS_ZLIB = 1
INFLATE_MAX = 2 * SECTION_MAX  # of a compressed DWARF section, inflated from its start
MAX_CUS_SCANNED = 4096
NAME_MAX = 256


@dataclass(frozen=True)
class SourceLine:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class _View(io.RawIOBase):
    """A read-only, seekable stream of `_size` bytes; `read` is the subclass's."""

    _size: int
    _pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos


class _Window(_View):
    """`size` bytes of `f` from `start`, read in blocks (pyelftools reads a field at a time)."""

    BLOCK = 64 * 1024

    def __init__(self, f, start: int, size: int):
        self._f, self._start, self._size = f, start, size
        self._block_at = -1
        self._block = b""

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._size - self._pos
        n = max(0, min(n, self._size - self._pos))
        if n > SECTION_MAX:
            raise TooLarge(f"a DWARF read of {n} bytes; at most {SECTION_MAX} are read at once")
        pos = self._pos
        if not (self._block_at <= pos and pos + n <= self._block_at + len(self._block)):
            self._f.seek(self._start + pos)
            if n > self.BLOCK:
                data = self._f.read(n)
                self._pos += len(data)
                return data
            self._block = self._f.read(min(self.BLOCK, self._size - pos))
            self._block_at = pos
        off = pos - self._block_at
        data = self._block[off : off + n]
        self._pos += len(data)
        return data


class _Inflating(_View):
    """A zlib-compressed section, inflated up to the furthest read."""

    CHUNK = 64 * 1024

    def __init__(self, f, start: int, size: int, out_size: int):
        self._src = _Window(f, start, size)
        self._z = zlib.decompressobj()
        self._buf = bytearray()
        self._size = out_size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._size - self._pos
        self._fill(self._pos + n)
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += len(data)
        return data

    def _fill(self, upto: int) -> None:
        upto = min(upto, self._size)
        if upto > INFLATE_MAX:
            raise TooLarge(f"a compressed DWARF section read {upto} bytes in; at most {INFLATE_MAX} are inflated")
        while len(self._buf) < upto and not self._z.eof:
            data = self._z.unconsumed_tail or self._src.read(self.CHUNK)
            if not data:
                break
            self._buf += self._z.decompress(data, upto - len(self._buf) + self.CHUNK)


def _section_stream(elf, section):
    """(stream, size) for a DWARF section, or None if it cannot be read here."""
    header = section.header
    if section["sh_type"] == "SHT_NOBITS":
        return None
    if header["sh_offset"] + header["sh_size"] > stream_size(elf.stream):
        return None  # claims bytes the file does not have
    if header["sh_flags"] & SHF_COMPRESSED:
        raw = elf.stream
        raw.seek(header["sh_offset"])
        chdr = raw.read(24)
        if len(chdr) < 24:
            return None
        ch_type, _res, ch_size, _align = struct.unpack("<IIQQ", chdr)
        if ch_type != ELFCOMPRESS_ZLIB or ch_size > 1 << 40:
            return None  # zstd needs a module the standard library does not have yet
        return _Inflating(raw, header["sh_offset"] + 24, header["sh_size"] - 24, ch_size), ch_size
    return _Window(elf.stream, header["sh_offset"], header["sh_size"]), header["sh_size"]


_SECTIONS = (".debug_info", ".debug_abbrev", ".debug_str", ".debug_line", ".debug_line_str",
             ".debug_aranges", ".debug_str_offsets", ".debug_addr", ".debug_rnglists", ".debug_ranges")


def _dwarf_info_extra() -> dict[str, None]:
    """DWARFInfo's arguments that pyelftools 0.29 (Debian 12's) does not take yet."""
    from elftools.dwarf.dwarfinfo import DWARFInfo

    return {"debug_types_sec": None} if "debug_types_sec" in inspect.signature(DWARFInfo).parameters else {}


def _dwarf_info(elf, supplementary=None, *, lines_needed: bool = True):
    """The DWARF of `elf`; `supplementary` is the file its `.gnu_debugaltlink` names (dwz's
    common file), where names and abstract functions of inline calls may live."""
    from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DwarfConfig, DWARFInfo

    descs = {}
    for name in _SECTIONS:
        section = elf.get_section_by_name(name)
        got = _section_stream(elf, section) if section is not None else None
        descs[name] = (
            DebugSectionDescriptor(stream=got[0], name=name, global_offset=None, size=got[1], address=0)
            if got else None
        )
    if descs[".debug_info"] is None or descs[".debug_abbrev"] is None:
        return None
    if lines_needed and descs[".debug_line"] is None:
        return None
    dwarf = DWARFInfo(
        config=DwarfConfig(little_endian=True, default_address_size=8, machine_arch=elf.get_machine_arch()),
        debug_info_sec=descs[".debug_info"],
        debug_aranges_sec=descs[".debug_aranges"],
        debug_abbrev_sec=descs[".debug_abbrev"],
        debug_frame_sec=None,
        eh_frame_sec=None,
        debug_str_sec=descs[".debug_str"],
        debug_loc_sec=None,
        debug_ranges_sec=descs[".debug_ranges"],
        debug_line_sec=descs[".debug_line"],
        debug_pubtypes_sec=None,
        debug_pubnames_sec=None,
        debug_addr_sec=descs[".debug_addr"],
        debug_str_offsets_sec=descs[".debug_str_offsets"],
        debug_line_str_sec=descs[".debug_line_str"],
        debug_loclists_sec=None,
        debug_rnglists_sec=descs[".debug_rnglists"],
        debug_sup_sec=None,
        gnu_debugaltlink_sec=None,
        **_dwarf_info_extra(),
    )
    # pyelftools 0.29 (Debian 12's) cannot follow references into a supplementary file.
    if supplementary is not None and hasattr(dwarf, "supplementary_dwarfinfo"):
        dwarf.supplementary_dwarfinfo = _dwarf_info(supplementary, lines_needed=False)
    return dwarf


class LineTable:
    """Line lookups in one ELF file that carries DWARF (a debug file or an unstripped one)."""

    def __init__(self, elf, supplementary=None) -> None:
        self._elf = elf
        self._supplementary = supplementary
        self._dwarf: Any = None  # a pyelftools DWARFInfo, read on the first lookup
        self._loaded = False
        self._aranges: list[tuple[int, int, int]] | None = None
        self._arange_starts: list[int] = []
        self._cu_ranges: list[tuple[int, int, int]] | None = None
        self._programs: dict[int, tuple[list[int], list[tuple[int, int, int]]]] = {}

    @staticmethod
    def available(elf) -> bool:
        return elf.get_section_by_name(".debug_line") is not None and elf.get_section_by_name(".debug_info") is not None

    def lookup(self, addr: int) -> SourceLine | None:
        try:
            return self._lookup(addr)
        except Exception:  # DWARF we cannot read is no reason to lose the backtrace
            return None

    def _lookup(self, addr: int) -> SourceLine | None:
        if not self._loaded:
            self._loaded = True
            self._dwarf = _dwarf_info(self._elf, self._supplementary)
        if self._dwarf is None:
            return None
        cu_offset = self._cu_offset(addr)
        if cu_offset is None:
            return None
        cu = self._dwarf.get_CU_at(cu_offset)
        program = self._dwarf.line_program_for_CU(cu)
        if program is None:
            return None
        starts, spans = self._spans(cu_offset, program)
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or addr >= spans[i][0]:
            return None
        _end, file_index, line = spans[i]
        if line <= 0:
            return None
        name = _file_name(program, file_index, cu)
        return SourceLine(name, line) if name else None

    def inlined_at(self, addr: int) -> list[InlineCall]:
        """The calls inlined at `addr`, innermost first: for each, the function inlined and
        where in its caller the call was (DW_TAG_inlined_subroutine, as gdb reads them)."""
        try:
            return self._inlined_at(addr)
        except Exception:  # DWARF we cannot read costs the inline frames, not the backtrace
            return []

    def _inlined_at(self, addr: int) -> list[InlineCall]:
        if not self._loaded:
            self._loaded = True
            self._dwarf = _dwarf_info(self._elf, self._supplementary)
        if self._dwarf is None:
            return []
        cu_offset = self._cu_offset(addr)
        if cu_offset is None:
            return []
        cu = self._dwarf.get_CU_at(cu_offset)
        top = cu.get_top_DIE()
        low = top.attributes.get("DW_AT_low_pc")
        base = low.value if low is not None else 0
        program = self._dwarf.line_program_for_CU(cu)
        chain: list[InlineCall] = []
        budget = [MAX_DIES_VISITED]

        def scope_at(die):
            """The child of `die` (looking inside namespaces) whose code holds `addr`."""
            for child in die.iter_children():
                budget[0] -= 1
                if budget[0] < 0:
                    return None
                if child.tag == "DW_TAG_namespace" and child.has_children:
                    found = scope_at(child)
                    if found is not None:
                        return found
                elif child.tag in _SCOPES and _die_contains(self._dwarf, cu, child, addr, base):
                    return child
            return None

        scope = scope_at(top)
        while scope is not None:
            if scope.tag == "DW_TAG_inlined_subroutine":
                attrs = scope.attributes
                call_file = attrs["DW_AT_call_file"].value if "DW_AT_call_file" in attrs else None
                call_line = attrs["DW_AT_call_line"].value if "DW_AT_call_line" in attrs else 0
                where = _file_name(program, call_file, cu) if program is not None and call_file else None
                chain.append(InlineCall(_die_name(scope) or "??",
                                        SourceLine(where, call_line) if where and call_line else None))
            scope = scope_at(scope) if scope.has_children else None
        return list(reversed(chain))

    def _spans(self, key: int, program) -> tuple[list[int], list[tuple[int, int, int]]]:
        """The line table as sorted address ranges: [start, end) -> (file, line)."""
        got = self._programs.get(key)
        if got is None:
            ranges = []
            prev = None
            for e in program.get_entries():
                st = e.state
                if st is None or (st.line == 0 and not st.end_sequence):
                    continue  # as gdb: a line-0 row (code of no one line) extends the row before it
                if prev is not None and st.address > prev[0]:
                    ranges.append((prev[0], st.address, prev[1], prev[2]))
                prev = None if st.end_sequence else (st.address, st.file, st.line)
            ranges.sort()
            got = ([r[0] for r in ranges], [r[1:] for r in ranges])
            self._programs[key] = got
        return got

    def _cu_offset(self, addr: int) -> int | None:
        if self._aranges is None:
            sec = self._dwarf.debug_aranges_sec
            self._aranges = sorted(parse_aranges(sec.stream, sec.size)) if sec is not None else []
            self._arange_starts = [r[0] for r in self._aranges]
        i = bisect.bisect_right(self._arange_starts, addr) - 1
        if i >= 0 and addr < self._aranges[i][1]:
            return self._aranges[i][2]
        if self._cu_ranges is None:
            self._cu_ranges = self._scan_cus()
        for lo, hi, off in self._cu_ranges:
            if lo <= addr < hi:
                return off
        return None

    def _scan_cus(self) -> list[tuple[int, int, int]]:
        """Address ranges of the compile units, from their top DIEs (for files without
        `.debug_aranges`, as Go and clang write them)."""
        out = []
        for n, cu in enumerate(self._dwarf.iter_CUs()):
            if n >= MAX_CUS_SCANNED:
                break
            try:
                out += cu_ranges(self._dwarf, cu)
            except Exception:
                continue
        return out


def cu_ranges(dwarf, cu) -> list[tuple[int, int, int]]:
    """(start, end, CU offset) of one compile unit: low/high pc, or its range list, whose
    offset pairs count from the CU's base address (its low pc, or the last base entry)."""
    attrs = cu.get_top_DIE().attributes
    low = attrs.get("DW_AT_low_pc")
    base = low.value if low is not None else 0
    if "DW_AT_ranges" in attrs:
        out = []
        for r in dwarf.range_lists().get_range_list_at_offset(attrs["DW_AT_ranges"].value, cu=cu):
            if hasattr(r, "base_address"):
                base = r.base_address
            elif r.is_absolute:
                out.append((r.begin_offset, r.end_offset, cu.cu_offset))
            else:
                out.append((base + r.begin_offset, base + r.end_offset, cu.cu_offset))
        return [t for t in out if t[0] < t[1]]
    high = attrs.get("DW_AT_high_pc")
    if low is None or high is None:
        return []
    hi = high.value if high.form == "DW_FORM_addr" else low.value + high.value
    return [(low.value, hi, cu.cu_offset)] if low.value < hi else []


@dataclass(frozen=True)
class InlineCall:
    function: str  # the function inlined (demangled later, like any name)
    call: SourceLine | None  # where its caller called it


_SCOPES = ("DW_TAG_subprogram", "DW_TAG_inlined_subroutine", "DW_TAG_lexical_block")
MAX_DIES_VISITED = 200_000


def _die_contains(dwarf, cu, die, addr: int, base: int) -> bool:
    attrs = die.attributes
    if "DW_AT_low_pc" in attrs and "DW_AT_high_pc" in attrs:
        lo = attrs["DW_AT_low_pc"].value
        hi = attrs["DW_AT_high_pc"].value
        if attrs["DW_AT_high_pc"].form != "DW_FORM_addr":
            hi += lo
        return lo <= addr < hi
    if "DW_AT_ranges" in attrs:
        for r in dwarf.range_lists().get_range_list_at_offset(attrs["DW_AT_ranges"].value, cu=cu):
            if hasattr(r, "base_address"):
                base = r.base_address
                continue
            lo, hi = (r.begin_offset, r.end_offset) if r.is_absolute else (base + r.begin_offset, base + r.end_offset)
            if lo <= addr < hi:
                return True
    return False


def _die_name(die, depth: int = 0) -> str | None:
    """The linkage name (mangled) of the function a DIE is about, else its qualified name."""
    if depth > 8:
        return None
    attrs = die.attributes
    for key in ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name"):
        if key in attrs:
            return _text(attrs[key].value)
    for key in ("DW_AT_abstract_origin", "DW_AT_specification"):
        if key in attrs:
            return _die_name(die.get_DIE_from_attribute(key), depth + 1)
    if "DW_AT_name" in attrs:
        name = _text(attrs["DW_AT_name"].value)
        scopes = []
        parent = die.get_parent()
        while parent is not None and parent.tag in ("DW_TAG_namespace", "DW_TAG_class_type",
                                                     "DW_TAG_structure_type"):
            if "DW_AT_name" in parent.attributes:
                scopes.append(_text(parent.attributes["DW_AT_name"].value))
            parent = parent.get_parent()
        return "::".join([*reversed(scopes), name])
    return None


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _file_name(program, index: int, cu) -> str | None:
    version = program.header["version"]
    files = program.header["file_entry"]
    dirs = program.header["include_directory"]
    i = index if version >= 5 else index - 1
    if not 0 <= i < len(files):
        return None
    entry = files[i]
    name = _text(entry.name)
    if not posixpath.isabs(name):
        d = entry.dir_index
        comp = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
        comp_dir = _text(comp.value) if comp is not None else ""
        if version >= 5:
            directory = _text(dirs[d]) if 0 <= d < len(dirs) else ""
        elif d == 0:
            directory = comp_dir
        else:
            directory = _text(dirs[d - 1]) if d - 1 < len(dirs) else ""
        if directory and not posixpath.isabs(directory) and posixpath.isabs(comp_dir):
            directory = posixpath.join(comp_dir, directory)  # clang's are relative to the build's
        if directory:
            name = posixpath.join(directory, name)
    return os.path.normpath(name)[:NAME_MAX] if name.startswith("/") else name[:NAME_MAX]


def parse_aranges(stream, size: int) -> list[tuple[int, int, int]]:
    """(start, end, CU offset) from `.debug_aranges` (DWARF 6.1.2), 32-bit DWARF, 8-byte
    addresses.  Unpacked in bulk: pyelftools builds an object per entry, which costs a
    tenth of a second on libc."""
    if size > SECTION_MAX:
        return []
    stream.seek(0)
    data = stream.read(size)
    out = []
    pos = 0
    while pos + 16 <= len(data):
        unit_length, _version, cu_offset, addr_size, seg_size = struct.unpack_from("<IHIBB", data, pos)
        end = pos + 4 + unit_length
        if unit_length >= 0xFFFFFFF0 or end > len(data) or addr_size != 8 or seg_size != 0:
            break
        first = pos + 16  # the header (12 bytes) padded to a multiple of twice the address size
        usable = first + ((end - first) // 16) * 16
        for start, length in struct.iter_unpack("<QQ", data[first:usable]):
            if start == 0 and length == 0:
                break
            out.append((start, start + length, cu_offset))
        pos = end
    return out
