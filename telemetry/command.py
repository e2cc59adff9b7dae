"""click command classes for the programs: one-line errors (`telemetry.cli.run_main`)."""

from __future__ import annotations

import click

from .cli import OneLineErrors


class Command(OneLineErrors, click.Command):
    """A program's click command with one-line errors."""


class Group(OneLineErrors, click.Group):
    """A program's click group with one-line errors."""
