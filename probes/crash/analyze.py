"""From a read core to symbolized backtraces: the module map, the files behind it, the
unwinder and the symbolizer put together.

`Process` is the crashed process as the unwinder sees it (memory from the core, code and
CFI from the mapped files, opened through `FileAccess`).  `analyze` walks every thread,
crashing thread first, and returns an `Analysis` value; it never raises for anything the
core or the files contain, and it stops at its deadline with what it has.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .corefile import PAGE, CoreDump
from .demangle import demangle
from .elfbounds import DEBUGLINK_MAX, NOTES_MAX, section_data, segment_data
from .files import FileAccess, FileRefused
from .lines import LineTable, SourceLine
from .modules import ModuleInfo, ModuleMap, build_module_map
from .notes import AT_ENTRY, AT_PHDR, build_id_from_notes
from .symbols import SymbolTable
from .unwind import MAX_FRAMES, RawFrame, StopReason, for_machine, machine_name, unwind
from .unwind.cfi import CallFrameTable, CfiRow

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

    from .cache import ModuleCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    pc: int
    module: str | None
    module_offset: int | None
    function: str | None  # demangled
    source: SourceLine | None = None
    mangled: str | None = None  # the symbol as the file has it, when demangling changed it
    inlined: bool = False  # a function inlined into the next frame's


@dataclass(frozen=True)
class ThreadTrace:
    tid: int
    signal: int
    frames: tuple[Frame, ...]
    stop: StopReason
    detail: str = ""

    @property
    def truncated(self) -> bool:
        return self.stop is StopReason.FRAME_LIMIT


@dataclass(frozen=True)
class Analysis:
    pid: int | None
    threads: tuple[ThreadTrace, ...]
    error: str | None  # what makes this an error report, if anything
    problems: tuple[str, ...] = ()  # everything worth a log line
    executable: str | None = None  # the main module's path, as mapped
    signal: int | None = None  # the fatal signal, as the core records it

    threads_omitted: int = 0  # threads past the cap, never unwound
    cache_updates: tuple[tuple[bytes, bytes], ...] = ()  # (build id, entry) to write to the cache
    unreadable: bool = False  # the input was no core at all (offline use reports it as an error)

    @property
    def frames_truncated(self) -> bool:
        return self.threads_omitted > 0 or any(t.truncated for t in self.threads)


class _Loaded:
    """A module with the files opened for it (lazily, once)."""

    def __init__(self, info: ModuleInfo):
        self.info = info
        self.elf: ELFFile | None = None
        self.debug_elf: ELFFile | None = None
        self.path: str = info.path  # where the module was opened (--exe may name another)
        self.debug_path: str | None = None
        self.bias = info.bias
        self.cfi: CallFrameTable | None = None
        self.symbols: SymbolTable | None = None
        self.lines: LineTable | None = None
        self.symbols_loaded = False
        self.lines_loaded = False
        self.files: list = []
        self.opened = False
        self.entry: ModuleCache | None = None  # : what the cache knows, and what this run adds
        self.cacheable = False  # the files parsed may feed the cache


class Process:
    """The crashed process, as the unwinder and the symbolizer need it."""

    def __init__(self, core: CoreDump, access: FileAccess, *, exe_path: str | None = None,
                 want_lines: bool = True, cache=None):
        self.core = core
        self.cache = cache
        self.access = access
        self.modules: ModuleMap = build_module_map(core)
        self.want_lines = want_lines
        self.notes: list[str] = []
        self._loaded: dict[int, _Loaded] = {}
        self._main = self._main_module()
        self._exe_path = exe_path

    def close(self) -> None:
        for lm in self._loaded.values():
            for f in lm.files:
                try:
                    f.close()
                except OSError:
                    pass

    def _main_module(self) -> ModuleInfo | None:
        for key in (AT_ENTRY, AT_PHDR):
            addr = self.core.aux(key)
            if addr:
                m = self.modules.at(addr)
                if m is not None:
                    return m
        return None

    @property
    def executable(self) -> str | None:
        return self._main.path if self._main else None

    # --- the unwinder's Target ------------------------------------------------------

    def read_word(self, addr: int) -> int | None:
        return self.core.memory.read_u64(addr)

    def is_code(self, pc: int) -> bool:
        module = self.modules.at(pc)
        if module is None:
            return False
        seg = self.core.segment_at(pc)
        return seg is None or seg.executable

    def cfi_row(self, pc: int) -> CfiRow | None:
        lm = self._module_at(pc)
        if lm is None or lm.bias is None:
            return None
        key = pc - lm.bias
        if lm.entry is not None and key in lm.entry.cfi:
            return lm.entry.cfi[key]
        self._ensure_open(lm)
        row = lm.cfi.row_at(key) if lm.cfi is not None else None
        if lm.cacheable and lm.entry is not None:
            lm.entry.cfi[key] = row
            lm.entry.dirty = True
        return row

    def code_at(self, pc: int, size: int) -> bytes | None:
        lm = self._module_at(pc)
        if lm is not None:
            self._ensure_open(lm)
        if lm is None or lm.elf is None or lm.bias is None:
            return None
        if lm.info.vdso:
            return self.core.memory.read(pc, size)
        try:
            for offset in lm.elf.address_offsets(pc - lm.bias, size):
                stream = lm.elf.stream
                stream.seek(offset)
                data = stream.read(size)
                return data if len(data) == size else None
        except Exception:
            return None
        return None

    # --- symbolization ----------------------------------------------------------------

    def symbolize(self, frame: RawFrame) -> list[Frame]:
        """The frame's function and line, preceded by a frame for each function inlined at
        its address (innermost first), as gdb shows them."""
        addr = frame.symbol_pc
        info = self.modules.at(addr)
        if info is None:
            return [Frame(frame.pc, None, None, None)]
        lm = self._load(info)
        name = None
        source = None
        inlined: list = []  # [name, file, line] of each inlined call, innermost first
        if lm.bias is not None:
            file_addr = addr - lm.bias
            known = lm.entry.frames.get(file_addr) if lm.entry is not None and self.want_lines else None
            if known is not None:
                name = known[0]
                source = SourceLine(known[1], known[2]) if known[1] is not None and known[2] else None
                inlined = known[3] if len(known) > 3 else []
            else:
                self._ensure_open(lm)
                symbols = self._symbols(lm)
                hit = symbols.lookup(file_addr) if symbols else None
                name = hit.name if hit else None
                lines = self._lines(lm) if self.want_lines else None
                source = lines.lookup(file_addr) if lines else None
                calls = lines.inlined_at(file_addr) if lines else []
                inlined = [[c.function, c.call.file if c.call else None, c.call.line if c.call else None]
                           for c in calls]
                if lm.cacheable and lm.entry is not None and self.want_lines:
                    lm.entry.frames[file_addr] = [name, source.file if source else None,
                                                  source.line if source else None, inlined]
                    lm.entry.dirty = True
        path = self._exe_path if (info is self._main and self._exe_path) else info.path
        offset = addr - info.base
        out = []
        for call_name, call_file, call_line in inlined:
            out.append(_named(Frame(frame.pc, path, offset, call_name, source, inlined=True)))
            source = SourceLine(call_file, call_line) if call_file and call_line else None
        out.append(_named(Frame(frame.pc, path, offset, name, source)))
        return out

    def _symbols(self, lm: _Loaded) -> SymbolTable | None:
        if not lm.symbols_loaded and lm.entry is not None and lm.entry.symbols_known:
            lm.symbols_loaded = True
            lm.symbols = lm.entry.symbols
        if not lm.symbols_loaded:
            lm.symbols_loaded = True
            for elf in (lm.debug_elf, lm.elf):
                if elf is not None:
                    try:
                        lm.symbols = SymbolTable.from_elf(elf)
                    except Exception as e:
                        self.notes.append(f"{lm.info.path}: unreadable symbol table ({e})")
                    if lm.symbols is not None:
                        break
            if lm.cacheable and lm.entry is not None:
                lm.entry.symbols, lm.entry.symbols_known, lm.entry.dirty = lm.symbols, True, True
        return lm.symbols

    def _lines(self, lm: _Loaded) -> LineTable | None:
        if not lm.lines_loaded:
            lm.lines_loaded = True
            for elf, path in ((lm.debug_elf, lm.debug_path), (lm.elf, lm.path)):
                if elf is not None and LineTable.available(elf):
                    lm.lines = LineTable(elf, self._supplementary(lm, elf, path))
                    break
        return lm.lines

    def _supplementary(self, lm: _Loaded, elf, path: str | None):
        """The file `elf`'s `.gnu_debugaltlink` names, found as gdb finds it: at the path it
        gives (relative to the file's own directory), else by its build id in the debug
        directories; only with the build id the link asks for."""
        raw_name, _, build_id = _link_section(elf, ".gnu_debugaltlink").partition(b"\0")
        if not raw_name or not build_id:
            return None
        name = os.fsdecode(raw_name)
        candidates = self.access.debug_candidates(build_id, "/", None)
        if path is not None and self.access.root_fd is None:
            candidates.insert(0, os.path.join(os.path.dirname(os.path.realpath(path)), name))
        for candidate in candidates:
            opened = self._open_debug(candidate)
            if opened is None:
                continue
            f, alt = opened
            if _build_id(alt) == build_id:
                lm.files.append(f)
                return alt
            f.close()
        self.notes.append(f"{path}: the supplementary debug file {name} was not found")
        return None

    def _open_debug(self, candidate: str):
        """(file, ELFFile) of a debug file, or None if it is refused or not ELF."""
        from elftools.elf.elffile import ELFFile

        try:
            f = self.access.open_debug(candidate)
        except FileRefused:
            return None
        try:
            return f, ELFFile(f)
        except Exception:
            f.close()
            return None

    def _module_at(self, pc: int) -> _Loaded | None:
        info = self.modules.at(pc)
        return self._load(info) if info is not None else None

    def _load(self, info: ModuleInfo) -> _Loaded:
        key = id(info)
        lm = self._loaded.get(key)
        if lm is not None:
            return lm
        lm = _Loaded(info)
        self._loaded[key] = lm
        if self.cache is not None and info.build_id and info.bias is not None and not info.vdso:
            debug = self._debug_identity(info)
            entry = self.cache.load(info.build_id)
            if entry is not None and entry.debug == debug:
                lm.entry = entry  # the files are opened only if an address is not in it
                return lm
            from .cache import ModuleCache

            lm.entry = ModuleCache(info.build_id, debug)
        self._ensure_open(lm)
        return lm

    def _ensure_open(self, lm: _Loaded) -> None:
        if lm.opened:
            return
        lm.opened = True
        try:
            self._open(lm)
        except FileRefused as e:
            self.notes.append(str(e))
        except Exception as e:  # pyelftools on a damaged or foreign file
            self.notes.append(f"{lm.info.path}: not readable as ELF ({type(e).__name__}: {e})")
            lm.elf = None
        if lm.elf is not None:
            lm.cfi = CallFrameTable(lm.elf, lm.debug_elf)
        lm.cacheable = lm.cacheable and lm.elf is not None

    def _debug_identity(self, info: ModuleInfo) -> list | None:
        """The debug file the build id names, as the cache records it (None: there is none)."""
        from .cache import file_identity

        for candidate in self.access.debug_candidates(info.build_id, info.path, None):
            try:
                return file_identity(os.stat(candidate), candidate)
            except OSError:
                continue
        return None

    def cache_updates(self) -> tuple[tuple[bytes, bytes], ...]:
        out: list[tuple[bytes, bytes]] = []
        for lm in self._loaded.values():
            if lm.cacheable and lm.entry is not None and lm.entry.dirty:
                try:
                    out.append((lm.entry.build_id, lm.entry.encode()))
                except Exception as e:  # never worth the report
                    self.notes.append(f"{lm.info.path}: not cached ({e})")
        return tuple(out)

    def _open(self, lm: _Loaded) -> None:
        from elftools.elf.elffile import ELFFile

        info = lm.info
        if info.vdso:
            image = self.core.memory.read_at_most(info.start, info.end - info.start)
            lm.elf = ELFFile(io.BytesIO(image))
            return
        path = self._exe_path if (info is self._main and self._exe_path) else info.path
        image = b""
        if self.access.require_build_id and not info.build_id:
            # Without a build id, the file must start with the page the core holds of it.
            image = self.core.memory.read_at_most(info.start, PAGE) if info.mappings[0].offset == 0 else b""
            if len(image) < 64:
                raise FileRefused(f"{path}: the core has no build id or first page to check the file against")
        f = self.access.open_mapped(path)
        lm.files.append(f)
        lm.path = path
        lm.cacheable = lm.entry is not None and self.cache.trusts(os.fstat(f.fileno()))
        if image and f.read(len(image)) != image:
            raise FileRefused(f"{path}: not the file that was mapped (its first page differs from the core's)")
        elf = ELFFile(f)
        file_id = _build_id(elf)
        if info.build_id and file_id != info.build_id:
            raise FileRefused(f"{path}: build id {file_id.hex() if file_id else 'none'} is not the "
                              f"mapped file's {info.build_id.hex()} (changed since the crash)")
        lm.elf = elf
        if lm.bias is None:
            first = next((s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_offset"] == 0), None)
            if first is not None:
                lm.bias = info.base - (first["p_vaddr"] & ~0xFFF)
        build_id = info.build_id or file_id
        link = _debuglink(elf)
        for candidate in self.access.debug_candidates(build_id, path, link):
            opened = self._open_debug(candidate)
            if opened is None:
                continue
            df, debug = opened
            if build_id and _build_id(debug) not in (None, build_id):
                df.close()
                continue
            lm.files.append(df)
            lm.debug_elf, lm.debug_path = debug, candidate
            if lm.cacheable and lm.entry is not None:  # only the entry's own debug file, and a trusted one
                from .cache import file_identity

                st = os.fstat(df.fileno())
                lm.cacheable = self.cache.trusts(st) and lm.entry.debug == file_identity(st, candidate)
            break
        else:
            if lm.entry is not None and lm.entry.debug is not None:
                lm.cacheable = False  # the debug file the entry expects could not be used


def _named(frame: Frame) -> Frame:
    """The frame with its function demangled (the symbol kept when that changed it)."""
    if not frame.function:
        return frame
    readable = demangle(frame.function)
    return dataclasses.replace(frame, function=readable, mangled=frame.function) if readable != frame.function \
        else frame


def _build_id(elf) -> bytes | None:
    """The GNU build id of a file, from its notes (each read within NOTES_MAX)."""
    try:
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_NOTE":
                found = build_id_from_notes(segment_data(elf, seg, NOTES_MAX), 8 if seg["p_align"] == 8 else 4)
                if found:
                    return found
        section = elf.get_section_by_name(".note.gnu.build-id")
        if section is not None:
            return build_id_from_notes(section_data(elf, section, NOTES_MAX), section["sh_addralign"] or 4)
    except Exception:
        return None
    return None


def _link_section(elf, name: str) -> bytes:
    """The contents of a link section (`.gnu_debuglink`, `.gnu_debugaltlink`), or b""."""
    try:
        section = elf.get_section_by_name(name)
        return section_data(elf, section, DEBUGLINK_MAX) if section is not None else b""
    except Exception:
        return b""


def _debuglink(elf) -> str | None:
    """The file name `.gnu_debuglink` names (its CRC is not checked, as elfutils is told)."""
    name = _link_section(elf, ".gnu_debuglink").split(b"\0", 1)[0]
    return name.decode("utf-8", "replace") or None


MAX_THREADS = 64  # a payload of 8 KB shows a few dozen threads at most


def analyze(core: CoreDump, access: FileAccess, *, exe_path: str | None = None, max_frames: int = MAX_FRAMES,
            want_lines: bool = True, deadline: float | None = None, max_threads: int = MAX_THREADS,
            cache=None) -> Analysis:
    """Backtraces of the threads (crashing thread first), symbolized as far as files allow."""
    problems = list(core.problems) + list(core.remarks)
    error = core.problems[0] if core.problems else None
    if not core.threads:
        return Analysis(core.pid, (), error or "the core holds no threads", tuple(problems))
    arch = for_machine(core.machine)
    if arch is None:
        return Analysis(core.pid, (), f"unwinding {machine_name(core.machine)} cores is not supported", tuple(problems))
    process = Process(core, access, exe_path=exe_path, want_lines=want_lines, cache=cache)
    traces: list[ThreadTrace] = []
    omitted = max(0, len(core.threads) - max_threads)
    if omitted:
        problems.append(f"{omitted} of {len(core.threads)} threads not unwound (the report shows {max_threads})")
    try:
        for n, thread in enumerate(core.threads[:max_threads]):
            if deadline is not None and time.monotonic() > deadline:
                problems.append(f"time limit reached after {n} of {len(core.threads)} threads")
                error = error or "time limit reached before every thread was unwound"
                break
            decoded = arch.decode(thread.regs)
            if decoded is None:
                problems.append(f"thread {thread.tid}: registers unreadable")
                continue
            pc, regs = decoded
            result = unwind(arch, pc, regs, process, max_frames=max_frames)
            frames = tuple(f for raw in result.frames for f in process.symbolize(raw))
            detail = result.detail
            if result.stop is StopReason.NO_MEMORY and core.memory_gap:
                detail = f"{detail}; {core.memory_gap}" if detail else core.memory_gap
            traces.append(ThreadTrace(thread.tid, thread.signal, frames, result.stop, detail))
        updates = process.cache_updates()
    finally:
        process.close()
    problems += process.notes
    first = traces[0] if traces else None
    if error is None and first is None:
        error = "no thread could be unwound"
    elif error is None and first is not None and len(first.frames) < 2 and not first.stop.clean:
        error = f"unwinding thread {first.tid} stopped at frame #0: {first.stop.value}"
    signal = core.siginfo.signo if core.siginfo is not None else core.threads[0].signal
    return Analysis(core.pid, tuple(traces), error, tuple(dict.fromkeys(problems)), process.executable, signal,
                    omitted, updates)
