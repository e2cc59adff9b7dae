"""click command classes for the programs: one-line errors (`telemetry.cli.run_main`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .cli import CONTEXT_SETTINGS, OneLineErrors, click_callback
from .options import Options


class Command(OneLineErrors, click.Command):
    """A program's click command with one-line errors."""


class Group(OneLineErrors, click.Group):
    """A program's click group with one-line errors."""


def build_command(name: str, options: Options, run: Callable[..., Any], *, cls: type[click.Command] = Command,
                  context_settings: dict[str, Any] = CONTEXT_SETTINGS, **attrs: Any) -> click.Command:
    """The click command of a program whose options are the table `options` and whose work
    is `run` (called with the options' values; its docstring is the help unless `attrs`
    gives one): what `telemetry.cli.program_main` hands a command line it does not read."""
    return click.command(name, cls=cls, context_settings=context_settings, **attrs)(click_callback(options, run))
