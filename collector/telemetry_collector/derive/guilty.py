"""Which frame of a stack is guilty: the first that is not on the never-guilty list (pure).

The list holds the frames that report a crash rather than cause it: abort and raise, the
C library's assertion and fortify handlers, allocator internals that detect a corrupted
heap, string routines handed a bad pointer, language runtimes' panic and terminate paths,
signal trampolines; for the kernel, the printers and trap handlers every oops passes
through.  One entry per line: a function name, with ``*`` matching any run of characters,
optionally followed by a module in brackets (``free [libc.so.6]``; a module without ``/``
is compared with the module's file name, one with ``/`` with its whole path).  Admins edit
the list in the Crashes and Kernel views; each domain has its own.

The choice, over the crashing thread from the innermost frame:

1. the first frame with a symbol that is not on the list, skipping kernel frames the
   unwinder only guessed (``? func``) while a reliable one follows;
2. else the first frame without a symbol (``??? - [module]``, with its offset);
3. else the innermost frame (everything is on the list: it is still a group);
4. a stack without frames is grouped by its headline (a kernel oops without a trace) or
   as "(no backtrace)".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from telemetry.errors import TelemetryError

from .stacks import NO_BACKTRACE, Domain, Frame, Guilty, Stack, guilty_of_frame

ENTRY_MAX = 256
ENTRIES_MAX = 2000


class NeverGuiltyError(TelemetryError):
    pass


def _glob(pattern: str) -> str:
    """`*` is the only wildcard: C++ names hold brackets and question marks of their own."""
    return ".*".join(re.escape(part) for part in pattern.split("*"))


@dataclass(frozen=True)
class Entry:
    function: str  # glob
    module: str | None = None  # glob; None: any module

    @classmethod
    def parse(cls, text: str) -> Entry:
        line = text.strip()
        if not line:
            raise NeverGuiltyError("an empty entry")
        if len(line) > ENTRY_MAX:
            raise NeverGuiltyError(f"{line[:40]!r}…: longer than {ENTRY_MAX} characters")
        if not line.isprintable():
            raise NeverGuiltyError(f"{line[:40]!r}: holds control characters")
        module = None
        if line.endswith("]") and " [" in line:
            line, _, rest = line.rpartition(" [")
            module = rest[:-1].strip()
            line = line.strip()
            if not module:
                raise NeverGuiltyError(f"{text.strip()!r}: the module in brackets is empty")
        if not line or line.startswith("["):
            raise NeverGuiltyError(f"{text.strip()!r}: no function before the module")
        return cls(line, module)

    def text(self) -> str:
        return self.function if self.module is None else f"{self.function} [{self.module}]"

    def matches_module(self, module: str | None) -> bool:
        if self.module is None:
            return True
        if module is None:
            return False
        subject = module if "/" in self.module else module.rpartition("/")[2]
        return re.fullmatch(_glob(self.module), subject) is not None


@dataclass(frozen=True)
class NeverGuilty:
    """A domain's list, compiled: functions of entries without a module in one regex."""

    entries: tuple[Entry, ...] = ()

    @functools.cached_property
    def _plain(self) -> re.Pattern[str] | None:
        plain = [_glob(e.function) for e in self.entries if e.module is None]
        return re.compile("|".join(f"(?:{p})" for p in plain)) if plain else None

    @functools.cached_property
    def _qualified(self) -> tuple[tuple[re.Pattern[str], Entry], ...]:
        return tuple((re.compile(_glob(e.function)), e) for e in self.entries if e.module is not None)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> NeverGuilty:
        return cls(tuple(Entry.parse(t) for t in texts))

    @classmethod
    def parse(cls, text: str) -> NeverGuilty:
        """One entry per line (blank lines and ``#`` comments skipped), duplicates dropped;
        `NeverGuiltyError` naming every bad line."""
        entries: dict[Entry, None] = {}
        errors = []
        for n, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip() or raw.strip().startswith("#"):
                continue
            try:
                entries.setdefault(Entry.parse(raw))
            except NeverGuiltyError as e:
                errors.append(f"line {n}: {e}")
        if errors:
            raise NeverGuiltyError("; ".join(errors[:5]) + (" …" if len(errors) > 5 else ""))
        if len(entries) > ENTRIES_MAX:
            raise NeverGuiltyError(f"{len(entries)} entries; at most {ENTRIES_MAX}")
        return cls(tuple(entries))

    def texts(self) -> list[str]:
        return [e.text() for e in self.entries]

    def matches(self, frame: Frame) -> bool:
        if frame.function is None:
            return False
        name = plain_name(frame.function)
        if self._plain is not None and self._plain.fullmatch(name):
            return True
        return any(rx.fullmatch(name) and e.matches_module(frame.module) for rx, e in self._qualified)


def plain_name(function: str) -> str:
    """The name the list is matched against: without the ``()`` a C frame is printed with,
    so ``abort`` matches ``abort()``; a C++ name keeps its parameter list."""
    return function[:-2] if function.endswith("()") and function.count("(") == 1 else function


def choose_guilty(stack: Stack, never: NeverGuilty) -> Guilty:
    frames = stack.frames
    fallback: Frame | None = None  # the first unreliable candidate, if no reliable one comes
    first_unknown: Frame | None = None
    for frame in frames:
        if not frame.known:
            if first_unknown is None:
                first_unknown = frame
            continue
        if never.matches(frame):
            continue
        if frame.unreliable:
            if fallback is None:
                fallback = frame
            continue
        return guilty_of_frame(frame)
    if fallback is not None:
        return guilty_of_frame(fallback)
    if first_unknown is not None:
        return guilty_of_frame(first_unknown)
    if frames:
        return guilty_of_frame(frames[0])
    return Guilty(stack.headline or NO_BACKTRACE, "" if stack.headline else stack.program)


# --- the shipped lists ---------------------------------------------------------------------

DEFAULT_CRASH = (
    # reporting, not causing: abort and its signal
    "abort", "raise", "__GI_*", "__pthread_kill*", "pthread_kill", "__restore_rt",
    "__libc_message", "__libc_fatal", "__fortify_fail*", "__chk_fail", "__stack_chk_fail", "__*_chk",
    "__assert_fail", "__assert_fail_base", "__assert_perror_fail", "__assert",
    # allocator internals: they find the corruption someone else caused
    "malloc_printerr", "malloc_consolidate", "_int_malloc", "_int_free", "_int_free_*",
    "_int_realloc", "_int_memalign", "__libc_malloc", "__libc_free", "__libc_calloc",
    "__libc_realloc", "__libc_memalign", "malloc", "free", "calloc", "realloc", "cfree",
    "tcache_*", "unlink_chunk*",
    # string and memory routines handed a bad pointer
    "memcpy", "memmove", "memset", "memcmp", "memchr", "strlen", "strnlen", "strcpy", "strncpy",
    "strcmp", "strncmp", "strchr", "strrchr", "strstr", "__mem*_avx*", "__mem*_sse*", "__mem*_evex*",
    "__mem*_erms", "__str*_avx*", "__str*_sse*", "__str*_evex*", "__stp*_avx*",
    # language runtimes: terminate, panic, throw
    "std::terminate*", "std::__terminate*", "__cxxabiv1::__terminate*", "__gnu_cxx::__verbose_terminate_handler*",
    "__cxa_throw", "__cxa_rethrow", "_Unwind_*",
    "core::panicking::*", "std::panicking::*", "std::sys::*abort*", "std::process::abort", "rust_panic",
    "__rust_start_panic", "rust_begin_unwind", "core::result::unwrap_failed", "core::option::unwrap_failed",
    "core::option::expect_failed",
    "runtime.raise", "runtime.raisebadsignal", "runtime.crash", "runtime.fatalpanic", "runtime.fatalthrow",
    "runtime.throw", "runtime.gopanic", "runtime.sigpanic", "runtime.panicmem*", "runtime.dieFromSignal",
    "runtime.sighandler", "runtime.sigtrampgo", "runtime.sigtramp", "runtime.abort",
    "g_assertion_message*", "g_assert_warning", "_g_log_abort", "g_log", "g_logv", "g_log_default_handler",
    "g_log_structured*", "g_log_writer_*",
    # where every program and thread starts: guilty only when nothing else is
    "_start", "__libc_start_main", "__libc_start_main_*", "__libc_start_call_main", "start_thread", "clone",
    "clone3", "__clone*",
)

DEFAULT_KERNEL = (
    "dump_stack", "dump_stack_lvl", "__dump_stack", "show_stack", "show_stack_log_lvl", "show_trace_log_lvl",
    "warn_slowpath_common", "warn_slowpath_fmt", "warn_slowpath_null", "warn_on_slowpath", "__warn",
    "__warn_printk", "report_bug", "handle_bug", "exc_invalid_op", "asm_exc_invalid_op", "do_invalid_op",
    "invalid_op", "do_error_trap", "do_trap", "panic", "oops_end", "die", "__die", "no_context",
    "__bad_area_nosemaphore", "bad_area*", "do_page_fault", "__do_page_fault", "page_fault",
    "exc_page_fault", "asm_exc_page_fault", "do_user_addr_fault", "do_kern_addr_fault",
    "kernelmode_fixup_or_oops", "page_fault_oops", "do_general_protection", "general_protection",
    "exc_general_protection", "asm_exc_general_protection", "printk", "vprintk*", "_printk",
    "lockdep_rcu_suspicious", "__might_sleep", "___might_sleep", "__might_resched", "__might_fault",
    "might_fault", "print_usage_bug", "mark_lock*", "__lock_acquire", "lock_acquire", "check_noncircular",
    "print_circular_bug", "__schedule_bug", "usercopy_abort", "__check_object_size", "fortify_panic",
    "__list_add_valid*", "__list_del_entry_valid*", "refcount_warn_saturate", "kasan_report",
    "__asan_*", "__kasan_*", "kasan_*",
)

DEFAULTS: dict[Domain, tuple[str, ...]] = {Domain.CRASH: DEFAULT_CRASH, Domain.KERNEL: DEFAULT_KERNEL}


def default_list(domain: Domain) -> NeverGuilty:
    return NeverGuilty.from_texts(DEFAULTS[domain])
