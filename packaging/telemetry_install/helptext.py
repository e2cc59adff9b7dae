"""Reading a program's own --help text, for programs that print the original's text.

Some programs print a fixed help text (the original program's, kept for compatibility)
instead of click's, and their options carry no help strings.  So that their man pages
still come from what the program says, this reads that text back: the one-line summary
("prog [OPTIONS] - summary"), each option line's description ("  -f, --flag   text"),
and the free paragraphs.  It only reads; what it cannot recognise is left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_OPTION_LINE = re.compile(
    r"^\s+(?P<flags>-{1,2}[A-Za-z0-9?][\w-]*(?:,?\s{1,3}--?[A-Za-z0-9][\w-]*)*)"
    r"(?:[ =](?P<metavar>[A-Z][A-Z0-9_]*|<[^>]+>))?\s{2,}(?P<text>\S.*)$"
)
_FLAG = re.compile(r"--?[A-Za-z0-9?][\w-]*")
_HEADING = re.compile(r"^(?:\S.*:|.*: Usage)$")
_SUMMARY = re.compile(r"^\s+\S+ .*? - (?P<summary>\S.*)$")


@dataclass(frozen=True)
class HelpText:
    summary: str = ""
    options: dict[str, str] = field(default_factory=dict)  # each flag → its description
    paragraphs: tuple[str, ...] = ()


def parse(text: str) -> HelpText:
    summary = ""
    options: dict[str, str] = {}
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        structured = False
        last: list[str] = []
        for line in lines:
            if _HEADING.match(line):
                structured, last = True, []
                continue
            m = _OPTION_LINE.match(line)
            if m:
                structured = True
                last = _FLAG.findall(m.group("flags"))
                for flag in last:
                    options[flag] = m.group("text").strip()
                continue
            s = _SUMMARY.match(line)
            if s and not summary and structured:
                summary = s.group("summary").strip()
                continue
            if last and line.startswith((" ", "\t")):
                for flag in last:
                    options[flag] += " " + line.strip()
        if not structured:
            paragraphs.append(" ".join(" ".join(lines).split()))
    return HelpText(summary, options, tuple(paragraphs))
