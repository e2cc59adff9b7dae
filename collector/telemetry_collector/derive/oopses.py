"""Kernel oops records to stacks: the built-in parser behind the Kernel view (pure).

The payload is the one klogscanner and pstoreprobe send (`telemetry.probes.oops.oops_payload`,
the original's layout): ``Reason: <first line>``, then ``#n function - [kernel]`` frames,
innermost first, ``? `` marking the ones the kernel's unwinder only guessed.  A warning's
reason names the function that warned (``… at kernel/sched/core.c:2342
preempt_notifier_register+0x30/0x70``): it comes first, ahead of the printed frames.
Compiler suffixes (``.isra.6``, ``.constprop.0``, ``.part.3``, ``.cold``) are dropped, so a
rebuilt kernel keeps its groups.  An oops without frames is grouped by its reason with the
numbers in it masked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from telemetry.probes.oops import KERNEL_MODULE

from ..model import NewRecord
from .parsers import Fact
from .stacks import MAX_FRAMES, Domain, Frame, Stack, clip

REASON = "Reason: "
REASON_LINE = re.compile(r"^Reason: (.*)$", re.MULTILINE)
FRAME_LINE = re.compile(r"^#\d+ (\? )?(\S+) - \[(.*)\]$", re.MULTILINE)
WARNED_AT = re.compile(r" at \S+:\d+ ([A-Za-z_][\w.]*)\+0x")
FUNCTION = re.compile(r"[A-Za-z_][\w.]*")
SUFFIX = re.compile(r"(?:\.(?:isra|constprop|part|cold|lto_priv|llvm)(?:\.\d+)?)+$")
NUMBER = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]*\d[0-9a-fA-F]*\b")
SCAN_MAX = 64 * 1024
HEADLINE_MAX = 120


def function_name(text: str) -> str | None:
    if not FUNCTION.fullmatch(text):
        return None
    return SUFFIX.sub("", text) or None


def headline(reason: str) -> str:
    return clip(NUMBER.sub("N", reason.strip()), HEADLINE_MAX)


def stack_of(payload: str) -> Stack | None:
    """None for a payload that is not an oops report."""
    text = payload[:SCAN_MAX]
    m = REASON_LINE.search(text)
    if m is None:
        return None
    start = text.find("\n#", m.end())
    frames = text[start:] if start >= 0 else ""
    if len(frames) + len(m.group(1)) > CACHED_MAX:
        return _stack.__wrapped__(m.group(1), frames)
    return _stack(m.group(1), frames)


# The same oops, on many machines, prints the same reason and frames (what varies, the
# kernel version, taint, modules and registers, comes before the frames): parsed once.
CACHED_MAX = 8192


@functools.lru_cache(maxsize=1024)
def _stack(reason: str, text: str) -> Stack:
    frames: list[Frame] = []
    warned = WARNED_AT.search(reason)
    name = function_name(warned.group(1)) if warned else None
    if name is not None:
        frames.append(Frame(clip(name), KERNEL_MODULE))
    for f in FRAME_LINE.finditer(text):
        if len(frames) >= MAX_FRAMES:
            break
        name = function_name(f.group(2))
        if name is not None:
            frames.append(Frame(clip(name), clip(f.group(3)) or KERNEL_MODULE, unreliable=f.group(1) is not None))
    return Stack(Domain.KERNEL, KERNEL_MODULE, tuple(frames), "" if frames else headline(reason))


def display_lines(payload: str) -> list[str]:
    """The reason and the frames, as the Kernel view shows an example."""
    lines = payload[:SCAN_MAX].splitlines()
    return [line for line in lines if line.startswith((REASON, "#"))]


class KernelParser:
    """klogscanner and pstoreprobe records: one stack each, for the Kernel view."""

    name = "kernel"
    classifications = ("org.clearlinux/kernel/*", "crash/kernel/*")

    def parse(self, record: NewRecord) -> Iterator[Stack | Fact]:
        stack = stack_of(record.payload)
        if stack is not None:
            yield stack


PARSER = KernelParser()
