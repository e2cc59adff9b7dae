"""Adding a file to a built wheel, with its RECORD line, so pip installs and lists it.

Used for `telemetry/_prefix.py`: the install-time directories belong in the installed
package only, never in the source tree an editable install runs from.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from .layout import Layout

PREFIX_MODULE = "telemetry/_prefix.py"


def record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def prefix_module(layout: Layout) -> bytes:
    return (
        '"""Install-time directories, written by `make install`; read by telemetry.paths."""\n\n'
        f"PREFIX = {layout.prefix!r}\n"
        f"SYSCONFDIR = {layout.sysconfdir!r}\n"
        f"LOCALSTATEDIR = {layout.localstatedir!r}\n"
        f"RUNDIR = {layout.rundir!r}\n"
    ).encode()


def add_file(src: Path, dst: Path, arcname: str, data: bytes) -> None:
    """Copy wheel `src` to `dst` with `arcname` set to `data` (added or replaced)."""
    with zipfile.ZipFile(src) as zin:
        records = [n for n in zin.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
        if len(records) != 1:
            raise ValueError(f"{src} is not a wheel: it has no single .dist-info/RECORD")
        record_name = records[0]
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
