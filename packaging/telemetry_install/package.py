"""Building the wheel and installing it with pip into the staging tree.

The wheel is built with --no-build-isolation from a private copy of the sources, so no
network is needed (the build tools come with `make venv`) and two builds at once cannot
mix their build/ folders.  pip installs it for the target interpreter (`--python`,
normally the system's /usr/bin/python3, whose path the scripts' #! lines then carry).
pip's prefix scheme says lib/pythonX.Y/site-packages, which Debian's python3 does not
search; like a distribution's packaging helper, the package is then moved to the
directory the target interpreter searches below the prefix.
"""

from __future__ import annotations

import json
import os
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
from .wheel import PREFIX_MODULE, add_file, prefix_module


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
    pip_dir: str  # where pip's --prefix scheme puts packages
    search_dir: str  # where the interpreter looks below the prefix (may be the same)


def choose_site_dir(prefix: str, pip_dir: str, search_path: list[str]) -> str:
    """The first directory of `search_path` directly below prefix/lib*, else pip's."""
    prefix = os.path.normpath(prefix)
    for entry in search_path:
        if not entry or not os.path.isabs(entry):
            continue
        rel = os.path.relpath(os.path.normpath(entry), prefix)
        if rel.startswith("lib") and not rel.startswith("..") and rel.endswith(("site-packages", "dist-packages")):
            return os.path.normpath(entry)
    return pip_dir


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
    data = tomllib.loads((tree / "pyproject.toml").read_text(encoding="utf-8"))
    names = {"pyproject.toml"}
    readme = data.get("project", {}).get("readme")
    if isinstance(readme, str):
        names.add(readme)
    package_dir = data.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    names |= {d.split("/", 1)[0] for d in package_dir.values() if d}
    names |= {n for n in ("LICENSE", "MANIFEST.in", "setup.cfg") if (tree / n).exists()}
    return sorted(names)


def build_wheel(tree: Path, outdir: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".*")
    with tempfile.TemporaryDirectory(prefix="telemetry-build-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in _sources_to_copy(tree):
            src = tree / name
            if src.is_dir():
                shutil.copytree(src, copy / name, ignore=ignore)
            elif src.exists():
                shutil.copy2(src, copy / name)
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
              "--no-index", "--disable-pip-version-check", "--wheel-dir", str(outdir), str(copy)],
             "building the wheel")
    wheels = sorted(outdir.glob("*.whl"))
    if len(wheels) != 1:
        raise PackageError(f"building the wheel left {len(wheels)} wheels in {outdir}")
    return wheels[0]


def _top_level(wheel: Path) -> set[str]:
    """What the wheel puts in site-packages: its packages and its .dist-info folder."""
    with zipfile.ZipFile(wheel) as z:
        names = {n.split("/", 1)[0] for n in z.namelist() if "/" in n}
    return {n for n in names if not n.endswith(".data")}


def install(tree: Path, layout: Layout, destdir: str, python: str, pythondir: str | None = None) -> str:
    """Build, add _prefix.py, pip-install into DESTDIR; returns the package's directory."""
    dirs = site_dirs(python, layout.prefix)
    target_dir = os.path.normpath(pythondir) if pythondir else dirs.search_dir
    with tempfile.TemporaryDirectory(prefix="telemetry-wheel-") as tmp:
        built = build_wheel(tree, Path(tmp) / "built")
        wheel = Path(tmp) / built.name
        add_file(built, wheel, PREFIX_MODULE, prefix_module(layout))
        argv = [sys.executable, "-m", "pip"]
        # A venv's python may be a symlink to the target interpreter; pip must still run
        # as the target, or the scripts' #! lines would name the venv.
        if python != sys.executable:
            argv += ["--python", python]
        argv += ["install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
                 "--disable-pip-version-check", "--root-user-action=ignore",
                 "--no-warn-script-location", "--root", destdir or "/", "--prefix", layout.prefix,
                 str(wheel)]
        _run(argv, "installing the wheel")
        names = _top_level(wheel)
    if target_dir != dirs.pip_dir:
        _move(names, under(destdir, dirs.pip_dir), under(destdir, target_dir), under(destdir, layout.prefix))
    return os.path.join(target_dir, "telemetry")


def _move(names: set[str], src: str, dst: str, stop: str) -> None:
    os.makedirs(dst, mode=0o755, exist_ok=True)
    # An earlier version's metadata would make the target hold two versions.
    for info in (n for n in names if n.endswith(".dist-info")):
        dist = info.split("-", 1)[0]
        for stale in Path(dst).glob(f"{dist}-*.dist-info"):
            if stale.name != info:
                shutil.rmtree(stale)
    for name in sorted(names):
        old, new = os.path.join(src, name), os.path.join(dst, name)
        if not os.path.lexists(old):
            continue
        if os.path.isdir(new) and not os.path.islink(new):
            shutil.rmtree(new)
        elif os.path.lexists(new):
            os.unlink(new)
        shutil.move(old, new)
    # Remove the folders pip created and left empty, up to the prefix.
    d = src
    while d.startswith(stop + os.sep) and os.path.isdir(d) and not os.listdir(d):
        os.rmdir(d)
        d = os.path.dirname(d)
