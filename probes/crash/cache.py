"""A cache of what parsing a module's files gave, keyed by the module's build id, so a
library is parsed once per machine rather than once per crash: its symbol table, and for
each address a backtrace met, the CFI row that unwinds it and its name and source line.

An entry is trusted only as far as it is checked.  Entries are written by root in system
mode (by the user in user mode) into a directory that only that owner can write, checked
up to / at every use (places.py); the files an entry was made from were owned by that
owner too (a user cannot have a file of theirs stand for libc's build id in the cache).
Every entry carries a digest and is validated whole when read: the format, the build id
it is filed under, the debug file it was made with (a debug package installed since makes
it stale), array lengths and order, string offsets.  Anything else is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from array import array
from dataclasses import dataclass, field

from .places import PlaceUnsafe, check_chain
from .symbols import SymbolTable
from .unwind.cfi import CfiRow, RuleKind

MAGIC = b"crashprobe-cache 2\n"
FILE_MAX = 16 << 20
PCS_MAX = 8192
DIGEST = 16
_HEAD = struct.Struct("<I")


def file_identity(st: os.stat_result, path: str) -> list:
    return [path, st.st_size, st.st_mtime_ns, st.st_ino]


@dataclass
class ModuleCache:
    """What is known of one module: filled from the cache, then by parsing misses."""

    build_id: bytes
    debug: list | None  # file_identity of the debug file the entry was made with
    symbols: SymbolTable | None = None
    symbols_known: bool = False  # False: the table was never parsed (None may mean "has none")
    frames: dict[int, list] = field(default_factory=dict)  # addr -> [name, file, line, inlined calls]
    cfi: dict[int, CfiRow | None] = field(default_factory=dict)
    dirty: bool = False

    def encode(self) -> bytes:
        blobs = b""
        sym = None
        if self.symbols_known and self.symbols is not None:
            starts, ends, names, strtab = self.symbols.arrays()
            parts = [array("Q", starts).tobytes(), array("Q", ends).tobytes(), array("L", names).tobytes(), strtab]
            sym = {"n": len(starts), "strtab": len(strtab), "names_size": array("L").itemsize}
            blobs = b"".join(parts)
        head = {
            "build_id": self.build_id.hex(),
            "debug": self.debug,
            "symbols_known": self.symbols_known,
            "symbols": sym,
            "frames": {f"{k:x}": v for k, v in list(self.frames.items())[:PCS_MAX]},
            "cfi": {f"{k:x}": _row_doc(v) for k, v in list(self.cfi.items())[:PCS_MAX]},
        }
        text = json.dumps(head, separators=(",", ":")).encode()
        body = MAGIC + _HEAD.pack(len(text)) + text + blobs
        return body + hashlib.blake2b(body, digest_size=DIGEST).digest()


class CacheInvalid(ValueError):
    pass


def decode(data: bytes, build_id: bytes) -> ModuleCache:
    """The entry in `data`, checked whole; CacheInvalid otherwise."""
    if len(data) > FILE_MAX or len(data) < len(MAGIC) + _HEAD.size + DIGEST or not data.startswith(MAGIC):
        raise CacheInvalid("not a cache entry")
    body, digest = data[:-DIGEST], data[-DIGEST:]
    if hashlib.blake2b(body, digest_size=DIGEST).digest() != digest:
        raise CacheInvalid("digest mismatch")
    (n,) = _HEAD.unpack_from(body, len(MAGIC))
    at = len(MAGIC) + _HEAD.size
    if at + n > len(body):
        raise CacheInvalid("header past the end")
    try:
        head = json.loads(body[at : at + n])
        if head["build_id"] != build_id.hex():
            raise CacheInvalid("filed under another build id")
        entry = ModuleCache(build_id, head["debug"], symbols_known=bool(head["symbols_known"]))
        entry.symbols = _symbols(head["symbols"], body[at + n :]) if head["symbols"] else None
        for k, v in head["frames"].items():
            name, src, line, inlined = v
            for n, f, ln in [(name, src, line), *inlined]:
                if not (n is None or isinstance(n, str)) or not (f is None or isinstance(f, str)):
                    raise CacheInvalid("bad frame")
                if not (ln is None or isinstance(ln, int)):
                    raise CacheInvalid("bad line")
            entry.frames[int(k, 16)] = [name, src, line, [list(c) for c in inlined]]
        for k, v in head["cfi"].items():
            entry.cfi[int(k, 16)] = _row(v)
    except (KeyError, TypeError, ValueError) as e:
        raise CacheInvalid(f"malformed: {e}") from None
    return entry


def _symbols(meta: dict, blob: bytes) -> SymbolTable:
    n, size, width = int(meta["n"]), int(meta["strtab"]), int(meta["names_size"])
    if width != array("L").itemsize or n < 0 or size < 0 or 8 * n * 2 + width * n + size != len(blob):
        raise CacheInvalid("symbol arrays do not match their sizes")
    starts, ends, names = array("Q"), array("Q"), array("L")
    starts.frombytes(blob[: 8 * n])
    ends.frombytes(blob[8 * n : 16 * n])
    names.frombytes(blob[16 * n : 16 * n + width * n])
    strtab = blob[16 * n + width * n :]
    if any(starts[i] > starts[i + 1] for i in range(n - 1)) or any(e <= s for s, e in zip(starts, ends, strict=True)):
        raise CacheInvalid("symbols out of order")
    if n and max(names) >= len(strtab):
        raise CacheInvalid("symbol name past its string table")
    return SymbolTable(starts, ends, names, strtab)


def _row_doc(row: CfiRow | None):
    if row is None:
        return None
    rules = [[reg, kind.name, arg.hex() if isinstance(arg, bytes) else arg] for reg, kind, arg in row.rules]
    return [row.cfa_reg, row.cfa_offset, row.cfa_expr.hex() if row.cfa_expr is not None else None, rules,
            row.ra_column, row.signal_frame]


def _row(doc) -> CfiRow | None:
    if doc is None:
        return None
    cfa_reg, cfa_offset, cfa_expr, rules, ra, signal = doc
    out = []
    for reg, kind_name, arg in rules:
        kind = RuleKind[kind_name]
        if kind in (RuleKind.EXPRESSION, RuleKind.VAL_EXPRESSION):
            arg = bytes.fromhex(arg)
        elif not isinstance(arg, int):
            raise CacheInvalid("bad rule")
        out.append((int(reg), kind, arg))
    return CfiRow(None if cfa_reg is None else int(cfa_reg), int(cfa_offset),
                  None if cfa_expr is None else bytes.fromhex(cfa_expr), tuple(out), int(ra), bool(signal))


class Cache:
    """The cache directory, for one run: entries read (checked) and written (atomically)."""

    def __init__(self, directory: str, owner: int):
        self.directory = directory
        self.owner = owner  # the only uid whose entries (and source files) are trusted

    def path(self, build_id: bytes) -> str:
        return os.path.join(self.directory, build_id.hex())

    def load(self, build_id: bytes) -> ModuleCache | None:
        try:
            check_chain(self.directory, self.owner)
            fd = os.open(self.path(build_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, PlaceUnsafe):
            return None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, self.owner)
                    or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_size > FILE_MAX):
                return None
            data = os.read(fd, FILE_MAX + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            return decode(data, build_id)
        except CacheInvalid:
            return None

    def trusts(self, st: os.stat_result) -> bool:
        """Whether a file may feed an entry: owned by the cache's owner (or root), and
        writable by nobody else."""
        return st.st_uid in (0, self.owner) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)

    def store(self, data: bytes, build_id: bytes) -> None:
        """Write an entry (checked first: it may come from the analysis child)."""
        decode(data, build_id)
        from .places import private_dir

        private_dir(self.directory, 0o755)
        os.chmod(self.directory, 0o755)
        tmp = self.path(build_id) + f".tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.path(build_id))
