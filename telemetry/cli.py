"""What every program's command line shares: -f/--config_file, -h/--help, -V/--version,
--user/--system, and the one error handler: whatever goes wrong before or inside a
command (a usage error, a bad config, an unusable file) is one line on stderr,
`<program>: <message>`, and a non-zero exit, never click's multi-line usage block or a
traceback.  The click command classes that use it are in `telemetry.command` (the
daemons, telemctl) and `probes/probe_cli.py`.

click is imported by the helpers that build a command line, not by this module: a program
that only loads its config (crashprobe as the kernel starts it) does not pay for it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import config as config_mod
from .entry import missing_module_message
from .errors import TelemetryError
from .paths import Mode, Paths
from .version import __version__

if TYPE_CHECKING:
    import click

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
# The probes and daemons exit 1 on a usage error, as the original's getopt programs do;
# telemctl exits 2, as systemctl does.
EXIT_USAGE = EXIT_FAILURE
_MODE_META = "telemetry.mode"


def one_line(text: str) -> str:
    return " ".join(text.split())


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _quiet_broken_stdout() -> None:
    """After EPIPE on stdout, point it at /dev/null so the flush at exit stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def run_main(main: Callable[..., Any], args: Any, prog: str, usage_exit: int, **extra: Any) -> NoReturn:
    """Run `main` (a click command's own main) without click's error printing, and exit."""
    import click

    try:
        rv = main(args, prog, standalone_mode=False, **extra)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else prog
        _say(f"{where}: {one_line(e.format_message())} (see '{where} --help')")
        sys.exit(usage_exit)
    except click.ClickException as e:
        _say(f"{prog}: {one_line(e.format_message())}")
        sys.exit(e.exit_code or EXIT_FAILURE)
    except click.Abort:
        _say(f"{prog}: aborted")
        sys.exit(EXIT_FAILURE)
    except TelemetryError as e:
        _say(f"{prog}: {one_line(str(e))}")
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _quiet_broken_stdout()
        sys.exit(EXIT_FAILURE)
    except OSError as e:  # the environment (permissions, a full disk), not a bug: one line
        where = f": {e.filename}" if e.filename else ""
        _say(f"{prog}: {e.strerror or e}{where}")
        sys.exit(EXIT_FAILURE)
    sys.exit(rv if isinstance(rv, int) else 0)


class OneLineErrors:
    """Mixed into a click command: its `main` reports every error in one line (see
    `run_main`) and exits with the command's return value."""

    usage_exit: int = EXIT_USAGE

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> NoReturn:
        """Always exits, whatever `standalone_mode` says."""
        prog = prog_name or getattr(self, "name", None) or os.path.basename(sys.argv[0])
        run_main(super().main, args, prog, self.usage_exit,  # type: ignore[misc]  # a mixin
                 complete_var=complete_var, **extra)


def mode_options(f: Callable) -> Callable:
    """--user / --system, as telemctl has them; both together is a usage error.  The choice
    is read with `chosen_mode()` (None: TELEMETRY_MODE, else who runs the program)."""
    import click

    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if not value:
            return
        chosen = ctx.meta.get(_MODE_META)
        if chosen is not None and chosen != param.name:
            raise click.UsageError("--user and --system exclude each other; give one of them", ctx)
        ctx.meta[_MODE_META] = param.name

    f = click.option("--system", is_flag=True, expose_value=False, callback=remember,
                     help="System mode: the system daemons' socket, /etc/telemetrics, /var.")(f)
    f = click.option("--user", is_flag=True, expose_value=False, callback=remember,
                     help="User mode: your own daemons (telemctl --user start), your XDG directories.")(f)
    return f


def chosen_mode(ctx: click.Context | None = None) -> str | None:
    """The mode given with --user/--system, or None (also when no click command runs)."""
    click = sys.modules.get("click")
    if ctx is None and click is not None:
        ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    mode = ctx.meta.get(_MODE_META)
    return Mode(mode).value if mode else None


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
    paths = paths or Paths.detect(chosen_mode())
    return paths, config_mod.load(paths, config_file)
