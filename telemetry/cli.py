"""What every program's command line shares: -f/--config_file, -h/--help, -V/--version,
--user/--system, and the one error handler: whatever goes wrong before or inside a
command (a usage error, a bad config, an unusable file) is one line on stderr,
`<program>: <message>`, and a non-zero exit, never click's multi-line usage block or a
traceback.  The click command classes that use it are in `telemetry.command` (the
daemons, telemctl) and `probes/probe_cli.py`.

click is imported by the helpers that build a command line, not by this module: a program
that only loads its config (crashprobe as the kernel starts it) does not pay for it, and
`program_main` runs a program whose usual command lines are read without click (the
table of `telemetry.options`; the items every program shares are here: `ConfigFile`,
`MODE`, `VERSION`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence

from . import config as config_mod
from .entry import missing_module_message, require
from .errors import TelemetryError
from .options import ClickOnly, Item, Option, Options
from .paths import Mode, Paths
from .version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from typing import Any, NoReturn

    import click

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
# The probes and daemons exit 1 on a usage error, as the original's getopt programs do;
# telemctl exits 2, as systemctl does.
EXIT_USAGE = EXIT_FAILURE
_MODE_META = "telemetry.mode"
# The program `program_main` runs without click, for `fail` (click's context names it otherwise).
_program: str | None = None


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


def echo(text: str, err: bool = False) -> None:
    """What click.echo prints for `text`, without importing click.  Text holding an escape
    character goes through click.echo, which removes escape sequences from what is not
    written to a terminal, so both print the same."""
    if "\x1b" in text:
        import click

        click.echo(text, err=err)
        return
    stream = sys.stderr if err else sys.stdout
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()


def run_main(main: Callable[..., Any], args: Any, prog: str, usage_exit: int, **extra: Any) -> NoReturn:
    """Run `main` (a click command's own main) without click's error printing, and exit."""
    import click

    def call() -> Any:
        try:
            return main(args, prog, standalone_mode=False, **extra)
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

    run_guarded(call, prog)


def run_guarded(call: Callable[[], Any], prog: str) -> NoReturn:
    """Run a program's work; whatever goes wrong is one line (see the module), and exit
    with its return value."""
    try:
        rv = call()
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


def completion_variable(prog: str) -> str:
    """The variable that asks click's shell completion of `prog` (as click names it)."""
    return "_" + prog.replace("-", "_").replace(".", "_").upper() + "_COMPLETE"


def program_main(prog: str, options: Options, run: Callable[..., Any],
                 command: Callable[[], Any]) -> Callable[[], NoReturn]:
    """A program's main(): its command line read with `options` and `run` called with the
    values, or, when that reader leaves the line to click (help, version, completion, an
    error), `command()`, the click command built from the same table (see
    telemetry.options).  Errors are reported as the click command reports them."""

    def main() -> NoReturn:
        global _program
        # click reads the help and the mistakes: a missing click is said at start, as it was
        # when every command line went through it.
        require("click")
        values = None if completion_variable(prog) in os.environ else options.parse(sys.argv[1:])
        if values is None:
            command().main(prog_name=prog)
            raise AssertionError("a command's main exits")  # pragma: no cover
        _program = prog
        run_guarded(lambda: run(**values), prog)

    return main


def command_attribute(module: str, command: Callable[[], Any]) -> Callable[[str], Any]:
    """A module's `__getattr__` giving `command`, its program's click command, built when
    first asked for (help, man pages, tests), so that importing the module imports no click."""

    def __getattr__(name: str) -> Any:
        if name == "command":
            return command()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def click_callback(options: Options, run: Callable[..., Any]) -> Callable[..., Any]:
    """The click command's callback for `run`: click's parameters, plus what click keeps
    elsewhere (the mode)."""

    @functools.wraps(run)
    def callback(**params: Any) -> Any:
        return run(**params, **options.from_click())

    return options.decorate(callback)


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


class ModeSwitch(Item):
    """--user / --system in the table: the program gets `mode` ("user", "system" or None)."""

    names = ("--user", "--system")

    def start(self, values: dict[str, Any]) -> None:
        values["mode"] = None

    def take(self, values: dict[str, Any], name: str, value: str | None) -> bool:
        mode = name[2:]
        if values["mode"] not in (None, mode):
            return False  # both: click says they exclude each other
        values["mode"] = mode
        return True

    def decorate(self, f: Callable[..., Any]) -> Callable[..., Any]:
        return mode_options(f)

    def from_click(self) -> dict[str, Any]:
        return {"mode": chosen_mode()}


MODE = ModeSwitch()


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


VERSION = ClickOnly(version_option)


class ConfigFile(Option):
    """-f/--config_file PATH in the table (`config_option`): a path the original would
    refuse is left to click, which says why."""

    def __init__(self, *names: str):
        super().__init__("config_file", names or ("-f", "--config_file"), metavar="PATH")

    def take(self, values: dict[str, Any], name: str, value: str | None) -> bool:
        try:
            config_mod.check_config_path(value or "")
        except config_mod.ConfigError:
            return False
        values[self.dest] = value
        return True

    def decorate(self, f: Callable[..., Any]) -> Callable[..., Any]:
        return config_option(*self.names)(f)


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
    click = sys.modules.get("click")
    ctx = click.get_current_context(silent=True) if click is not None else None
    prog = ctx.find_root().info_name if ctx else _program
    echo(f"{prog}: {message}" if prog else message, err=True)
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


def load_config(config_file: str | None, paths: Paths | None = None,
                mode: str | None = None) -> tuple[Paths, config_mod.Config]:
    """`mode`: what --user/--system chose when the command line was read without click."""
    paths = paths or Paths.detect(mode or chosen_mode())
    return paths, config_mod.load(paths, config_file)
