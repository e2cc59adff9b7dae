"""Call-frame information of one ELF file, looked up by address.

pyelftools parses and decodes the CIE/FDE entries.  Finding the FDE for an address uses
the binary-search table of `.eh_frame_hdr` when there is one, so only the entries a
backtrace touches are parsed (libc has thousands); without it, or for `.debug_frame`, the
section's entries are indexed once.  Rows come back as `CfiRow` values, independent of
pyelftools, for the pure unwinder.
"""

from __future__ import annotations

import bisect
import enum
import io
import struct
from dataclasses import dataclass
from typing import Any

DW_EH_PE_omit = 0xFF
DW_EH_PE_udata4 = 0x03
DW_EH_PE_sdata4 = 0x0B
DW_EH_PE_pcrel = 0x10
DW_EH_PE_datarel = 0x30


class RuleKind(enum.Enum):
    UNDEFINED = "undefined"
    SAME_VALUE = "same-value"
    OFFSET = "offset"
    VAL_OFFSET = "val-offset"
    REGISTER = "register"
    EXPRESSION = "expression"
    VAL_EXPRESSION = "val-expression"


@dataclass(frozen=True)
class CfiRow:
    """How to find the caller's registers at one address (DWARF 6.4.1)."""

    cfa_reg: int | None
    cfa_offset: int
    cfa_expr: bytes | None
    rules: tuple[tuple[int, RuleKind, int | bytes], ...]
    ra_column: int
    signal_frame: bool = False


_KIND = {k.name: k for k in RuleKind}


def _structs():
    from elftools.dwarf.structs import DWARFStructs

    return DWARFStructs(little_endian=True, dwarf_format=32, address_size=8)


class _Index:
    """FDE lookup over one CFI section."""

    def __init__(self, data: bytes, address: int, eh: bool, table: list[tuple[int, int]] | None):
        from elftools.dwarf.callframe import CallFrameInfo

        self.cfi = CallFrameInfo(io.BytesIO(data), len(data), address, _structs(), for_eh_frame=eh)
        self.table = table  # sorted (initial location, FDE offset in the section)
        self.starts: list[int] = []
        self.fdes: list = []
        if table is None:
            from elftools.dwarf.callframe import FDE

            fdes = [e for e in self.cfi.get_entries() if isinstance(e, FDE)]
            fdes.sort(key=lambda f: f["initial_location"])
            self.fdes = fdes
            self.starts = [f["initial_location"] for f in fdes]
        else:
            self.starts = [loc for loc, _ in table]

    def fde_for(self, pc: int):
        i = bisect.bisect_right(self.starts, pc) - 1
        if i < 0:
            return None
        fde: Any
        if self.table is not None:
            fde = self.cfi._parse_entry_at(self.table[i][1])
        else:
            fde = self.fdes[i]
        start = fde["initial_location"]
        if not start <= pc < start + fde["address_range"]:
            return None
        return fde


class CallFrameTable:
    """CFI rows of one ELF file (its `.eh_frame`, then `.debug_frame` from it or its debug file)."""

    def __init__(self, elf, debug_elf=None):
        self._sources: list[_Index] = []
        self._pending = [(elf, ".eh_frame"), (elf, ".debug_frame")]
        if debug_elf is not None:
            self._pending.append((debug_elf, ".debug_frame"))
        self._rows: dict[int, list[tuple[int, CfiRow]]] = {}

    def row_at(self, pc: int) -> CfiRow | None:
        """The row for file address `pc`, or None (no CFI, or CFI pyelftools cannot read)."""
        for source in self._iter_sources():
            try:
                fde = source.fde_for(pc)
                if fde is None:
                    continue
                return self._row(fde, pc)
            except Exception:  # malformed CFI in a file we do not control
                continue
        return None

    def _iter_sources(self):
        yield from self._sources
        while self._pending:
            elf, name = self._pending.pop(0)
            try:
                index = _open_index(elf, name)
            except Exception:
                index = None
            if index is not None:
                self._sources.append(index)
                yield index

    def _row(self, fde, pc: int) -> CfiRow | None:
        key = id(fde)
        rows = self._rows.get(key)
        if rows is None:
            rows = _decode(fde)
            self._rows[key] = rows
        i = bisect.bisect_right([r[0] for r in rows], pc) - 1
        return rows[i][1] if i >= 0 else None


def _decode(fde) -> list[tuple[int, CfiRow]]:
    cie = fde.cie
    signal = b"S" in bytes(cie["augmentation"] or b"")
    ra = cie["return_address_register"]
    out = []
    for line in fde.get_decoded().table:
        cfa = line["cfa"]
        rules = []
        for reg, rule in line.items():
            if isinstance(reg, int):
                kind = _KIND[rule.type]
                arg = rule.arg
                if kind in (RuleKind.EXPRESSION, RuleKind.VAL_EXPRESSION):
                    arg = bytes(arg)
                rules.append((reg, kind, arg if arg is not None else 0))
        out.append(
            (
                line["pc"],
                CfiRow(
                    cfa_reg=cfa.reg,
                    cfa_offset=cfa.offset or 0,
                    cfa_expr=bytes(cfa.expr) if cfa.expr is not None else None,
                    rules=tuple(rules),
                    ra_column=ra,
                    signal_frame=signal,
                ),
            )
        )
    return out


def _open_index(elf, name: str) -> _Index | None:
    section = elf.get_section_by_name(name)
    if section is None or section["sh_type"] == "SHT_NOBITS" or section["sh_size"] == 0:
        return None
    from ..elfbounds import section_data

    data = section_data(elf, section)
    if name == ".eh_frame":
        hdr = elf.get_section_by_name(".eh_frame_hdr")
        table = None
        if hdr is not None and hdr["sh_type"] != "SHT_NOBITS":
            table = parse_eh_frame_hdr(section_data(elf, hdr), hdr["sh_addr"], section["sh_addr"], len(data))
        return _Index(data, section["sh_addr"], True, table)
    return _Index(data, section["sh_addr"], False, None)


def parse_eh_frame_hdr(data: bytes, hdr_addr: int, eh_frame_addr: int, eh_frame_size: int):
    """The sorted (initial location, FDE offset in .eh_frame) table, or None if unusable.

    Only the encodings every toolchain emits are accepted (datarel sdata4 table); anything
    else falls back to indexing `.eh_frame` itself.
    """
    if len(data) < 12 or data[0] != 1:
        return None
    ptr_enc, count_enc, table_enc = data[1], data[2], data[3]
    if ptr_enc == DW_EH_PE_omit or count_enc != DW_EH_PE_udata4 or table_enc != (DW_EH_PE_datarel | DW_EH_PE_sdata4):
        return None
    if ptr_enc not in (DW_EH_PE_pcrel | DW_EH_PE_sdata4, DW_EH_PE_sdata4, DW_EH_PE_datarel | DW_EH_PE_sdata4):
        return None
    (count,) = struct.unpack_from("<I", data, 8)
    if 12 + count * 8 > len(data):
        return None
    out = []
    prev = None
    for loc, fde in struct.iter_unpack("<ii", data[12 : 12 + count * 8]):
        loc_abs = hdr_addr + loc
        off = hdr_addr + fde - eh_frame_addr
        if not 0 <= off < eh_frame_size:
            return None
        if prev is not None and loc_abs < prev:
            return None
        prev = loc_abs
        out.append((loc_abs, off))
    return out
