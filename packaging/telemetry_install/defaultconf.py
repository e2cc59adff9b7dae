"""The default telemetrics.conf, generated from `KEYS` as the original ships it: the
[settings] section with every key commented out at its built-in default, each explained.
"""

from __future__ import annotations

import textwrap

from telemetry.config import KEYS, SECTION, Key, Kind, OutOfRange
from telemetry.paths import Paths

WIDTH = 78


def escape_value(value: str) -> str:
    """A value as the INI dialect reads it back: backslash doubled, spaces as \\s."""
    if any(c in value for c in "\n\r\t"):
        raise ValueError(f"a config value cannot hold a newline or a tab: {value!r}")
    return value.replace("\\", "\\\\").replace(" ", "\\s")


def value_text(key: Key, value: object) -> str:
    if key.kind is Kind.BOOL:
        return "true" if value else "false"
    return escape_value(str(value))


def out_of_range_text(key: Key) -> str:
    if key.kind is not Kind.INT:
        return ""
    return {
        OutOfRange.REJECT: "any other value is an error",
        OutOfRange.CLAMP: "a value outside is moved to the nearest bound",
        OutOfRange.CLAMP_HIGH: "a value below is an error, one above is lowered to the maximum",
        OutOfRange.NEGATIVE_DISABLES: "any negative value means -1; one above the maximum is "
        "lowered to it",
    }[key.out_of_range]


def accepted_text(key: Key) -> str:
    text = f"Accepted: {key.range_text()}"
    extra = out_of_range_text(key)
    return f"{text}; {extra}." if extra else text + "."


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ",
                         break_long_words=False, break_on_hyphens=False)


def render(paths: Paths) -> str:
    lines = [
        "# telemetrics.conf: settings of the telemetry client; see telemetrics.conf(5).",
        "#",
        *_comment(
            f"This copy ({paths.defaults_file}) lists every key at its built-in default, "
            f"commented out. To change a setting, copy it to {paths.config_file} and edit "
            "the copy: exactly one file is read (the one given with -f, else "
            f"{paths.config_file}, else this one) and files are never merged."
        ),
        "#",
        *_comment(
            "Lines starting with # or ; are comments; there are no comments after a value. "
            "In a value, \\s stands for a space and a backslash keeps the character after "
            "it. Every value is checked when a program starts: a wrong one stops it with a "
            "message naming the file, line and key."
        ),
        "",
        f"[{SECTION}]",
    ]
    for key in KEYS:
        lines.append("")
        lines += _comment(key.doc)
        lines += _comment(accepted_text(key) + f" Read by: {key.readers}.")
        lines.append(f"#{key.name}={value_text(key, key.default_for(paths))}")
    return "\n".join(lines) + "\n"
