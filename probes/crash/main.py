"""crashprobe: the kernel's core_pattern handler, and its offline and journal modes.

    kernel      |crashprobe -p %e -E %E -s %s --pid=%P --uid=%u ...   core on stdin
    file        crashprobe -p NAME -c CORE                             as the original
    offline     crashprobe --core CORE [--exe PATH] [--send]           prints the payload
    journal     crashprobe --journal [--follow]                        beside systemd-coredump

Every mode ends in at most one record per crash, built by the same pipeline: decide
(pipeline.py), flood control (flood.py), read the core (corefile.py via source.py),
unwind and symbolize (analyze.py), lay out the payload (payload.py), send (probes/common).
The kernel's invocation is parsed here without the CLI framework (args.py); anything else
goes to the full command line (cli.py).
"""

from __future__ import annotations

import os
import sys

from .privileges import make_undumpable

PROGRAM = "crashprobe"


def _ensure_std_fds() -> None:
    """The kernel starts the handler with only stdin: give stdout and stderr /dev/null."""
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def main() -> None:
    make_undumpable()
    _ensure_std_fds()
    from .args import parse_handler_argv

    parsed = parse_handler_argv(sys.argv[1:])
    if parsed is not None:
        from .handler import handle

        sys.exit(handle(parsed, PROGRAM))
    from .cli import command

    command.main(prog_name=PROGRAM)


def __getattr__(name: str):
    """`command`, the full click command line, for the tools that document it (man pages)."""
    if name == "command":
        from .cli import command

        return command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main"]


if __name__ == "__main__":
    main()
