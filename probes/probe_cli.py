"""The click shell every probe's command line shares (loaded only when click reads the
command line: see telemetry.options)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from telemetry.cli import OneLineErrors
from telemetry.command import build_command
from telemetry.options import Options


class ProbeCommand(OneLineErrors, click.Command):
    """A click command whose errors are one line (`prog: message`, exit 1: see
    `telemetry.cli.run_main`), and whose help is the original program's text (with `%s`
    for the program name) when it has one.
    """

    def __init__(self, *args: Any, usage_text: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.usage_text = usage_text

    def get_help(self, ctx: click.Context) -> str:
        if self.usage_text is None:
            return super().get_help(ctx)
        return self.usage_text.replace("%s", ctx.find_root().info_name or self.name or "")


def probe_command(name: str, options: Options, run: Callable[..., Any], **attrs: Any) -> ProbeCommand:
    """The click command of a probe whose options are the table `options` and whose work
    is `run` (called with the options' values)."""
    command = build_command(name, options, run, cls=ProbeCommand,
                            context_settings={"help_option_names": ["-h", "--help"]}, **attrs)
    assert isinstance(command, ProbeCommand)
    return command


def run(command: click.Command, name: str) -> Callable[[], None]:
    """The console-script entry point of a probe command."""

    def main() -> None:
        command.main(prog_name=name)

    return main


