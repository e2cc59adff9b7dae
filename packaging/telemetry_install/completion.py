"""Shell completion files for bash, zsh and fish, one per program and shell.

They are click's own scripts for each command: the shell runs the program with
_NAME_COMPLETE set, and the program answers with the words that fit (subcommands,
options, choices), so completion follows the installed program and nothing is written
twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import click
from click.shell_completion import get_completion_class

from .layout import Layout

SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True)
class CompletionFile:
    program: str
    shell: str
    text: str

    def destination(self, layout: Layout) -> str:
        if self.shell == "bash":
            return os.path.join(layout.bashcompdir, self.program)
        if self.shell == "zsh":
            return os.path.join(layout.zshcompdir, f"_{self.program}")
        return os.path.join(layout.fishcompdir, f"{self.program}.fish")


def complete_var(program: str) -> str:
    """The variable click's programs read (as click names it for a program name)."""
    return f"_{program}_COMPLETE".replace("-", "_").upper()


def completion_files(program: str, command: click.Command) -> list[CompletionFile]:
    files = []
    for shell in SHELLS:
        cls = get_completion_class(shell)
        if cls is None:
            continue
        text = cls(command, {}, program, complete_var(program)).source()
        files.append(CompletionFile(program, shell, text if text.endswith("\n") else text + "\n"))
    return files
