"""crashprobe's reports to stacks: the built-in parser behind the Crashes view (pure).

The layout is crashprobe's (`telemetry.probes.crash.payload`, the original's plus demangled
names, inline frames, module offsets and stop reasons): a ``Process:`` line, then one
``Backtrace (TID n):`` block per thread, the crashing thread first.  Only that first block
is read.  A C function is kept by its name (``abort``, printed ``abort()``), a demangled C++
one with its parameter list, so the never-guilty list names them as people write them.  A report without a backtrace (``Backtrace: not collected (…)``) is a stack
without frames, grouped per program; a payload that is not a report at all (the fixed
texts of ``crash/clr-build`` and ``crash/unknown``) gives nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from telemetry.probes.crash.payload import MANGLED_PREFIX

from ..model import NewRecord
from .guilty import plain_name
from .parsers import Fact
from .stacks import MAX_FRAMES, Domain, Frame, Stack, clip

THREAD_LINE = re.compile(r"^Backtrace \(TID \d+\):$", re.MULTILINE)
PROGRAM_LINE = re.compile(r"^Process: (.*)$", re.MULTILINE)
FRAME = re.compile(
    r"#(\d+) (?:\(no symbols\)(?: at 0x[0-9a-f]+)?"
    r"|(?P<function>.+?) - \[(?P<module>.*)\](?: - .+:\d+)?(?: \(\+0x(?P<offset>[0-9a-f]+)\))?(?: \(inlined\))?)$"
)
UNKNOWN = "???"
SCAN_MAX = 512 * 1024  # characters of a payload looked at; the crashing thread comes first


def _block(payload: str) -> tuple[str, str]:
    """(program, the text of the crashing thread's block); ("", "") for a non-report."""
    text = payload[:SCAN_MAX]
    head = THREAD_LINE.search(text)
    program = PROGRAM_LINE.search(text, 0, head.start() if head else len(text))
    if program is None:
        return "", ""
    if head is None:
        return program.group(1), ""
    start = head.end() + 1
    end = text.find("\n\n", start - 1)
    following = THREAD_LINE.search(text, start)
    if following is not None and (end < 0 or following.start() < end):
        end = following.start() - 1
    return program.group(1), text[start:end if end >= 0 else len(text)]


def crashing_thread(payload: str) -> tuple[str, list[str]]:
    """(program, lines of the crashing thread's block, frames and their extra lines)."""
    program, block = _block(payload)
    return program, block.splitlines()


def parse_frames(lines: list[str]) -> tuple[Frame, ...]:
    frames: list[Frame] = []
    for line in lines:
        if not line.startswith("#") or len(frames) >= MAX_FRAMES:
            continue
        m = FRAME.match(line)
        if m is None:
            continue
        if m.group("module") is None:
            frames.append(Frame(None, None))
            continue
        function = m.group("function")
        offset = m.group("offset")
        frames.append(Frame(
            function=None if function == UNKNOWN else clip(plain_name(function)),
            module=clip(m.group("module")),
            offset=int(offset, 16) if offset is not None else None,
        ))
    return tuple(frames)


def stack_of(payload: str) -> Stack | None:
    """The crashing thread as a stack; None for a payload that is not a crash report."""
    program, block = _block(payload)
    if not program:
        return None
    if len(block) + len(program) > CACHED_MAX:
        return _stack.__wrapped__(program, block)
    return _stack(program, block)


# The same crash, on many machines, prints the same block: parsed once (blocks up to
# CACHED_MAX characters, so the cache stays within a few megabytes whatever is sent).
CACHED_MAX = 8192


@functools.lru_cache(maxsize=1024)
def _stack(program: str, block: str) -> Stack:
    return Stack(Domain.CRASH, clip(program), parse_frames(block.splitlines()))


def display_lines(payload: str) -> list[str]:
    """The crashing thread as the Crashes view shows an example: frames with their source
    lines, without the mangled names that follow C++ and Rust frames."""
    _, block = crashing_thread(payload)
    return [line for line in block if not line.startswith(MANGLED_PREFIX)]


class CrashParser:
    """crashprobe records: one stack each, for the Crashes view."""

    name = "crash"
    classifications = ("org.clearlinux/crash/*",)

    def parse(self, record: NewRecord) -> Iterator[Stack | Fact]:
        stack = stack_of(record.payload)
        if stack is not None:
            yield stack


PARSER = CrashParser()
