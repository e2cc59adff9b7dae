"""Reading parts of an ELF file whose sizes the file itself states, without believing them.

A mapped file, a debug file or a vDSO image can claim any size for a section or a note
(a 4 KiB file can claim a 6 GiB symbol table).  Every size is checked against the file's
real size and against a budget before a byte is allocated, so one analysis stays within
its memory whatever it reads.
"""

from __future__ import annotations

import io
import os

from telemetry.errors import TelemetryError

MiB = 1 << 20
SECTION_MAX = 16 * MiB  # one section read whole: a symbol or string table, CFI
NOTES_MAX = 64 * 1024  # a PT_NOTE segment of a mapped file (the build id is in it)
DEBUGLINK_MAX = 4096
SHF_COMPRESSED = 0x800


class TooLarge(TelemetryError):
    """A size stated by the file is past its end or over the budget; the message says which."""


def stream_size(stream) -> int:
    """The real size of what `stream` reads: a file's st_size, or a buffer's length."""
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pos = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(pos)
        return end


def check_extent(what: str, offset: int, size: int, real: int, limit: int) -> None:
    if offset < 0 or size < 0 or offset + size > real:
        raise TooLarge(f"{what}: {size} bytes at offset {offset} run past the end of the {real}-byte file")
    if size > limit:
        raise TooLarge(f"{what} is {size} bytes; at most {limit} are read")


def read_exact(stream, offset: int, size: int, limit: int, what: str) -> bytes:
    check_extent(what, offset, size, stream_size(stream), limit)
    stream.seek(offset)
    data = stream.read(size)
    if len(data) != size:
        raise TooLarge(f"{what}: the file ended after {len(data)} of {size} bytes")
    return data


def section_data(elf, section, limit: int = SECTION_MAX) -> bytes:
    """A section's bytes (decompressed if need be), refused when it claims too much."""
    h = section.header
    name = f"section {section.name or '?'}"
    if section["sh_type"] == "SHT_NOBITS":
        return b""
    check_extent(name, h["sh_offset"], h["sh_size"], stream_size(elf.stream), limit)
    if h["sh_flags"] & SHF_COMPRESSED:
        if section.data_size > limit:
            raise TooLarge(f"{name} inflates to {section.data_size} bytes; at most {limit} are read")
        return section.data()
    return read_exact(elf.stream, h["sh_offset"], h["sh_size"], limit, name)


def segment_data(elf, segment, limit: int) -> bytes:
    h = segment.header
    return read_exact(elf.stream, h["p_offset"], h["p_filesz"], limit, f"segment at offset {h['p_offset']}")
