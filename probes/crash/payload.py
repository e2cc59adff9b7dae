"""What a crash report says and how it is classified: the original crashprobe's rules and
payload layout (spec/probes.md section 3), as pure functions.

Layout (every line ends in a newline; bracketed lines are optional):

    Process: <path>
    PID: <pid>
    [Signal: <n>]
    [Error: <text>]
    [Too many frames. Backtrace truncated.]
    <empty line>
    Backtrace (TID <tid>):
    #<n> <function>() - [<module>][ - <file>:<line>][ (inlined)]   or  #<n> ??? - [<module>]
                                                          or  #<n> (no symbols) at <address>
    [    mangled: <symbol>]
    [Backtrace stopped: <reason>]

C++ and Rust names are demangled as gdb shows them; a C++ name keeps its parameter list
and takes no extra `()` (`#0 shapes::Box<int>::open(int) const - [...]`), and the symbol
as the file has it follows on its own indented `mangled:` line (the original's consumers
match frame lines only, and see the same frames).  A function inlined into its caller is
a frame of its own, as gdb shows it, marked ` (inlined)`; the frame that follows it is
the function it was inlined into, at the line of the call.

Beyond the original: a frame without a source line ends in ` (+0x<offset>)`, its offset in
the module, so it can be symbolized later; a frame outside every module shows its address
(a wild function pointer is recognised by it); a walk that ended early says why, after its
last frame, as gdb does; a report that omits its backtrace (unsafe dump,
flood, another mount namespace) says why in one `Backtrace:` line.  Every text taken from
the core or the files is made printable, and the payload always fits the record limit,
the crashing thread first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telemetry.limits import PAYLOAD_MAX

if TYPE_CHECKING:  # the layout needs no analysis code: a fixed or stub report imports none
    from .analyze import Analysis, Frame, ThreadTrace

FIELD_MAX = 256
MANGLED_PREFIX = "    mangled: "
TRUNCATED_LINE = "Too many frames. Backtrace truncated."


class Category(enum.Enum):
    """Classification and severity, as the original assigns them."""

    BUILD = ("org.clearlinux/crash/clr-build", 2, "Crash from Clear package build\n")
    THIRD_PARTY = ("org.clearlinux/crash/unknown", 2, "Crash from third party\n")
    CLR = ("org.clearlinux/crash/clr", 3, "")
    ERROR = ("org.clearlinux/crash/error", 4, "")

    def __init__(self, classification: str, severity: int, fixed_payload: str):
        self.classification = classification
        self.severity = severity
        self.fixed_payload = fixed_payload


_BUILD_PREFIXES = ("/builddir/build/BUILD/", "!builddir!build!BUILD!")
_USR_PREFIXES = ("/usr/", "!usr!")
_LOCAL_PREFIXES = ("/usr/local/", "!usr!local!")


def classify_path(raw_path: str | None, filters_off: bool = False) -> Category | None:
    """The path filters: a category that needs no core, or None (analyze the core).

    They apply only when the kernel gave the path (-E) and the admin has not turned the
    privacy filters off, exactly as in the original.
    """
    if raw_path is None or filters_off:
        return None
    if raw_path.startswith(_BUILD_PREFIXES):
        return Category.BUILD
    if not raw_path.startswith(_USR_PREFIXES) or raw_path.startswith(_LOCAL_PREFIXES):
        return Category.THIRD_PARTY
    return None


def decode_process_path(raw: str) -> str:
    """%E spells '/' as '!'."""
    return raw.replace("!", "/")


def printable(text: str, limit: int = FIELD_MAX) -> str:
    """Make untrusted text safe for one payload line: no control characters, no surrogates."""
    text = text.encode("utf-8", "replace").decode("utf-8", "replace") if _has_surrogates(text) else text
    out = "".join(ch if ch.isprintable() else "?" for ch in text)
    return out[:limit]


def _has_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


@dataclass(frozen=True)
class Header:
    process: str  # the -E path (decoded) or, without it, the -p name
    pid: int | None
    signal: int | None  # printed when >= 0, as the original


def header_lines(header: Header, error: str | None = None, truncated: bool = False) -> list[str]:
    lines = [f"Process: {printable(header.process)}"]
    if header.pid is not None:
        lines.append(f"PID: {header.pid}")
    if header.signal is not None and header.signal >= 0:
        lines.append(f"Signal: {header.signal}")
    if error:
        lines.append(f"Error: {printable(error, 512)}")
    if truncated:
        lines.append(TRUNCATED_LINE)
    return lines


def function_text(name: str) -> str:
    """`name()` as the original writes it; a demangled C++ name keeps its own parameter
    list (`ns::Box<int>::open(int) const`), as gdb shows it."""
    return name if "(" in name else f"{name}()"


def frame_line(n: int, frame: Frame) -> str:
    if frame.module is None:
        return f"#{n} (no symbols) at {frame.pc:#x}"
    module = printable(frame.module)
    if frame.function:
        line = f"#{n} {function_text(printable(frame.function))} - [{module}]"
    else:
        line = f"#{n} ??? - [{module}]"
    if frame.source is not None:
        line = f"{line} - {printable(frame.source.file)}:{frame.source.line}"
    elif frame.module_offset is not None:
        line = f"{line} (+{frame.module_offset:#x})"
    return f"{line} (inlined)" if frame.inlined else line


def frame_lines(n: int, frame: Frame) -> list[str]:
    lines = [frame_line(n, frame)]
    if frame.mangled:
        lines.append(f"{MANGLED_PREFIX}{printable(frame.mangled, FIELD_MAX)}")
    return lines


def thread_lines(trace: ThreadTrace) -> list[str]:
    lines = ["", f"Backtrace (TID {trace.tid}):"]
    for i, f in enumerate(trace.frames):
        lines += frame_lines(i, f)
    stop = stop_line(trace)
    return lines + [stop] if stop else lines


def stop_line(trace: ThreadTrace) -> str | None:
    """Why a walk ended before the outermost frame, as gdb says it; None when it did not."""
    if trace.stop.clean or trace.truncated:
        return None
    reason = trace.stop.value
    return printable(f"Backtrace stopped: {reason} ({trace.detail})" if trace.detail else
                     f"Backtrace stopped: {reason}", 512)


def category_of(analysis: Analysis) -> Category:
    return Category.ERROR if analysis.error else Category.CLR


def backtrace_payload(header: Header, analysis: Analysis, limit: int = PAYLOAD_MAX) -> str:
    """The full report: header, then threads while they fit (crashing thread first)."""
    blocks = [thread_lines(t) for t in analysis.threads]
    body = _fit(header_lines(header, analysis.error, analysis.frames_truncated), blocks, limit)
    if body is None:  # something had to go: say so, and fit again with that line
        body = _fit(header_lines(header, analysis.error, True), blocks, limit)
    return body if body is not None else "".join(line + "\n" for line in header_lines(header))[:limit]


def _fit(head: list[str], blocks: list[list[str]], limit: int) -> str | None:
    text = "".join(line + "\n" for line in head)
    if len(text.encode()) > limit:
        return None
    size = len(text.encode())
    parts = [text]
    dropped = False
    for block in blocks:
        for line in block:
            chunk = line + "\n"
            n = len(chunk.encode())
            if size + n > limit:
                dropped = True
                break
            parts.append(chunk)
            size += n
        if dropped:
            break
    if dropped and TRUNCATED_LINE not in head:
        return None
    return "".join(parts)


def stub_payload(header: Header, reason: str) -> str:
    """A report without a backtrace, saying why there is none."""
    lines = header_lines(header) + ["", f"Backtrace: not collected ({printable(reason)})"]
    return "".join(line + "\n" for line in lines)
