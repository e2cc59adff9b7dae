"""The click shell every probe's command line shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from telemetry.cli import EXIT_FAILURE
from telemetry.errors import TelemetryError

from .common import EXIT_OK


class ProbeCommand(click.Command):
    """A click command whose usage errors are one line (`prog: message`, exit 1), and whose
    help is the original program's text (with `%s` for the program name) when it has one.
    """

    def __init__(self, *args: Any, usage_text: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.usage_text = usage_text

    def get_help(self, ctx: click.Context) -> str:
        if self.usage_text is None:
            return super().get_help(ctx)
        return self.usage_text.replace("%s", ctx.find_root().info_name or self.name or "")

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        prog = prog_name or self.name or "probe"
        try:
            rv = super().main(args, prog, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"{prog}: {e.format_message()}", err=True)
            sys.exit(EXIT_FAILURE)
        except click.Abort:
            sys.exit(EXIT_FAILURE)
        except TelemetryError as e:
            click.echo(f"{prog}: {e}", err=True)
            sys.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(EXIT_FAILURE)
        except OSError as e:  # the environment (permissions, full disk), not a bug: one line
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"{prog}: {e.strerror or e}{where}", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def run(command: click.Command, name: str) -> Callable[[], None]:
    """The console-script entry point of a probe command."""

    def main() -> None:
        command.main(prog_name=name)

    return main


