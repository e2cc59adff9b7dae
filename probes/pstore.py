"""pstore crash dumps: which files belong to which dump, and the oopses in a dump.  No I/O.

A dump the kernel wrote while dying is split into parts, one file each.  EFI names carry
count and part in one number (`dmesg-efi-<id>`: count = id mod 1000, part =
(id / 1000) mod 100; newer kernels call the backend `efi_pstore`); ramoops files are one
part each (`dmesg-ramoops-<n>`: count n+1).  Part 1 holds the end of the log, so a dump
reads from its highest part down to part 1.  Each file starts with a header line
(`Oops#1 Part1`) that is not part of the log.

Unlike the original, a single-part dump is processed (it aborted on an assert), a dump
without a final newline is read normally (it looped forever), and the oops still open at
the end of a dump is reported: the log ends there because the machine died.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .oops import Oops, decode_line, parse_lines

_EFI = re.compile(r"dmesg-efi(?:_pstore)?-([0-9]{1,20})")
_RAMOOPS = re.compile(r"dmesg-ramoops-([0-9]{1,9})")


@dataclass(frozen=True)
class ChunkName:
    backend: str
    count: int
    part: int


def parse_name(name: str) -> ChunkName | None:
    """backend, count and part of a dump file's name; None for anything else (left alone)."""
    if m := _EFI.fullmatch(name):
        ident = int(m.group(1))
        return ChunkName("efi", ident % 1000, (ident // 1000) % 100)
    if m := _RAMOOPS.fullmatch(name):
        return ChunkName("ramoops", int(m.group(1)) + 1, 1)
    return None


@dataclass(frozen=True)
class Chunk:
    name: str
    backend: str
    count: int
    part: int
    body: bytes  # the file without its header line

    @classmethod
    def from_file(cls, name: str, data: bytes) -> Chunk | None:
        where = parse_name(name)
        if where is None:
            return None
        _, newline, body = data.partition(b"\n")
        return cls(name, where.backend, where.count, where.part, body if newline else b"")


@dataclass(frozen=True)
class Dump:
    backend: str
    count: int
    chunks: tuple[Chunk, ...]  # highest part first: oldest text first

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.chunks)

    @property
    def complete(self) -> bool:
        """Parts 1..max all present, none of them empty (the original's rule)."""
        parts = sorted(c.part for c in self.chunks)
        return bool(parts) and parts == list(range(1, len(parts) + 1)) and all(c.body for c in self.chunks)

    def text_lines(self) -> list[str]:
        data = b"".join(c.body for c in self.chunks)
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return [decode_line(line) for line in lines]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for c in self.chunks:
            h.update(c.name.encode() + b"\0" + c.body + b"\0")
        return "pstore:" + h.hexdigest()[:32]


def assemble(chunks: Iterable[Chunk]) -> list[Dump]:
    """Group by backend and count (timestamps are not compared, as in the original, which
    also mixed backends), parts descending."""
    groups: dict[tuple[str, int], list[Chunk]] = {}
    for chunk in chunks:
        groups.setdefault((chunk.backend, chunk.count), []).append(chunk)
    return [
        Dump(backend, count, tuple(sorted(group, key=lambda c: (-c.part, c.name))))
        for (backend, count), group in sorted(groups.items())
    ]


def dump_oopses(dump: Dump) -> list[Oops]:
    return parse_lines(dump.text_lines(), flush=True)
