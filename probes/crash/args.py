"""The core_pattern command line: which `%` specifiers crashprobe asks the kernel for, and
how their expansions are read.

The kernel expands an unsupported specifier to nothing, so every extra is passed as
`--name=%X` and an empty value means "this kernel does not say" rather than an error.
"""

from __future__ import annotations

from telemetry.errors import TelemetryError

# The original's three (-p %e -E %E -s %s) plus identity: the pid in the initial pid
# namespace, real uid and gid, the dump mode (1 normal, 2 suid-safe), the dump time, and
# a pidfd of the crashed process (Linux 6.16+).
CORE_PATTERN_ARGS = "-p %e -E %E -s %s --pid=%P --uid=%u --gid=%g --dump-mode=%d --time=%t --pidfd=%F"
CORENAME_MAX = 127  # the kernel's core_pattern buffer is 128 bytes with its NUL


class ArgumentError(TelemetryError):
    pass


def core_pattern(bindir: str) -> str:
    pattern = f"|{bindir.rstrip('/')}/crashprobe {CORE_PATTERN_ARGS}"
    if len(pattern) > CORENAME_MAX:
        raise ArgumentError(f"core_pattern would be {len(pattern)} bytes; the kernel keeps {CORENAME_MAX}")
    return pattern


def parse_signal(text: str | None) -> int | None:
    """-s: an integer, as the original's strtol check (text after the digits is an error)."""
    if text is None:
        return None
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ArgumentError(f"invalid signal number {text!r}: must be an integer") from None


def parse_optional_id(name: str, text: str | None, lo: int = 0, hi: int = 2**32 - 1) -> int | None:
    """A kernel-expanded number; empty means the kernel did not expand it."""
    if text is None or text == "":
        return None
    try:
        value = int(text, 10)
    except ValueError:
        raise ArgumentError(f"--{name}={text!r} is not a number") from None
    if not lo <= value <= hi:
        raise ArgumentError(f"--{name}={value} is out of range ({lo}..{hi})")
    return value
