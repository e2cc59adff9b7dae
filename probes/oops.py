"""The kernel oops parser: kernel log lines in, oops events out; and the oops payload.

No I/O.  klogscanner feeds it /dev/kmsg records (or a replayed log), pstoreprobe feeds it
the lines of a crash dump.  It recognises what the original recognises, with the same
start patterns, classes and severities (`PATTERNS`), the same end rules and the same
payload layout (`oops_payload`), so one oops gives the same record as before.

Where the original loses whole reports we do not (each is covered by a test):

- The line that ends an oops is tested as the start of the next one, so back-to-back
  warnings are two reports instead of one (the original drops the second).
- A stack-context marker alone on a line (` <TASK>`, ` </TASK>`, ` <IRQ>` …, printed by
  every kernel since 4.x) keeps the stack trace open and is not a frame; the original
  ends the trace there and reports modern oopses without frames.
- A frame line written without its indent (`[<c059b02b>] ? foo+0x46/0x80`) is still a
  frame; `Instruction dump:` (the kernel's spelling) ends a trace like `Code:`.
- A frame line with nothing left after its address token is skipped (the original reads
  an uninitialised pointer there).
- `finish()` reports the oops still open at the end of a finished dump (pstore); a live
  kernel log simply waits for more lines.

Where the original is fooled we are not: a report starts only with the kernel's own
words at the start of a message, never with a line the kernel prints about a user
process, which begins with that process's self-chosen name (a process named `BUG: x`
that crashes logs `BUG: x[42]: segfault at …`); the irq pattern is anchored too.

What it extracts (Tainted: a 16-character slice; Kernel Version: to the end of the line;
registers right to left within a line) is kept exactly, quirks included: dashboards
have grouped these payloads for years.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from telemetry.metadata import printable_text

# Kernel log bytes (kmsg, a saved log, a pstore dump) as payload-safe text.
decode_line = printable_text

MAX_LINES = 100
TAINT_FLAGS = 16
C_SPACE = " \t\n\v\f\r"
KERNEL_MODULE = "kernel"


class Mode(enum.Enum):
    NORMAL = "normal"
    ALSA = "alsa"  # never ended by a WARNING / Unable to handle line
    BERT = "bert"  # firmware error records: ends at the first line without [Hardware Error]:


@dataclass(frozen=True)
class Pattern:
    trigger: str
    classification: str
    severity: int
    regex: bool = False
    mode: Mode = Mode.NORMAL
    _compiled: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, text: str) -> bool:
        if self.regex:
            assert self._compiled is not None
            return self._compiled.search(text) is not None
        return text.startswith(self.trigger)


def _regex(trigger: str, cls: str, sev: int, mode: Mode = Mode.NORMAL) -> Pattern:
    # POSIX ERE with REG_ICASE; [[:digit:]] is the only class the table uses.
    compiled = re.compile(trigger.replace("[[:digit:]]", "[0-9]"), re.IGNORECASE)
    return Pattern(trigger, cls, sev, True, mode, compiled)


K_WARNING = "org.clearlinux/kernel/warning"
K_BUG = "org.clearlinux/kernel/bug"
K_STACKOVERFLOW = "org.clearlinux/kernel/stackoverflow"
K_PANIC = "org.clearlinux/kernel/panic"
BERT_CLASS = "org.clearlinux/bert/debug"
BERT_LINE = "[Hardware Error]:"

# Tried in order while no oops is open; the first match wins.  The ALSA and "nobody
# cared" classes lack the org.clearlinux domain in the original; kept, as collectors
# already file them there.
PATTERNS: tuple[Pattern, ...] = (
    Pattern("NETDEV WATCHDOG: ", K_WARNING, 2),
    Pattern("sysctl table check failed: ", K_WARNING, 2),
    Pattern("IRQ handler type mismatch for IRQ", K_WARNING, 2),
    _regex("^ALSA (.*): BUG(.*)", "crash/kernel/bug", 2, Mode.ALSA),
    _regex("^irq [[:digit:]]+: nobody cared", "crash/kernel/warning", 2),
    Pattern("WARNING: ", K_WARNING, 2),
    Pattern("general protection fault: ", K_BUG, 4),
    Pattern("BUG: unable to handle kernel ", K_BUG, 4),
    Pattern("BUG:", K_BUG, 4),
    Pattern("kernel BUG at", K_BUG, 4),
    Pattern("general protection fault:", K_BUG, 4),
    Pattern("do_IRQ: stack overflow:", K_STACKOVERFLOW, 4),
    Pattern("RTNL: assertion failed", K_WARNING, 2),
    Pattern("Eeek! page_mapcount(page) went negative!", K_BUG, 4),
    Pattern("near stack overflow (cur:", K_BUG, 4),
    Pattern("double fault", K_BUG, 4),
    Pattern("Badness", K_BUG, 4),
    Pattern("list_del corruption.", K_WARNING, 2),
    Pattern("list_add corruption.", K_WARNING, 2),
    Pattern("ACPI Error:", K_WARNING, 2),
    Pattern("Kernel panic - not syncing:", K_PANIC, 4),
    Pattern("BERT: Error records from previous boot:", BERT_CLASS, 2, mode=Mode.BERT),
)

# Printed alone on a line around the frames of one stack (kernel 4.x and later).
STACK_MARKERS = frozenset(
    f"<{slash}{name}>" for slash in ("", "/") for name in ("TASK", "IRQ", "NMI", "SOFTIRQ", "EOI", "#DF")
) | {"<<EOE>>"}
FRAME_PREFIX_TOKENS = ("<IRQ>", "<NMI>", "<EOI>", "<<EOE>>")


class EndReason(enum.Enum):
    END_TRACE = "end-trace"  # ---[ end trace … ]---
    STACK_END = "stack-end"  # the first line after the call trace
    NEXT_OOPS = "next-oops"  # a WARNING: / Unable to handle line
    BERT_END = "bert-end"
    MAX_LINES = "max-lines"  # MAX_LINES lines held: reported as far as it goes
    FLUSHED = "flushed"  # finish(): the input ended


@dataclass(frozen=True)
class Oops:
    """One oops: its pattern and its normalised lines, line 0 being the reason."""

    pattern: Pattern
    lines: tuple[str, ...]
    ended_by: EndReason

    @property
    def reason(self) -> str:
        return self.lines[0]

    @property
    def classification(self) -> str:
        return self.pattern.classification

    @property
    def severity(self) -> int:
        return self.pattern.severity


def normalise(line: str) -> str:
    """Drop a `<level>` prefix, then a `[timestamp]`, then at most one whitespace char."""
    if line.startswith("<"):
        end = line.find(">")
        line = line[end + 1 :] if end >= 0 else ""
    if line.startswith("["):
        end = line.find("]")
        line = line[end + 1 :] if end >= 0 else ""
    if line[:1] and line[0] in C_SPACE:
        line = line[1:]
    return line


# The kernel's messages about a user process begin with the process's name and pid:
# "comm[pid]: segfault at …", "comm[pid] trap …", "traps: comm[pid] general protection …",
# "comm (pid): …".  comm is at most 15 bytes, every one of them chosen by that process
# (prctl(PR_SET_NAME), or the name of the file it runs), so "BUG: x" and "WARNING: x" are
# valid names; /dev/kmsg shows its control and non-ASCII bytes as \xNN.
COMM_MAX = 15
_PROCESS_PREFIX = re.compile(r"(?:[a-z_]+: )?(?P<comm>.{1,60}?)(?:\[[0-9]+\]:? | \([0-9]+\): )")
_ESCAPED_BYTE = re.compile(r"\\x[0-9a-fA-F]{2}")


def _comm_bytes(comm: str) -> int:
    escaped = _ESCAPED_BYTE.findall(comm)
    return len(escaped) + len(_ESCAPED_BYTE.sub("", comm).encode("utf-8", "surrogatepass"))


def names_a_process(text: str) -> bool:
    """Whether `text` is a kernel message about a user process, whose start the process
    chose: it can never be the start (or the end) of a kernel report."""
    m = _PROCESS_PREFIX.match(text)
    return m is not None and _comm_bytes(m.group("comm")) <= COMM_MAX


def match_start(text: str) -> Pattern | None:
    """The report this kernel line begins: the trigger at the very start of the message,
    never text of a process's own name (see names_a_process)."""
    if names_a_process(text):
        return None
    for pattern in PATTERNS:
        if pattern.matches(text):
            return pattern
    return None


def is_stack_marker(text: str) -> bool:
    return text.strip(C_SPACE) in STACK_MARKERS


def is_frame_line(text: str) -> bool:
    return text.startswith(" ") or text.startswith("[<")


def _ends_stack(text: str) -> bool:
    if is_stack_marker(text):
        return False
    return (
        not is_frame_line(text)
        or len(text) < 8
        or "Code:" in text
        or "Instruction Dump::" in text
        or "Instruction dump:" in text
    )


class OopsParser:
    """Feed lines one at a time; each call returns the oopses that line completed."""

    def __init__(self) -> None:
        self._pattern: Pattern | None = None
        self._lines: list[str] = []
        self._in_stack = False

    @property
    def open(self) -> bool:
        return self._pattern is not None

    def feed(self, line: str) -> list[Oops]:
        text = normalise(line.rstrip("\n"))
        if self._pattern is None:
            self._start(text)
            return []
        ended = self._end_reason(text)
        if ended is None:
            self._lines.append(text)
            return []
        done = self._close(ended)
        if ended is not EndReason.END_TRACE:
            self._start(text)
        return [done]

    def feed_all(self, lines: Iterable[str]) -> list[Oops]:
        out: list[Oops] = []
        for line in lines:
            out.extend(self.feed(line))
        return out

    def finish(self) -> Oops | None:
        """The oops still open, if any, for input that will not continue."""
        if self._pattern is None:
            return None
        return self._close(EndReason.FLUSHED)

    def reset(self) -> None:
        self._pattern, self._lines, self._in_stack = None, [], False

    def _start(self, text: str) -> None:
        pattern = match_start(text)
        if pattern is not None:
            self._pattern, self._lines, self._in_stack = pattern, [text], False

    def _close(self, reason: EndReason) -> Oops:
        assert self._pattern is not None
        oops = Oops(self._pattern, tuple(self._lines), reason)
        self.reset()
        return oops

    def _end_reason(self, text: str) -> EndReason | None:
        assert self._pattern is not None
        mode = self._pattern.mode
        ended: EndReason | None = None
        if len(self._lines) >= MAX_LINES:
            ended = EndReason.MAX_LINES
        elif "[ end trace" in text:
            ended = EndReason.END_TRACE
        elif mode is Mode.BERT:
            if BERT_LINE not in text:
                ended = EndReason.BERT_END
        elif not self._in_stack:
            if text.startswith("Call Trace:"):
                self._in_stack = True
        elif _ends_stack(text):
            ended = EndReason.STACK_END
        if (ended is None and mode is not Mode.ALSA and ("WARNING:" in text or "Unable to handle" in text)
                and not names_a_process(text)):
            ended = EndReason.NEXT_OOPS
        return ended


def parse_lines(lines: Iterable[str], *, flush: bool = False) -> list[Oops]:
    parser = OopsParser()
    out = parser.feed_all(lines)
    if flush and (last := parser.finish()) is not None:
        out.append(last)
    return out


# --- what a report says ----------------------------------------------------------------

@dataclass(frozen=True)
class Register:
    name: str
    value: int  # as uint64

    def render(self, raw: bool) -> str:
        if raw:
            return f"Register {self.name}: {self.value:x}"
        return f"Register {self.name}: {'Non-zero' if self.value else 'Zero'}"


@dataclass(frozen=True)
class Frame:
    function: str
    module: str = KERNEL_MODULE


@dataclass(frozen=True)
class Report:
    kernel_version: str | None
    tainted: str | None
    modules: str | None
    registers: tuple[Register, ...]
    frames: tuple[Frame, ...]


REGISTERS = (
    "RIP", "RSP", "CR0", "CR2", "CR3", "CR4", "DR0", "DR1", "DR2", "DR3", "DR6", "DR7", "EFLAGS",
    "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "R08", "R09", "R10", "R11", "R12", "R13",
    "R14", "R15", "FS", "GS", "knlGS", "CS", "ES",
)
INT64_MAX = 2**63 - 1
_HEX = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]+)")


def strtoll16(s: str, pos: int) -> tuple[int, int]:
    """C strtoll(s + pos, &end, 16) cast to uint64: (value, end); no digits → (0, pos)."""
    m = _HEX.match(s, pos)
    if not m:
        return 0, pos
    value = int(m.group(2), 16)
    if m.group(1) == "-":
        value = -value
    value = max(min(value, INT64_MAX), -(INT64_MAX + 1))
    return value % 2**64, m.end()


def parse_registers(line: str) -> list[Register]:
    """Registers of one line, left to right, until a token that is not a known register."""
    found: list[Register] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in C_SPACE:
            i += 1
        if i >= n:
            break
        name = next((r for r in REGISTERS if line[i : i + len(r)].lower() == r.lower()), None)
        if name is None:
            break
        i += len(name)
        if line[i : i + 1] == ":":
            i += 1
        if line[i : i + 1] and line[i] in C_SPACE:
            i += 1
        if i >= n:
            break
        value, i = strtoll16(line, i)
        if line[i : i + 1] == ":":
            value, i = strtoll16(line, i + 1)
        ch = line[i : i + 1]
        if ch == "(":
            close = line.find(")", i)
            if close < 0:
                break
            i = close
        elif ch == "<":
            value, i = strtoll16(line, i + 1)
            if line[i : i + 1] != ">":
                continue
            i += 1
        elif line.startswith("[<", i):
            continue  # the original's check can never pass here: the register is dropped
        elif line.startswith("is at", i):
            plus = line.find("+", i)
            if plus >= 0:
                value, _ = strtoll16(line, plus)
            i = n
        elif ch and ch not in C_SPACE:
            continue
        found.append(Register(name, value))
    return found


def parse_cpu_line(line: str) -> tuple[str | None, str | None]:
    """(kernel version, tainted) from a `CPU: … PID: … Comm: …` line."""
    tainted = None
    start = 0
    idx = line.find(" Not tainted ")
    if idx >= 0:
        tainted = "Not tainted"
        start = idx + len(" Not tainted")
    else:
        idx = line.find("Tainted: ")
        if idx >= 0:
            flags_at = idx + len("Tainted: ")
            tainted = line[flags_at : flags_at + TAINT_FLAGS]
            start = flags_at + 1
    version = None
    h = start
    while True:
        h = line.find("#", h)
        if h < 0:
            break
        if h > 0 and line[h - 1] in C_SPACE:
            end = h - 2
            while end >= start and line[end] not in C_SPACE:
                end -= 1
            if end >= start:
                version = line[end + 1 :]
            break
        h += 1
    return version, tainted


def parse_frame(line: str) -> Frame | None:
    s = line.lstrip(C_SPACE)
    if s.startswith(FRAME_PREFIX_TOKENS):
        cut = next((k for k, ch in enumerate(s) if ch in C_SPACE), len(s))
        s = s[cut:].lstrip(C_SPACE)
        if not s:
            return None
    if s.startswith("["):
        cut = next((k for k, ch in enumerate(s) if ch in C_SPACE), len(s))
        s = s[cut:].lstrip(C_SPACE)
    function = s.split("+", 1)[0]
    if not function or is_stack_marker(function):
        return None
    return Frame(function)


def analyse(oops: Oops) -> Report:
    """Scan from the last line up to line 1, as the original does."""
    frames: list[Frame] = []
    registers: list[Register] = []
    modules = version = tainted = None
    in_trace = True
    for line in reversed(oops.lines[1:]):
        if in_trace and (is_frame_line(line) or is_stack_marker(line)):
            frame = parse_frame(line)
            if frame is not None:
                frames.insert(0, frame)
            continue
        in_trace = False
        low = line.lower()
        if low.startswith("modules linked in: "):
            modules = line[len("modules linked in: ") :]
            continue
        if low.startswith(("cpu: ", "pid: ")):
            v, t = parse_cpu_line(line)
            version = v if v is not None else version
            tainted = t if t is not None else tainted
            continue
        registers[:0] = reversed(parse_registers(line))
    return Report(version, tainted, modules, tuple(registers), tuple(frames))


def oops_payload(oops: Oops, *, raw_registers: bool = False) -> str:
    """The record payload, in the original's layout."""
    out = [f"Crash Report:\nReason: {oops.reason}\n"]
    if oops.pattern.mode is Mode.BERT:
        out.extend(f"{line}\n" for line in oops.lines[1:])
        return "".join(out)
    report = analyse(oops)
    if report.kernel_version is not None:
        out.append(f"Kernel Version : {report.kernel_version}\n")
    if report.tainted is not None:
        out.append(f"Tainted : {report.tainted}\n")
    if report.modules is not None:
        out.append(f"Modules : {report.modules}\n")
    if report.frames:
        out.append("Backtrace :\n")
    out.extend(f"{r.render(raw_registers)}\n" for r in report.registers)
    out.extend(f"#{n} {f.function} - [{f.module}]\n" for n, f in enumerate(report.frames, start=1))
    return "".join(out)
