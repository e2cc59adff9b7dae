"""The programs: pyproject.toml's [project.scripts], and the click command behind each
(through the entry module the scripts run, telemetry.entry).

That table is the one list of programs; man pages and units follow it.  A program whose
module does not exist (yet) is reported missing and skipped; a module that exists but
fails to import is an error, because installing a broken program must not look fine.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click

from telemetry.entry import DEPENDENCIES, missing_module_message
from telemetry.errors import TelemetryError

PROBES_PACKAGE = "telemetry.probes"
# An entry module's table of program name → "module:function" (telemetry.entry.PROGRAMS).
ENTRY_TABLE = "PROGRAMS"


class ProgramError(TelemetryError):
    pass


@dataclass(frozen=True)
class Program:
    name: str
    module: str
    attr: str

    @property
    def is_probe(self) -> bool:
        return self.module == PROBES_PACKAGE or self.module.startswith(PROBES_PACKAGE + ".")


def parse_scripts(text: str, source: str = "pyproject.toml") -> list[Program]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProgramError(f"{source}: {e}") from None
    scripts = data.get("project", {}).get("scripts", {})
    programs = []
    for name, target in sorted(scripts.items()):
        module, sep, attr = str(target).partition(":")
        if not sep or not module or not attr:
            raise ProgramError(f"{source}: script {name!r} must be 'module:function', not {target!r}")
        programs.append(Program(name, module.strip(), attr.strip()))
    return programs


def read_programs(pyproject: Path) -> list[Program]:
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError as e:
        raise ProgramError(f"cannot read {pyproject}: {e.strerror}") from None
    return [behind_entry(p) for p in parse_scripts(text, str(pyproject))]


def behind_entry(program: Program) -> Program:
    """The function an entry module (telemetry.entry) runs for `program`, which is where
    its command is; the program itself when its script names that function directly."""
    try:
        module = importlib.import_module(program.module)
    except ImportError:
        return program  # load_command says why
    table = getattr(module, ENTRY_TABLE, None)
    target = table.get(program.name) if isinstance(table, dict) else None
    if not isinstance(target, str) or ":" not in target:
        return program
    name, _, attr = target.partition(":")
    return Program(program.name, name, attr)


def _is_missing(module: str, error: ModuleNotFoundError) -> bool:
    """True when `module` itself (or a package above it) is absent, not one of its imports."""
    missing = error.name or ""
    return module == missing or module.startswith(missing + ".")


def _missing_dependency(error: ModuleNotFoundError) -> str | None:
    """The one-line message naming the package, for the client's or the collector's
    dependencies."""
    known = DEPENDENCIES
    try:
        from telemetry_collector.dependencies import KNOWN

        known = KNOWN
    except ImportError:
        pass
    return missing_module_message(error, known)


def load_command(program: Program) -> click.Command | None:
    """The click command of `program`; None when its module does not exist."""
    try:
        module = importlib.import_module(program.module)
    except ModuleNotFoundError as e:
        if _is_missing(program.module, e):
            return None
        dependency = _missing_dependency(e)
        if dependency:
            raise ProgramError(f"{program.name} cannot be imported to make its man page: {dependency}") from None
        raise ProgramError(f"{program.name}: importing {program.module} failed: {e}") from None
    except Exception as e:
        raise ProgramError(f"{program.name}: importing {program.module} failed: "
                           f"{type(e).__name__}: {e}") from None
    target = getattr(module, program.attr, None)
    if isinstance(target, click.Command):
        return target
    if target is None:
        raise ProgramError(f"{program.name}: {program.module} has no {program.attr!r}")
    named = getattr(module, "command", None)  # a module may load its command only when asked
    if isinstance(named, click.Command):
        return named
    # A plain main() wrapping the command: take the module's one top-level click command.
    commands = [v for v in vars(module).values()
                if isinstance(v, click.Command) and getattr(v, "callback", None) is not None
                and getattr(v.callback, "__module__", None) == module.__name__]
    tops = [c for c in commands if not any(isinstance(g, click.Group) and c in g.commands.values()
                                           for g in commands)]
    if len(tops) == 1:
        return tops[0]
    raise ProgramError(f"{program.name}: {program.module}:{program.attr} is not a click command "
                       "and the module does not define exactly one")


def resolve(programs: list[Program]) -> tuple[list[tuple[Program, click.Command]], list[Program]]:
    """(programs with their commands, programs whose module does not exist)."""
    found, missing = [], []
    for p in programs:
        command = load_command(p)
        if command is None:
            missing.append(p)
        else:
            found.append((p, command))
    return found, missing
