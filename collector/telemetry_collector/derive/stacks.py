"""Stacks and their frames, as parsers return them and the crash groups store them (pure).

A `Stack` is the crashing thread of one report, innermost frame first, reduced to what
grouping needs: function, module, and for a frame without a symbol its offset in the
module.  Source lines are left out, so a rebuilt program whose lines moved still lands in
the same group.  Stacks that reduce to the same frames share one stored row (`signature`),
so a change of the never-guilty list recomputes one guilty frame per distinct stack, never
one per record.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass

MAX_FRAMES = 64  # of the crashing thread, kept for choosing the guilty frame
TEXT_MAX = 256  # a function, module, program or headline is cut to this


class Domain(enum.Enum):
    """Which view groups a stack, and which never-guilty list applies to it."""

    CRASH = "crash"  # user-space programs (crashprobe)
    KERNEL = "kernel"  # oopses, warnings and BUGs (klogscanner, pstoreprobe)


@dataclass(frozen=True)
class Frame:
    function: str | None  # None: no symbol ("???", or a pc outside every module)
    module: str | None  # None: outside every module
    offset: int | None = None  # in the module, for a frame without a symbol
    unreliable: bool = False  # a kernel frame printed with "? " (a guess of the unwinder)

    @property
    def known(self) -> bool:
        return self.function is not None

    def label(self) -> str:
        """As a report shows it: ``raise() - [/usr/lib/libc.so.6]``."""
        if self.module is None:
            return "(no symbols)"
        name = self.function if self.function is not None else "???"
        if self.function is not None and "(" not in name and self.module != KERNEL_MODULE:
            name += "()"
        if self.function is None and self.offset is not None:
            name += f" (+{self.offset:#x})"
        return f"{'? ' if self.unreliable else ''}{name} - [{self.module}]"


KERNEL_MODULE = "kernel"


@dataclass(frozen=True)
class Stack:
    domain: Domain
    program: str  # the crashed program's path; "kernel" for the kernel
    frames: tuple[Frame, ...]  # innermost first, at most MAX_FRAMES
    headline: str = ""  # what the report says happened (a kernel oops's reason), for display

    @functools.cached_property
    def signature(self) -> str:
        """Equal for stacks that group alike: same domain, program and frames."""
        parts = [self.domain.value, self.program, self.headline]
        for f in self.frames:
            parts.append(f"{f.function}\x1f{f.module}\x1f{f.offset}\x1f{f.unreliable:d}\x1f{f.function is None:d}"
                         f"{f.module is None:d}")
        return hashlib.sha256("\x1e".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Guilty:
    """The frame a group is keyed by, as two texts (function, module); both are shown."""

    function: str
    module: str

    def label(self) -> str:
        return f"{self.function} - [{self.module}]" if self.module else self.function


NO_BACKTRACE = "(no backtrace)"
UNKNOWN_FUNCTION = "???"


def guilty_of_frame(frame: Frame) -> Guilty:
    if frame.module is None:
        return Guilty("(no symbols)", "")
    if frame.function is None:
        at = f" (+{frame.offset:#x})" if frame.offset is not None else ""
        return Guilty(UNKNOWN_FUNCTION + at, clip(frame.module))
    return Guilty(clip(frame.function), clip(frame.module))


# --- stored form: one frame per line, tab-separated ----------------------------------------

def clip(text: str, limit: int = TEXT_MAX) -> str:
    """One line of printable text: no tabs or line breaks can split a stored frame."""
    text = text[:limit]
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)


def frames_text(frames: tuple[Frame, ...]) -> str:
    lines = []
    for f in frames:
        lines.append("\t".join((
            "" if f.function is None else clip(f.function),
            "" if f.module is None else clip(f.module),
            "" if f.offset is None else format(f.offset, "x"),
            ("?" if f.unreliable else "") + ("-" if f.module is None else ""),
        )))
    return "\n".join(lines)


def frames_from_text(text: str) -> tuple[Frame, ...]:
    frames = []
    for line in text.split("\n") if text else ():
        function, module, offset, flags = (line.split("\t") + ["", "", "", ""])[:4]
        frames.append(Frame(
            function=function or None,
            module=None if "-" in flags else module,
            offset=int(offset, 16) if offset else None,
            unreliable="?" in flags,
        ))
    return tuple(frames)
