"""`python -m telemetry_install`: what `make install` runs, and the generated files alone."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from telemetry.cli import CONTEXT_SETTINGS, handle_errors, version_option
from telemetry.errors import TelemetryError
from telemetry.fsutil import atomic_write

from . import artifacts, defaultconf, manpages, package
from .layout import Layout, under
from .programs import Program, read_programs, resolve
from .templates import fill


class InstallError(TelemetryError):
    pass


def layout_options(f: Callable) -> Callable:
    for name, default, what in reversed((
        ("--prefix", "/usr", "Installation prefix (programs in PREFIX/bin, units in PREFIX/lib/systemd/system)."),
        ("--sysconfdir", "/etc", "Where telemetrics/ (admin config, opt-in) lives."),
        ("--localstatedir", "/var", "Parent of the spool/, lib/, log/ and cache/ telemetry folders."),
        ("--rundir", "/run", "Where the socket telem-0 lives."),
    )):
        f = click.option(name, default=default, show_default=True, metavar="DIR", help=what)(f)
    return f


def make_layout(prefix: str, sysconfdir: str, localstatedir: str, rundir: str) -> Layout:
    try:
        return Layout(prefix, sysconfdir, localstatedir, rundir)
    except ValueError as e:
        raise InstallError(str(e)) from None


def source_tree(source: str | None) -> Path:
    """--source, else the checkout this module runs from (an editable install)."""
    tree = Path(source) if source else Path(__file__).resolve().parents[2]
    if not (tree / "pyproject.toml").is_file():
        raise InstallError("cannot find the source tree (a folder with pyproject.toml); "
                           "give it with --source")
    return tree


def note(message: str) -> None:
    click.echo(f"telemetry_install: {message}", err=True)


def resolved_programs(tree: Path) -> list[tuple[Program, click.Command]]:
    found, missing = resolve(read_programs(tree / "pyproject.toml"))
    for p in missing:
        note(f"skipping {p.name}: module {p.module} does not exist")
    return found


def man_pages(found: list[tuple[Program, click.Command]], layout: Layout) -> list[manpages.Page]:
    refs = [(p.name, 1) for p, _ in found]
    pages = [manpages.program_page(p, c, layout.paths, refs) for p, c in found]
    pages.append(manpages.config_page(layout.paths, [p.name for p, _ in found]))
    return pages


class Writer:
    """Writes files below DESTDIR and says what it wrote."""

    def __init__(self, destdir: str, quiet: bool):
        self.destdir, self.quiet = destdir, quiet

    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        real = under(self.destdir, path)
        os.makedirs(os.path.dirname(real), mode=0o755, exist_ok=True)
        atomic_write(real, data.encode() if isinstance(data, str) else data, mode)
        if not self.quiet:
            click.echo(f"installed {path}")


@click.group(context_settings=CONTEXT_SETTINGS)
@version_option
@click.option("--source", metavar="DIR", help="Source tree (default: the one this module is in).")
@click.pass_context
def main(ctx: click.Context, source: str | None) -> None:
    """Install telemetrics-client as a distribution package would, or print the files
    generated from the programs' definitions (man pages, default telemetrics.conf).
    """
    ctx.obj = source


@main.command("install", short_help="Install everything below DESTDIR.")
@layout_options
@click.option("--destdir", default="", metavar="DIR", help="Staging root; every path is put below it.")
@click.option("--python", "python", default=None, metavar="PATH",
              help="Interpreter the programs run with (default: the system's python3).")
@click.option("--pythondir", default=None, metavar="DIR",
              help="Folder for the Python package (default: the one the interpreter searches below PREFIX).")
@click.option("--no-package", is_flag=True, help="Install only the data files and man pages.")
@click.option("-q", "--quiet", is_flag=True, help="Do not list the installed files.")
@click.pass_obj
@handle_errors
def install_cmd(source: str | None, prefix: str, sysconfdir: str, localstatedir: str, rundir: str,
                destdir: str, python: str | None, pythondir: str | None, no_package: bool,
                quiet: bool) -> None:
    """Install the package, programs, units, tmpfiles.d, sysusers.d, sysctl.d, the systemd
    manager drop-in, the default telemetrics.conf and the man pages.
    """
    tree = source_tree(source)
    layout = make_layout(prefix, sysconfdir, localstatedir, rundir)
    if destdir and not os.path.isabs(destdir):
        destdir = os.path.abspath(destdir)
    out = Writer(destdir, quiet)
    if not no_package:
        python = python or _system_python()
        where = package.install(tree, layout, destdir, python, pythondir)
        if not quiet:
            click.echo(f"installed the Python package in {where} (for {python})")
    found = resolved_programs(tree)
    names = {p.name for p, _ in found}
    chosen, skipped = artifacts.select(artifacts.discover(tree), names)
    for artifact, missing in skipped:
        note(f"skipping {artifact.name}: it runs {', '.join(sorted(missing))}, which is not installed")
    values = layout.placeholders()
    for artifact in chosen:
        text = artifact.source.read_text(encoding="utf-8")
        out.write(artifact.destination(layout), fill(text, values, str(artifact.source)))
    out.write(layout.paths.defaults_file, defaultconf.render(layout.paths))
    for page in man_pages(found, layout):
        out.write(os.path.join(layout.mandir, f"man{page.section}", page.filename), page.text)


def _system_python() -> str:
    for candidate in ("/usr/bin/python3", sys.executable):
        if os.access(candidate, os.X_OK):
            return candidate
    raise InstallError("no python3 found; give one with --python")


@main.command("conf", short_help="Print the default telemetrics.conf.")
@layout_options
@handle_errors
def conf_cmd(prefix: str, sysconfdir: str, localstatedir: str, rundir: str) -> None:
    """Print the default telemetrics.conf (every key at its default, commented out)."""
    layout = make_layout(prefix, sysconfdir, localstatedir, rundir)
    click.echo(defaultconf.render(layout.paths), nl=False)


@main.command("man", short_help="Print the man page source of a program.")
@layout_options
@click.argument("name")
@click.pass_obj
@handle_errors
def man_cmd(source: str | None, prefix: str, sysconfdir: str, localstatedir: str, rundir: str,
            name: str) -> None:
    """Print the man page source of program NAME, or of telemetrics.conf."""
    layout = make_layout(prefix, sysconfdir, localstatedir, rundir)
    pages = {p.name: p for p in man_pages(resolved_programs(source_tree(source)), layout)}
    if name not in pages:
        raise InstallError(f"no man page {name!r}; there are: {', '.join(sorted(pages))}")
    click.echo(pages[name].text, nl=False)


if __name__ == "__main__":
    main()
