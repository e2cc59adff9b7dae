"""`python -m telemetry_install`: what `make install` and `make uninstall` run, and the
generated files alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import click

from telemetry.cli import CONTEXT_SETTINGS, handle_errors, version_option
from telemetry.errors import TelemetryError
from telemetry.fsutil import atomic_write

from . import artifacts, completion, defaultconf, manpages, package
from .layout import Layout, under
from .programs import Program, read_programs, resolve
from .templates import fill


class InstallError(TelemetryError):
    pass


@dataclass(frozen=True)
class Component:
    """One distribution of the source tree and what is installed with it."""

    name: str
    subdir: str  # where its pyproject.toml is, in the tree
    data_files: bool  # units, tmpfiles.d, …, the default telemetrics.conf and its page

    def pyproject(self, tree: Path) -> Path:
        return tree / self.subdir / "pyproject.toml"


COMPONENTS = {
    "client": Component("client", "", data_files=True),
    "collector": Component("collector", "collector", data_files=False),
}
# Pages the collector's page points to (they come with the client, which it depends on).
COLLECTOR_SEE_ALSO = (("telempostd", 1), ("telemetrics.conf", 5))


def layout_options(f: Callable) -> Callable:
    for name, default, what in reversed((
        ("--prefix", "/usr", "Installation prefix (programs in PREFIX/bin, units in PREFIX/lib/systemd/system)."),
        ("--sysconfdir", "/etc", "Where telemetrics/ (admin config, opt-in) lives."),
        ("--localstatedir", "/var", "Parent of the spool/, lib/, log/ and cache/ telemetry folders."),
        ("--rundir", "/run", "Where the socket telem-0 lives."),
        ("--unitdir", "", "Where the systemd units go [default: PREFIX/lib/systemd/system]."),
        ("--zshcompdir", "", "Where zsh completion functions go [default: PREFIX/share/zsh/site-functions]."),
    )):
        f = click.option(name, default=default, show_default=bool(default), metavar="DIR", help=what)(f)
    return f


def component_option(f: Callable) -> Callable:
    return click.option("--component", type=click.Choice(sorted(COMPONENTS)), default="client", show_default=True,
                        help="The distribution: the client (pyproject.toml) or the collector (collector/).")(f)


def make_layout(prefix: str, sysconfdir: str, localstatedir: str, rundir: str, unitdir: str = "",
                zshcompdir: str = "") -> Layout:
    try:
        return Layout(prefix, sysconfdir, localstatedir, rundir, unitdir, zshcompdir)
    except ValueError as e:
        raise InstallError(str(e)) from None


def source_tree(source: str | None) -> Path:
    """--source, else the checkout this module runs from."""
    tree = Path(source) if source else Path(__file__).resolve().parents[2]
    if not (tree / "pyproject.toml").is_file():
        raise InstallError("cannot find the source tree (a folder with pyproject.toml); "
                           "give it with --source")
    return tree


def note(message: str) -> None:
    click.echo(f"telemetry_install: {message}", err=True)


def resolved_programs(pyproject: Path) -> list[tuple[Program, click.Command]]:
    found, missing = resolve(read_programs(pyproject))
    for p in missing:
        note(f"skipping {p.name}: module {p.module} does not exist")
    return found


def man_pages(found: list[tuple[Program, click.Command]], layout: Layout, component: Component
              ) -> list[manpages.Page]:
    if not component.data_files:
        return [manpages.program_page(p, c, layout.paths, COLLECTOR_SEE_ALSO, client=False) for p, c in found]
    refs = [(p.name, 1) for p, _ in found]
    pages = [manpages.program_page(p, c, layout.paths, refs) for p, c in found]
    pages.append(manpages.config_page(layout.paths, [p.name for p, _ in found]))
    return pages


class Writer:
    """Writes files below DESTDIR, says what it wrote, and remembers it for the manifest."""

    def __init__(self, destdir: str, quiet: bool):
        self.destdir, self.quiet = destdir, quiet
        self.written: list[str] = []

    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        real = under(self.destdir, path)
        os.makedirs(os.path.dirname(real), mode=0o755, exist_ok=True)
        atomic_write(real, data.encode() if isinstance(data, str) else data, mode)
        self.written.append(path)
        if not self.quiet:
            click.echo(f"installed {path}")


@click.group(context_settings=CONTEXT_SETTINGS)
@version_option
@click.option("--source", metavar="DIR", help="Source tree (default: the one this module is in).")
@click.pass_context
def main(ctx: click.Context, source: str | None) -> None:
    """Install telemetrics-client (or its collector) as a distribution package would,
    uninstall what was installed so, or print the files generated from the programs'
    definitions (man pages, default telemetrics.conf).

    Nothing is downloaded: the wheel is built with the setuptools and wheel this Python
    has, and the man pages and completions are made by importing the programs, so their
    dependencies must be importable (a missing one is named in one line).
    """
    ctx.obj = source


@main.command("install", short_help="Install everything below DESTDIR.")
@layout_options
@component_option
@click.option("--destdir", default="", metavar="DIR", help="Staging root; every path is put below it.")
@click.option("--python", "python", default=None, metavar="PATH",
              help="Interpreter the programs run with (default: the system's python3).")
@click.option("--pythondir", default=None, metavar="DIR",
              help="Folder for the Python package (default: the one the interpreter searches below PREFIX).")
@click.option("--no-package", is_flag=True,
              help="Install only the data files, man pages and completions (a packaging tool installs "
              "the Python package).")
@click.option("--no-manifest", is_flag=True,
              help="Do not write the list of installed files that 'uninstall' reads (a package manager "
              "keeps its own).")
@click.option("-q", "--quiet", is_flag=True, help="Do not list the installed files.")
@click.pass_obj
@handle_errors
def install_cmd(source: str | None, prefix: str, sysconfdir: str, localstatedir: str, rundir: str, unitdir: str,
                zshcompdir: str, component: str, destdir: str, python: str | None, pythondir: str | None,
                no_package: bool, no_manifest: bool, quiet: bool) -> None:
    """Install the package and its programs; for the client also the units, tmpfiles.d,
    sysusers.d, sysctl.d, the systemd manager drop-in and the default telemetrics.conf;
    the man pages and the bash, zsh and fish completions of every program.
    """
    tree = source_tree(source)
    comp = COMPONENTS[component]
    layout = make_layout(prefix, sysconfdir, localstatedir, rundir, unitdir, zshcompdir)
    if destdir and not os.path.isabs(destdir):
        destdir = os.path.abspath(destdir)
    out = Writer(destdir, quiet)
    if not no_package:
        python = python or _system_python()
        installed = package.install(tree / comp.subdir, layout, destdir, python, pythondir)
        out.written += installed.files
        if not quiet:
            click.echo(f"installed the Python package {', '.join(installed.top_level)} (for {python})")
    found = resolved_programs(comp.pyproject(tree))
    if comp.data_files:
        names = {p.name for p, _ in found}
        chosen, skipped = artifacts.select(artifacts.discover(tree), names)
        for artifact, missing in skipped:
            note(f"skipping {artifact.name}: it runs {', '.join(sorted(missing))}, which is not installed")
        values = layout.placeholders()
        for artifact in chosen:
            text = artifact.source.read_text(encoding="utf-8")
            out.write(artifact.destination(layout), fill(text, values, str(artifact.source)))
        out.write(layout.paths.defaults_file, defaultconf.render(layout.paths))
    for page in man_pages(found, layout, comp):
        out.write(os.path.join(layout.mandir, f"man{page.section}", page.filename), page.text)
    for program, command in found:
        for f in completion.completion_files(program.name, command):
            out.write(f.destination(layout), f.text)
    if not no_manifest:
        manifest = layout.manifest(_distribution(comp.pyproject(tree)))
        out.write(manifest, "".join(f"{p}\n" for p in sorted({*out.written, manifest})))


def _distribution(pyproject: Path) -> str:
    import tomllib

    return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"])


def _system_python() -> str:
    for candidate in ("/usr/bin/python3", sys.executable):
        if os.access(candidate, os.X_OK):
            return candidate
    raise InstallError("no python3 found; give one with --python")


@main.command("uninstall", short_help="Remove what 'install' installed.")
@click.option("--prefix", default="/usr", show_default=True, metavar="DIR", help="The prefix it was installed to.")
@component_option
@click.option("--destdir", default="", metavar="DIR", help="The staging root it was installed below.")
@click.option("-q", "--quiet", is_flag=True, help="Do not list the removed files.")
@click.pass_obj
@handle_errors
def uninstall_cmd(source: str | None, prefix: str, component: str, destdir: str, quiet: bool) -> None:
    """Remove every file the list written by 'install' names (the Python package folders
    with what Python compiled in them), and the folders that leaves empty.  Installed to
    the running system, the units are first stopped and disabled, and systemd reloaded
    after.  The machine's telemetry data, configuration and the telemetry user stay:
    'telemctl opt-out' before removes the data.
    """
    comp = COMPONENTS[component]
    layout = make_layout(prefix, "/etc", "/var", "/run")
    manifest = layout.manifest(_distribution(comp.pyproject(source_tree(source))))
    listed = under(destdir, manifest)
    try:
        with open(listed, encoding="utf-8") as f:
            files = [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        raise InstallError(f"nothing to uninstall: {listed} does not exist (it is written by "
                           "'make install')") from None
    live = not destdir and os.path.isdir("/run/systemd/system")
    units = [os.path.basename(p) for p in files if p.endswith(artifacts.UNIT_SUFFIXES)]
    if live and units:
        _systemctl("disable", "--now", *units)
    removed = remove_installed(files, destdir)
    if not quiet:
        for path in removed:
            click.echo(f"removed {path}")
    if live and units:
        _systemctl("daemon-reload")
    if comp.data_files and not quiet:
        click.echo("kept: /etc/telemetrics, the telemetry folders below /var and the telemetry user "
                   "(run 'telemctl opt-out' first to remove the data; 'userdel telemetry' removes the user)")


def _systemctl(*args: str) -> None:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        note(f"systemctl {' '.join(args[:2])}…: {done.stderr.strip().splitlines()[-1:] or done.returncode}")


# A removed file's folder is removed when empty only if its name is one of ours, so that
# /usr/bin or a site-packages folder never goes.
_OWN_FOLDER_MARKS = ("telemetr",)


def remove_installed(files: Iterable[str], destdir: str) -> list[str]:
    """Remove `files` (as installed, below `destdir`); a package folder goes whole, with the
    bytecode Python wrote in it."""
    removed = []
    folders: set[str] = set()
    for path in files:
        real = under(destdir, path)
        parts = path.split("/")
        package_root = _package_root(parts)
        if package_root is not None:
            root = under(destdir, package_root)
            if os.path.isdir(root) and not os.path.islink(root):
                shutil.rmtree(root)
                removed.append(package_root)
            folders.add(os.path.dirname(root))
            continue
        if os.path.lexists(real) and not os.path.isdir(real):
            os.unlink(real)
            removed.append(path)
        folders.add(os.path.dirname(real))
    for folder in sorted(folders, key=len, reverse=True):
        _remove_empty_own(folder, destdir)
    return sorted(set(removed))


def _package_root(parts: list[str]) -> str | None:
    """/…/site-packages/NAME for a file inside a package or .dist-info folder there."""
    for i, part in enumerate(parts):
        if part in ("site-packages", "dist-packages") and len(parts) > i + 2:
            return "/".join(parts[: i + 2])
    return None


def _remove_empty_own(folder: str, destdir: str) -> None:
    stop = os.path.normpath(destdir) if destdir else "/"
    while folder.startswith(stop) and folder != stop:
        name = os.path.basename(folder)
        if not any(mark in name for mark in _OWN_FOLDER_MARKS) or not os.path.isdir(folder) or os.listdir(folder):
            return
        os.rmdir(folder)
        folder = os.path.dirname(folder)


@main.command("conf", short_help="Print the default telemetrics.conf.")
@layout_options
@handle_errors
def conf_cmd(prefix: str, sysconfdir: str, localstatedir: str, rundir: str, unitdir: str, zshcompdir: str) -> None:
    """Print the default telemetrics.conf (every key at its default, commented out)."""
    layout = make_layout(prefix, sysconfdir, localstatedir, rundir)
    click.echo(defaultconf.render(layout.paths), nl=False)


@main.command("man", short_help="Print the man page source of a program.")
@layout_options
@click.argument("name")
@click.pass_obj
@handle_errors
def man_cmd(source: str | None, prefix: str, sysconfdir: str, localstatedir: str, rundir: str, unitdir: str,
            zshcompdir: str, name: str) -> None:
    """Print the man page source of program NAME (the collector's too), or of telemetrics.conf."""
    layout = make_layout(prefix, sysconfdir, localstatedir, rundir)
    tree = source_tree(source)
    pages = {}
    for comp in COMPONENTS.values():
        if comp.pyproject(tree).is_file():
            pages.update({p.name: p for p in man_pages(resolved_programs(comp.pyproject(tree)), layout, comp)})
    if name not in pages:
        raise InstallError(f"no man page {name!r}; there are: {', '.join(sorted(pages))}")
    click.echo(pages[name].text, nl=False)


if __name__ == "__main__":
    main()
