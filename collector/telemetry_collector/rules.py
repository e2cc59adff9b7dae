"""The ingestion rules (collector-contract.md §4) as one pure function, `validate`.

The checks run in the reference backend's order and answer with its messages, so a client
written against that backend reads the same 400s here.  What differs, on purpose (the
contract's §11):

- Numbers are ASCII digits (``[0-9]+``), never ``str.isdigit`` (which takes ``²``) nor
  ``int()`` (which takes ``+7``, `` 7``, ``1_000``, ``-1``); their ranges are checked, so
  nothing that passes can fail later in the database or in rendering.
- The record format version is compared as a number: ``04`` is version 4, with every
  version-4 check, never a way around them.
- Payload-Format-Version and System-Name are required from version 1, as the reference
  does in practice, but missing ones get a 400 naming them instead of a parse error or 500.
- Current ``uname -m`` values (ppc64le, s390x, riscv64, loongarch64) are valid architectures.
- Fields the reference never bounds get the bound of their neighbours (Classification,
  Kernel-Version and System-Name under 250 characters, Build under 200); a NUL in any value
  or in the payload is a 400 (PostgreSQL text cannot hold one); a creation time after the
  year 9999 is invalid.  Values an original client can produce (empty Machine-Id, empty
  classification parts) stay valid.
- Extensions: a repeated header and a malformed JSON body are 400s; the record id header
  telempostd sends must look like one.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from telemetry import headers as H
from telemetry.errors import TelemetryError

from .model import NOT_APPLICABLE, NewRecord


class Rule(enum.Enum):
    """Every reason a POST can be refused; the value names its counter."""

    TID = "tid"
    MALFORMED = "malformed"
    RECORD_FORMAT_VERSION = "record_format_version"
    PRESENCE = "presence"
    SEVERITY = "severity"
    CLASSIFICATION = "classification"
    MACHINE_ID = "machine_id"
    TIMESTAMP = "timestamp"
    ARCH = "arch"
    HOST_TYPE = "host_type"
    KERNEL_VERSION = "kernel_version"
    BOARD_NAME = "board_name"
    CPU_MODEL = "cpu_model"
    BIOS_VERSION = "bios_version"
    EVENT_ID = "event_id"
    SYSTEM_NAME = "system_name"
    BUILD = "build"
    PAYLOAD_FORMAT_VERSION = "payload_format_version"
    RECORD_ID = "record_id"
    PAYLOAD = "payload"
    TOO_LARGE = "too_large"
    MEDIA_TYPE = "media_type"


class Rejected(TelemetryError):
    """A POST the collector refuses; `message` is the JSON error body's text."""

    def __init__(self, rule: Rule, message: str, status: int = 400):
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Submission:
    """One POST as read from the wire, before any rule: values by the record's field names.

    `fields` holds only what was sent.  `defect` is a problem the reader found in the
    request's shape; it is reported after the TID check, as every other problem is.
    """

    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    payload: str = ""
    tid: str | None = None
    external: str | None = None
    record_id: str | None = None
    defect: Rejected | None = None


ARCHITECTURES = frozenset(
    # The reference backend's list ...
    ("armv7l", "armv6l", "aarch64", "amd64", "sparc64", "ppc64", "i686", "i386", "x86_64", "ppc")
    # ... and what current kernels report (contract §11.8).
    + ("ppc64le", "s390x", "riscv64", "loongarch64")
)
SEVERITY_RANGE = range(1, 5)
RECORD_FORMAT_VERSIONS = range(1, 5)
PAYLOAD_FORMAT_VERSION_LIMIT = 2147483647  # the reference's PostgreSQL integer bound, exclusive
MACHINE_ID_MAX = 32
HOST_TYPE_LIMIT = 250  # exclusive, as the reference
TEXT_LIMIT = 250  # exclusive; our bound for Classification, Kernel-Version, System-Name
PRINTABLE_LIMIT = 200  # exclusive; Board-Name, Cpu-Model, Bios-Version, Build
TIMESTAMP_MAX = 253402300799  # 9999-12-31 23:59:59 UTC
EVENT_ID_LEN = 32
CLEAR_LINUX = "clear-linux-os"
_DIGITS = re.compile(r"[0-9]+")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_CLEAR_BUILD = re.compile(r"[0-9]+")
_BUILD = re.compile(r"[-_a-zA-Z0-9.]+")
RECORD_ID_PATTERN = re.compile(r"[0-9A-Za-z_.-]{1,64}")
# Python's string.printable: ASCII letters, digits, punctuation, space and \t\n\r\x0b\x0c.
_PRINTABLE = re.compile(f"[{re.escape(string.printable)}]*")
_NUMBER_DIGITS_MAX = 18  # beyond this a value is out of every range we accept

TID_NAME = "X-Telemetry-Tid"
# Rule 3's order; None stands for the TID, which step 1 has already required.
_PRESENCE: tuple[tuple[str, str | None], ...] = (
    ("Arch", H.ARCH),
    ("Build", H.BUILD),
    ("Creation-Timestamp", H.CREATION_TIMESTAMP),
    ("Classification", H.CLASSIFICATION),
    ("Host-Type", H.HOST_TYPE),
    ("Kernel-Version", H.KERNEL_VERSION),
    ("Machine-Id", H.MACHINE_ID),
    ("Severity", H.SEVERITY),
    ("Record-Format-Version", H.RECORD_FORMAT_VERSION),
    ("Payload-Format-Version", H.PAYLOAD_FORMAT_VERSION),
    ("System-Name", H.SYSTEM_NAME),
    (TID_NAME, None),
    ("Board-Name", H.BOARD_NAME),
    ("Bios-Version", H.BIOS_VERSION),
    ("Cpu-Model", H.CPU_MODEL),
    ("Event-Id", H.EVENT_ID),
)
_REQUIRED_COUNT = {1: 12, 2: 12, 3: 15, 4: 16}


def required_headers(version: int) -> tuple[str, ...]:
    """The header names a record of `version` must carry, in rule 3's order."""
    return tuple(name for name, _ in _PRESENCE[: _REQUIRED_COUNT[version]])


def parse_number(value: str | None) -> int | None:
    """ASCII digits only; None for anything else or for more digits than any range allows."""
    if value is None or len(value) > _NUMBER_DIGITS_MAX or not _DIGITS.fullmatch(value):
        return None
    return int(value)


def printable(value: str) -> bool:
    """Under PRINTABLE_LIMIT characters, all in Python's string.printable (the reference's test)."""
    return len(value) < PRINTABLE_LIMIT and _PRINTABLE.fullmatch(value) is not None


def _kernel_version_ok(value: str) -> bool:
    parts = value.split(".", 2)
    return (
        len(value) < TEXT_LIMIT
        and len(parts) == 3
        and all(_DIGITS.fullmatch(p) for p in parts[:2])
    )


def unquote(value: str) -> str:
    """Without ``"`` and ``'``, as the reference reads System-Name and Build."""
    return value.replace('"', "").replace("'", "")


def _require(ok: bool, rule: Rule, message: str) -> None:
    if not ok:
        raise Rejected(rule, message)


def validate(sub: Submission, tids: Collection[str], now: int) -> NewRecord:
    """The record to store, or `Rejected` naming the first rule `sub` breaks.

    `now` (unix seconds) becomes the reception time.
    """
    _require(sub.tid is not None and sub.tid in tids, Rule.TID, "Telemetry ID mismatch")
    if sub.defect is not None:
        raise sub.defect
    f = sub.fields
    for name, value in f.items():
        if "\0" in value:
            raise Rejected(Rule.MALFORMED, f"{H.HTTP_HEADERS[name]} contains a NUL character")

    version = parse_number(f.get(H.RECORD_FORMAT_VERSION))
    _require(version in RECORD_FORMAT_VERSIONS, Rule.RECORD_FORMAT_VERSION, "Record-Format-Version is invalid")
    assert version is not None
    for name, key in _PRESENCE[: _REQUIRED_COUNT[version]]:
        if key is not None and key not in f:
            raise Rejected(Rule.PRESENCE, f"Record-Format-Version headers are invalid, {name} missing")

    severity = parse_number(f[H.SEVERITY])
    _require(severity in SEVERITY_RANGE, Rule.SEVERITY, "severity value is out of range")
    classification = f[H.CLASSIFICATION]
    _require(
        len(classification.split("/")) == 3 and len(classification) < TEXT_LIMIT,
        Rule.CLASSIFICATION,
        "Classification value is invalid",
    )
    machine_id = f[H.MACHINE_ID]
    _require(len(machine_id) <= MACHINE_ID_MAX, Rule.MACHINE_ID, "Machine id value is invalid")
    ts_capture = parse_number(f[H.CREATION_TIMESTAMP])
    _require(ts_capture is not None and ts_capture <= TIMESTAMP_MAX, Rule.TIMESTAMP, "timestamp is invalid")
    assert ts_capture is not None and severity is not None
    arch = f[H.ARCH]
    _require(arch in ARCHITECTURES, Rule.ARCH, "architecture is invalid")
    host_type = f[H.HOST_TYPE]
    _require(len(host_type) < HOST_TYPE_LIMIT, Rule.HOST_TYPE, "host type is invalid")
    kernel_version = f[H.KERNEL_VERSION]
    _require(_kernel_version_ok(kernel_version), Rule.KERNEL_VERSION, "kernel version is invalid")

    board_name = cpu_model = bios_version = event_id = NOT_APPLICABLE
    if version >= 3:
        board_name, cpu_model, bios_version = f[H.BOARD_NAME], f[H.CPU_MODEL], f[H.BIOS_VERSION]
        _require(printable(board_name), Rule.BOARD_NAME, "board name is invalid")
        _require(printable(cpu_model), Rule.CPU_MODEL, "cpu model is invalid")
        _require(printable(bios_version), Rule.BIOS_VERSION, "BIOS version is invalid")
    if version >= 4:
        event_id = f[H.EVENT_ID]
        _require(_HEX32.fullmatch(event_id) is not None, Rule.EVENT_ID, "Event id is invalid")

    system_name = unquote(f[H.SYSTEM_NAME])
    _require(len(system_name) < TEXT_LIMIT, Rule.SYSTEM_NAME, "system name is invalid")
    build = unquote(f[H.BUILD])
    if system_name == CLEAR_LINUX:
        _require(
            _CLEAR_BUILD.fullmatch(build) is not None,
            Rule.BUILD,
            "Clear Linux OS build version has invalid characters",
        )
    else:
        _require(_BUILD.fullmatch(build) is not None, Rule.BUILD, "Build version has invalid characters")
    _require(len(build) < PRINTABLE_LIMIT, Rule.BUILD, "Build version is too long")

    raw_pfv = f[H.PAYLOAD_FORMAT_VERSION]
    pfv = parse_number(raw_pfv)
    if pfv is None and not _DIGITS.fullmatch(raw_pfv):
        raise Rejected(
            Rule.PAYLOAD_FORMAT_VERSION,
            f"Error parsing payload_format_version, invalid literal for int() with base 10: {raw_pfv!r}",
        )
    _require(
        pfv is not None and pfv < PAYLOAD_FORMAT_VERSION_LIMIT,
        Rule.PAYLOAD_FORMAT_VERSION,
        "Payload format version outside of range supported",
    )
    assert pfv is not None

    if sub.record_id is not None:
        _require(
            RECORD_ID_PATTERN.fullmatch(sub.record_id) is not None,
            Rule.RECORD_ID,
            f"{H.RECORD_ID_HEADER} is invalid",
        )
    _require("\0" not in sub.payload, Rule.PAYLOAD, "payload contains a NUL byte")

    return NewRecord(
        record_format_version=version,
        severity=severity,
        classification=classification,
        machine_id=machine_id,
        ts_capture=ts_capture,
        arch=arch,
        host_type=host_type,
        build=build,
        kernel_version=kernel_version,
        payload_format_version=pfv,
        system_name=system_name,
        board_name=board_name,
        cpu_model=cpu_model,
        bios_version=bios_version,
        event_id=event_id,
        external=sub.external == "true",
        payload=sub.payload,
        ts_reception=now,
        record_id=sub.record_id,
    )
