"""What every program's command line shares: -f/--config_file, -h/--help, -V/--version,
and turning a `TelemetryError` into one line on stderr and a non-zero exit.

click is imported by the helpers that build a command line, not by this module: a program
that only loads its config (crashprobe as the kernel starts it) does not pay for it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from . import config as config_mod
from .entry import missing_module_message
from .errors import TelemetryError
from .paths import Paths
from .version import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_FAILURE = 1


def version_option(f: Callable) -> Callable:
    import click

    return click.version_option(
        __version__, "-V", "--version", message="%(version)s", help="Print the program version and exit."
    )(f)


def config_option(*names: str) -> Callable:
    """-f/--config_file PATH, validated as the original validates it (absolute, regular file)."""
    import click

    names = names or ("-f", "--config_file")

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            config_mod.check_config_path(value)
        except config_mod.ConfigError as e:
            raise click.BadParameter(str(e)) from None
        return value

    return click.option(
        *names,
        "config_file",
        metavar="PATH",
        callback=check,
        help="Configuration file to use instead of the default lookup "
        "(an absolute path to a regular file).",
    )


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print one line to stderr and exit; for errors the user can act on."""
    import click

    ctx = click.get_current_context(silent=True)
    prog = ctx.find_root().info_name if ctx else None
    click.echo(f"{prog}: {message}" if prog else message, err=True)
    sys.exit(code)


def handle_errors(f: Callable) -> Callable:
    """Run a command; a TelemetryError, or a dependency found missing when first imported,
    becomes `<prog>: <message>` and exit 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except TelemetryError as e:
            fail(str(e))
        except ModuleNotFoundError as e:
            message = missing_module_message(e)
            if message is None:
                raise
            fail(message)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


def load_config(config_file: str | None, paths: Paths | None = None) -> tuple[Paths, config_mod.Config]:
    paths = paths or Paths.detect()
    return paths, config_mod.load(paths, config_file)
