"""The core_pattern command line: which `%` specifiers crashprobe asks the kernel for, and
how their expansions are read.

The kernel expands an unsupported specifier to nothing, so every extra is passed as
`--name=%X` and an empty value means "this kernel does not say" rather than an error.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# The handler's own options, as core_pattern and the original's file mode pass them:
# option -> field.  Anything else (help, offline, journal, a typo) goes to the full CLI.
_KERNEL_OPTIONS = {
    "-p": "process_name", "--process-name": "process_name",
    "-E": "process_path", "--process-path": "process_path",
    "-s": "signal", "--signal": "signal",
    "-c": "core_file", "--core-file": "core_file",
    "-f": "config_file", "--config-file": "config_file", "--config_file": "config_file",
    "--pid": "pid", "--uid": "uid", "--gid": "gid", "--dump-mode": "dump_mode", "--time": "time",
    "--pidfd": "pidfd", "--debug-dir": "debug_dir",
}
_KERNEL_FLAGS = {"-v": "verbose", "--verbose": "verbose"}


@dataclass(frozen=True)
class HandlerArgs:
    """The handler's command line, read without the CLI framework: the kernel starts
    crashprobe for every crash, and the framework's import alone costs more than the rest
    of a run that ends early (not opted in, flood control)."""

    values: tuple[tuple[str, str], ...]
    verbose: bool = False

    def get(self, name: str) -> str | None:
        found = [v for k, v in self.values if k == name]
        return found[-1] if found else None

    def all(self, name: str) -> tuple[str, ...]:
        return tuple(v for k, v in self.values if k == name)


def parse_handler_argv(argv: list[str]) -> HandlerArgs | None:
    """The handler's options (`-p NAME`, `--pid=N`, ...) or None when `argv` holds anything
    else, which the full CLI then parses (and explains)."""
    values: list[tuple[str, str]] = []
    verbose = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _KERNEL_FLAGS:
            verbose = True
            i += 1
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        field = _KERNEL_OPTIONS.get(name)
        if field is None:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        values.append((field, value))
        i += 1
    if not any(k == "process_name" for k, _ in values):
        return None  # the CLI says what is missing
    return HandlerArgs(tuple(values), verbose)
