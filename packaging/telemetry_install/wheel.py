"""Wheels: building one with setuptools' own backend, adding a file to it, and installing it.

Installing is what pip would do for a pure-Python wheel, done here so that `make install`
needs neither pip nor the network: the files go to the site directory, the console
scripts are written with the target interpreter's #! line, and the .dist-info gets
INSTALLER and a RECORD of what was written.  `telemetry/_prefix.py` (the install-time
directories) is added to the wheel first: it belongs in the installed package only,
never in the source tree an editable install runs from.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import io
import os
import posixpath
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from telemetry.errors import TelemetryError
from telemetry.fsutil import atomic_write

from .layout import Layout

PREFIX_MODULE = "telemetry/_prefix.py"
INSTALLER = "telemetry_install"
_ENTRY_POINT = re.compile(r"^(?P<module>[\w.]+)\s*:\s*(?P<attr>[\w.]+)$")


class WheelError(TelemetryError):
    pass


def record_line(arcname: str, data: bytes) -> str:
    return ",".join((arcname, *_hash(data)))


def prefix_module(layout: Layout) -> bytes:
    return (
        '"""Install-time directories, written by `make install`; read by telemetry.paths."""\n\n'
        f"PREFIX = {layout.prefix!r}\n"
        f"SYSCONFDIR = {layout.sysconfdir!r}\n"
        f"LOCALSTATEDIR = {layout.localstatedir!r}\n"
        f"RUNDIR = {layout.rundir!r}\n"
    ).encode()


def _dist_info(names: list[str], wheel: Path) -> str:
    found = {n.split("/", 1)[0] for n in names if n.count("/") == 1 and n.split("/", 1)[0].endswith(".dist-info")}
    if len(found) != 1:
        raise WheelError(f"{wheel} is not a wheel: it has {len(found)} .dist-info folders")
    return found.pop()


def add_file(src: Path, dst: Path, arcname: str, data: bytes) -> None:
    """Copy wheel `src` to `dst` with `arcname` set to `data` (added or replaced)."""
    with zipfile.ZipFile(src) as zin:
        record_name = f"{_dist_info(zin.namelist(), src)}/RECORD"
        record = zin.read(record_name).decode("utf-8")
        lines = [line for line in record.splitlines()
                 if line and not line.startswith((f"{arcname},", f"{record_name},"))]
        lines += [record_line(arcname, data), f"{record_name},,"]
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                if info.filename not in (arcname, record_name):
                    zout.writestr(info, zin.read(info))
            zout.writestr(arcname, data)
            zout.writestr(record_name, "\n".join(lines) + "\n")


@dataclass(frozen=True)
class Installed:
    """What installing a wheel wrote: every file (absolute, below DESTDIR's view of the
    system) and the top-level names in the site directory (packages, .dist-info)."""

    files: tuple[str, ...]
    top_level: tuple[str, ...]


def console_scripts(entry_points: str) -> dict[str, tuple[str, str]]:
    """[console_scripts] of an entry_points.txt: name → (module, attribute)."""
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(entry_points)
    if not parser.has_section("console_scripts"):
        return {}
    scripts = {}
    for name, target in parser.items("console_scripts"):
        m = _ENTRY_POINT.match(target.strip())
        if m is None or "/" in name:
            raise WheelError(f"console script {name!r} = {target!r} is not 'module:function'")
        scripts[name] = (m.group("module"), m.group("attr"))
    return scripts


def script_text(python: str, module: str, attr: str) -> str:
    head = attr.split(".", 1)[0]
    return (f"#!{python}\n"
            "import sys\n"
            f"from {module} import {head}\n"
            "if __name__ == '__main__':\n"
            f"    sys.exit({attr}())\n")


def _safe(arcname: str) -> str:
    normal = posixpath.normpath(arcname)
    if normal.startswith(("/", "../")) or normal == ".." or "\\" in arcname:
        raise WheelError(f"the wheel holds a file outside its tree: {arcname!r}")
    return normal


def install_wheel(wheel: Path, *, destdir: str, site_dir: str, bindir: str, python: str) -> Installed:
    """Install a pure-Python wheel: files to `site_dir`, scripts to `bindir` (both as the
    installed system sees them, written below `destdir`)."""
    def real(path: str) -> str:
        return os.path.join(destdir, path.lstrip("/")) if destdir else path

    written: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        dist_info = _dist_info(names, wheel)
        wheel_meta = z.read(f"{dist_info}/WHEEL").decode("utf-8")
        if "Root-Is-Purelib: true" not in wheel_meta:
            raise WheelError(f"{wheel.name} is not a pure-Python wheel")
        for name in names:
            arcname = _safe(name)
            if arcname.split("/", 1)[0].endswith(".data"):
                raise WheelError(f"{wheel.name} has a .data folder ({arcname}), which is not supported")
            if arcname in (f"{dist_info}/RECORD", f"{dist_info}/INSTALLER"):
                continue
            written.append((posixpath.join(site_dir, arcname), z.read(name)))
        entry_points = (z.read(f"{dist_info}/entry_points.txt").decode("utf-8")
                        if f"{dist_info}/entry_points.txt" in names else "")
    scripts = [(posixpath.join(bindir, name), script_text(python, module, attr).encode())
               for name, (module, attr) in console_scripts(entry_points).items()]
    for path, data in written:
        _write(real(path), data, 0o644)
    for path, data in scripts:
        _write(real(path), data, 0o755)
    installer = posixpath.join(site_dir, dist_info, "INSTALLER")
    installer_data = f"{INSTALLER}\n".encode()
    _write(real(installer), installer_data, 0o644)
    record_path = posixpath.join(site_dir, dist_info, "RECORD")
    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    for path, data in [*written, *scripts, (installer, installer_data)]:
        rows.writerow([posixpath.relpath(path, site_dir), *_hash(data)])
    rows.writerow([posixpath.relpath(record_path, site_dir), "", ""])
    _write(real(record_path), out.getvalue().encode(), 0o644)
    files = tuple(p for p, _ in [*written, *scripts]) + (installer, record_path)
    top = tuple(sorted({posixpath.relpath(p, site_dir).split("/", 1)[0] for p, _ in written}))
    return Installed(files, top)


def _hash(data: bytes) -> tuple[str, str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}", str(len(data))


def _write(path: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    atomic_write(path, data, mode)
