"""What the collector can never accept, checked before a record is sent.

A record that fails here would fail at the collector every time (collector-contract.md
§4 and §10), so it is rejected locally, once, with the collector's own words in the
journal, instead of costing a POST and a 400. The record model already guarantees the
rest of §4 (severity 1..4, two '/' in the classification, a 32-hex event id, digits in
the numeric fields, no NUL and valid UTF-8 in the payload).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from telemetry import headers as H
from telemetry.record import Record

ARCHES = frozenset({"armv7l", "armv6l", "aarch64", "amd64", "sparc64", "ppc64", "i686", "i386", "x86_64", "ppc"})
MACHINE_ID_MAX = 32
HOST_TYPE_MAX = 249
PRINTABLE_FIELD_MAX = 199
PAYLOAD_FORMAT_VERSION_MAX = 2147483646
CLEAR_LINUX = "clear-linux-os"
# The reference deployment reads the request head into a 4 KiB buffer (uWSGI
# buffer-size); the request line, Host, Content-Length and the like need the rest.
HEADER_BLOCK_MAX = 3584

# The collector's rule for X-Telemetry-Record-Id; telemprobd writes 32 hex digits.
RECORD_ID = re.compile(r"[0-9A-Za-z_.-]{1,64}")

_PRINTABLE = frozenset(string.printable)
_CLEAR_BUILD = re.compile(r"[0-9]+")
_BUILD = re.compile(r"[-_a-zA-Z0-9.]+")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Violation:
    field: str
    message: str

    def __str__(self) -> str:
        return self.message


def _ows(value: str) -> str:
    """The collector's HTTP layer strips surrounding spaces and tabs before it checks."""
    return value.strip(" \t")


def _printable_field(record: Record, name: str, what: str) -> Violation | None:
    value = _ows(getattr(record, name))
    if len(value) > PRINTABLE_FIELD_MAX:
        return Violation(name, f"{name} is {len(value)} characters; the collector takes at most "
                         f"{PRINTABLE_FIELD_MAX} ({what} is invalid)")
    if not _PRINTABLE.issuperset(value):
        return Violation(name, f"{name} has characters outside printable ASCII ({what} is invalid)")
    return None


def _kernel_ok(version: str) -> bool:
    parts = version.split(".", 2)
    return len(parts) == 3 and all(_DIGITS.fullmatch(p) for p in parts[:2])


def check_record(record: Record) -> Violation | None:
    """The first rule the collector would refuse the record for, in the collector's order."""
    if len(_ows(record.machine_id)) > MACHINE_ID_MAX:
        return Violation(H.MACHINE_ID, f"machine_id is longer than {MACHINE_ID_MAX} characters "
                         "(Machine id value is invalid)")
    if _ows(record.arch) not in ARCHES:
        return Violation(H.ARCH, f"arch {record.arch[:40]!r} is not one the collector knows "
                         "(architecture is invalid)")
    host_type = _ows(record.host_type)
    if len(host_type) > HOST_TYPE_MAX:
        return Violation(H.HOST_TYPE, f"host_type is {len(host_type)} characters; the collector "
                         f"takes at most {HOST_TYPE_MAX} (host type is invalid)")
    if not _kernel_ok(_ows(record.kernel_version)):
        return Violation(H.KERNEL_VERSION, f"kernel_version {record.kernel_version[:40]!r} needs at least two "
                         "dots and digits in its first two fields (kernel version is invalid)")
    for name, what in ((H.BOARD_NAME, "board name"), (H.CPU_MODEL, "cpu model"), (H.BIOS_VERSION, "BIOS version")):
        problem = _printable_field(record, name, what)
        if problem:
            return problem
    build = _ows(record.build).replace('"', "").replace("'", "")
    if _ows(record.system_name).replace('"', "").replace("'", "") == CLEAR_LINUX:
        if not _CLEAR_BUILD.fullmatch(build):
            return Violation(H.BUILD, f"build {record.build[:40]!r} must be digits for {CLEAR_LINUX} "
                             "(Clear Linux OS build version has invalid characters)")
    elif not _BUILD.fullmatch(build):
        return Violation(H.BUILD, f"build {record.build[:40]!r} may hold only letters, digits and '-_.' "
                         "(Build version has invalid characters)")
    if record.payload_format_version > PAYLOAD_FORMAT_VERSION_MAX:
        return Violation(H.PAYLOAD_FORMAT_VERSION, "payload_format_version is too large "
                         "(Payload format version outside of range supported)")
    return None


def check_header_block(lines: tuple[bytes, ...]) -> Violation | None:
    """Our request headers must leave room in the collector's 4 KiB request-head buffer."""
    size = sum(map(len, lines)) + 2 * len(lines)  # each line ends in CRLF
    if size > HEADER_BLOCK_MAX:
        return Violation("headers", f"request headers take {size} bytes; the collector reads at most "
                         f"about {HEADER_BLOCK_MAX}")
    return None


def check_record_id(record_id: str) -> Violation | None:
    """A queue row's id goes into a header line: it must be one the collector takes."""
    if RECORD_ID.fullmatch(record_id):
        return None
    return Violation("record_id", f"record id {printable_id(record_id)} is not one telemprobd writes")


def printable_id(record_id: str) -> str:
    """A row's id as it can be logged and journaled: escaped when it is not a valid id."""
    if RECORD_ID.fullmatch(record_id):
        return record_id
    return record_id.encode("unicode_escape").decode("ascii")[:200] or "(empty)"
