"""Machine metadata for the record headers, read exactly as libtelemetry reads it.

Every reader takes a root directory so tests run against a fake /sys, /proc and /etc
tree.  The quirks (a DMI value always loses its last byte, cpu_model is cut by a 79-byte
read, os-release quotes are kept) are the original's: collectors and dashboards have
seen these values for years, so the same machine must produce the same headers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import TelemetryError
from .limits import CHUNK_READ, DMI_READ_MAX, SYSTEM_NAME_MAX


def _say(level: str, message: str) -> None:
    """What the original logs about a missing source; logging is imported only then (the
    library's send path and the probes' need it for nothing else)."""
    from .log import logger

    getattr(logger(__name__), level)(message)


DMI_DIR = "sys/class/dmi/id"
CPUINFO = "proc/cpuinfo"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
BLANK = "blank"


class MetadataError(TelemetryError):
    """A source every record needs (/proc/cpuinfo) cannot be read."""


@dataclass(frozen=True)
class Metadata:
    """The machine's description every record carries in its headers."""
    arch: str
    host_type: str
    build: str
    kernel_version: str
    system_name: str
    board_name: str
    cpu_model: str
    bios_version: str


def _path(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def printable_text(raw: bytes) -> str:
    """Untrusted bytes as text fit for a header value or a payload line: invalid UTF-8
    replaced, every control character but tab (line breaks, NULs) shown as '?'."""
    text = raw.decode("utf-8", errors="replace")
    if text.isprintable():  # the usual case, checked in one C call
        return text
    return "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in text)


def read_dmi(root: str, name: str, key: str) -> str:
    """First line, at most 78 bytes, minus its last byte; 'no_<key>_file' or 'blank'."""
    try:
        fd = os.open(_path(root, os.path.join(DMI_DIR, name)), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return f"no_{key}_file"
    try:
        with os.fdopen(fd, "rb") as f:
            line = f.readline(DMI_READ_MAX)
    except OSError:
        return f"no_{key}_file"
    value = line[:-1]
    if value.strip(b" ") == b"":
        return BLANK
    return printable_text(value)


def _chunks(f, size: int = CHUNK_READ) -> Iterator[bytes]:
    """Lines as fgets(buf, size + 1) yields them: a long line arrives in pieces."""
    while True:
        chunk = f.readline(size)
        if not chunk:
            return
        yield chunk


def read_cpu_model(root: str) -> str:
    try:
        f = open(_path(root, CPUINFO), "rb")
    except OSError as e:
        raise MetadataError(f"cannot read {_path(root, CPUINFO)}: {e.strerror}") from e
    with f:
        for chunk in _chunks(f):
            if not chunk.startswith(b"model name"):
                continue
            colon = chunk.find(b":")
            rest = chunk[colon + 1 :] if colon >= 0 else b""
            if len(rest) <= 1:
                return BLANK
            value = rest[1:-1]
            return printable_text(value) if value.strip(b" ") else BLANK
    _say("info", "Unable to find attribute:model name")
    return BLANK


def _open_os_release(root: str):
    for rel in OS_RELEASE:
        try:
            fd = os.open(_path(root, rel), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # a symlinked /etc/os-release (ELOOP) falls back, as the original
        return os.fdopen(fd, "rb")
    return None


def read_os_release(root: str) -> dict[str, str] | None:
    """The first non-empty ID, VARIANT_ID and VERSION_ID words; None without a file."""
    f = _open_os_release(root)
    if f is None:
        return None
    wanted = {b"ID=": "ID", b"VARIANT_ID=": "VARIANT_ID", b"VERSION_ID=": "VERSION_ID"}
    found: dict[str, str] = {}
    with f:
        for chunk in _chunks(f):
            for prefix, key in wanted.items():
                if key in found or not chunk.startswith(prefix):
                    continue
                words = chunk[len(prefix) :].split()
                if words:
                    found[key] = printable_text(words[0])
    return found


def read_metadata(root: str = "/", uname: os.uname_result | None = None) -> Metadata:
    u = uname or os.uname()
    osr = read_os_release(root)
    if osr is None:
        _say("warning", "Cannot find os-release file")
        _say("warning", "Cannot find build version file")
        build, system_name = "0", ""
    else:
        build = osr.get("VERSION_ID", "0")
        if "VERSION_ID" not in osr:
            _say("warning", "Cannot find build version number")
        system_name = osr.get("ID", "unknown")
        if osr.get("VARIANT_ID"):
            system_name = f"{system_name}_{osr['VARIANT_ID']}"[:SYSTEM_NAME_MAX]
    host_type = "|".join(
        (
            read_dmi(root, "sys_vendor", "sv"),
            read_dmi(root, "product_name", "pn"),
            read_dmi(root, "product_version", "pvr"),
        )
    )
    board_name = "|".join((read_dmi(root, "board_name", "bn"), read_dmi(root, "board_vendor", "bv")))
    return Metadata(
        arch=u.machine or "unknown",
        host_type=host_type,
        build=build,
        kernel_version=u.release or "unknown",
        system_name=system_name,
        board_name=board_name,
        cpu_model=read_cpu_model(root),
        bios_version=read_dmi(root, "bios_version", "bv"),
    )
