"""Building a distribution's wheel and installing it into the staging tree, offline.

The wheel is built by setuptools' backend, run by the interpreter the tool runs with,
from a private copy of the sources: no network, no build isolation (setuptools and wheel
must be there: `make venv`, or Debian's python3-setuptools and python3-wheel).  It is
installed for the target interpreter (`--python`, normally the system's /usr/bin/python3,
whose path the scripts' #! lines carry) into the directory that interpreter searches below
the prefix (Debian's python3 searches lib/python3/dist-packages, not the
lib/pythonX.Y/site-packages of the generic prefix scheme), and compiled for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from telemetry.errors import TelemetryError

from .layout import Layout, under
from .wheel import PREFIX_MODULE, Installed, add_file, install_wheel, prefix_module


class PackageError(TelemetryError):
    pass


_SITE_QUERY = r"""
import json, sys, sysconfig
prefix = sys.argv[1]
purelib = sysconfig.get_paths("posix_prefix", vars={"base": prefix, "platbase": prefix})["purelib"]
print(json.dumps({"purelib": purelib, "path": sys.path, "version": list(sys.version_info[:2])}))
"""


@dataclass(frozen=True)
class SiteDirs:
    scheme_dir: str  # the generic prefix scheme's lib/pythonX.Y/site-packages
    search_dir: str  # where the interpreter looks below the prefix (may be the same)


def choose_site_dir(prefix: str, scheme_dir: str, search_path: list[str]) -> str:
    """The first directory of `search_path` directly below prefix/lib*, else the scheme's."""
    prefix = os.path.normpath(prefix)
    for entry in search_path:
        if not entry or not os.path.isabs(entry):
            continue
        rel = os.path.relpath(os.path.normpath(entry), prefix)
        if rel.startswith("lib") and not rel.startswith("..") and rel.endswith(("site-packages", "dist-packages")):
            return os.path.normpath(entry)
    return scheme_dir


def _run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as e:
        raise PackageError(f"{what}: cannot run {argv[0]}: {e.strerror}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise PackageError(f"{what} failed (exit {done.returncode}): " + " / ".join(tail))
    return done.stdout


def site_dirs(python: str, prefix: str) -> SiteDirs:
    out = _run([python, "-c", _SITE_QUERY, prefix], f"asking {python} for its directories")
    info = json.loads(out)
    if tuple(info["version"]) < (3, 11):
        raise PackageError(f"{python} is Python {'.'.join(map(str, info['version']))}; 3.11 or later is needed")
    return SiteDirs(info["purelib"], choose_site_dir(prefix, info["purelib"], info["path"]))


def _sources_to_copy(tree: Path) -> list[str]:
    """What building the wheel reads: pyproject.toml, setup.cfg, the readme, the license
    and the package folders (package-dir's, else the top of each package's name)."""
    data = tomllib.loads((tree / "pyproject.toml").read_text(encoding="utf-8"))
    names = {"pyproject.toml"}
    readme = data.get("project", {}).get("readme")
    if isinstance(readme, str):
        names.add(readme)
    setuptools_table = data.get("tool", {}).get("setuptools", {})
    package_dir = setuptools_table.get("package-dir", {})
    names |= {d.split("/", 1)[0] for d in package_dir.values() if d}
    names |= {p.split(".", 1)[0] for p in setuptools_table.get("packages", []) if p.split(".", 1)[0] not in package_dir}
    names |= {n for n in ("LICENSE", "MANIFEST.in", "setup.cfg") if (tree / n).exists()}
    return sorted(n for n in names if (tree / n).exists())


_BUILD = "import sys\nfrom setuptools import build_meta\nprint(build_meta.build_wheel(sys.argv[1]))\n"
_MISSING = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
_BUILD_TOOLS = {"setuptools": "python3-setuptools", "wheel": "python3-wheel"}


def build_wheel(tree: Path, outdir: Path) -> Path:
    """The wheel of the distribution in `tree`, built by setuptools' PEP 517 backend run by
    this interpreter, from a private copy of the sources (no network, no build isolation,
    and two builds at once cannot mix their build/ folders)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".*")
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="telemetry-build-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in _sources_to_copy(tree):
            src = tree / name
            if src.is_dir():
                shutil.copytree(src, copy / name, ignore=ignore)
            else:
                shutil.copy2(src, copy / name)
        try:
            done = subprocess.run([sys.executable, "-c", _BUILD, str(outdir.resolve())], cwd=copy,
                                  capture_output=True, text=True, check=False)
        except OSError as e:
            raise PackageError(f"building the wheel: cannot run {sys.executable}: {e.strerror}") from None
    if done.returncode != 0:
        missing = _MISSING.search(done.stderr)
        if missing and missing.group(1).split(".")[0] in _BUILD_TOOLS:
            module = missing.group(1).split(".")[0]
            raise PackageError(f"building the wheel needs the Python module '{module}' for {sys.executable}: "
                               f"install the Debian package {_BUILD_TOOLS[module]} (or: pip install {module})")
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise PackageError(f"building the wheel failed (exit {done.returncode}): " + " / ".join(tail))
    wheel = outdir / done.stdout.strip().splitlines()[-1]
    if not wheel.is_file():
        raise PackageError(f"building the wheel did not produce {wheel}")
    return wheel


def install(tree: Path, layout: Layout, destdir: str, python: str, pythondir: str | None = None,
            compile_bytecode: bool = True) -> Installed:
    """Build, add _prefix.py (the client), install into DESTDIR for `python`, and compile
    the modules for it (a sandboxed daemon cannot write its __pycache__ later)."""
    dirs = site_dirs(python, layout.prefix)
    target_dir = os.path.normpath(pythondir) if pythondir else dirs.search_dir
    with tempfile.TemporaryDirectory(prefix="telemetry-wheel-") as tmp:
        wheel = build_wheel(tree, Path(tmp) / "built")
        with zipfile.ZipFile(wheel) as z:
            has_library = any(n.startswith("telemetry/") for n in z.namelist())
        if has_library:
            prefixed = Path(tmp) / wheel.name
            add_file(wheel, prefixed, PREFIX_MODULE, prefix_module(layout))
            wheel = prefixed
        _remove_other_versions(wheel, under(destdir, target_dir))
        installed = install_wheel(wheel, destdir=destdir, site_dir=target_dir, bindir=layout.bindir,
                                  python=python)
    if compile_bytecode:
        packages = [under(destdir, os.path.join(target_dir, t)) for t in installed.top_level
                    if not t.endswith(".dist-info")]
        argv = [python, "-m", "compileall", "-q", "-j", "0"]
        if destdir:
            argv += ["-s", destdir, "-p", "/"]
        _run([*argv, *packages], f"compiling the modules for {python}")
    return installed


def _remove_other_versions(wheel: Path, site: str) -> None:
    """An earlier version's metadata would make the site directory hold two versions."""
    with zipfile.ZipFile(wheel) as z:
        info = {n.split("/", 1)[0] for n in z.namelist() if ".dist-info/" in n}
    for name in info:
        dist = name.split("-", 1)[0]
        for stale in Path(site).glob(f"{dist}-*.dist-info"):
            if stale.name != name:
                shutil.rmtree(stale)
