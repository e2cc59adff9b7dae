"""Writing man(7) source: escaping text so that no help string can become a request.

A help line starting with "." or "'" would be read as a roff request, a backslash as an
escape; non-ASCII is written as \\[uXXXX] so the page renders the same with or without
preconv.
"""

from __future__ import annotations

import re

_OPTION_TOKEN = re.compile(r"(\s*/\s*|,\s*|\s+)")


def _char(c: str) -> str:
    if c == "\\":
        return "\\e"
    if c == "\t":
        return " "
    o = ord(c)
    if o < 0x20 or o == 0x7F:
        return ""
    if o < 0x80:
        return c
    return f"\\[u{o:04X}]"


def text(s: str) -> str:
    """One or more lines of running text, safe to put in the body of a page."""
    lines = []
    for line in s.split("\n"):
        out = "".join(_char(c) for c in line)
        if out.startswith((".", "'")):
            out = "\\&" + out
        lines.append(out)
    return "\n".join(lines)


def words(s: str) -> str:
    """Running text folded to one line (for macro arguments and fonts)."""
    return text(" ".join(s.split()))


def bold(s: str) -> str:
    return f"\\fB{literal(s)}\\fR"


def italic(s: str) -> str:
    return f"\\fI{words(s)}\\fR"


def literal(s: str) -> str:
    """Something typed as is (an option, a file name): hyphens are minus signs."""
    return words(s).replace("-", "\\-")


def quoted(s: str) -> str:
    """A macro argument."""
    return '"' + words(s).replace('"', "\\(dq") + '"'


def options(spec: str) -> str:
    """click's "-f, --config_file PATH" with the options bold and the metavars italic."""
    out = []
    for token in _OPTION_TOKEN.split(spec):
        if not token:
            continue
        if _OPTION_TOKEN.fullmatch(token):
            out.append(re.sub(r"\s+", " ", token))
        elif token.startswith("-"):
            out.append(bold(token))
        else:
            out.append(italic(token))
    return "".join(out)


def request(name: str, *args: str) -> str:
    return "." + " ".join((name, *(quoted(a) for a in args)))
