"""The collector contract: what a collector accepts, as one table both sides read.

collector-contract.md §4 lists the reference backend's checks, in order, each with the
message of its 400.  `FIELD_RULES` is that list: the telemetry-collector runs it to
decide (`telemetry_collector.rules.validate`), and telempostd runs it before a POST
(`check_record`), so a record that would be refused for a known reason is rejected
locally, once, with the collector's own words in the journal, instead of costing a POST
and a 400.

Limits are written one way, as the largest accepted length (the reference's "fewer than
250 characters" is `HOST_TYPE_MAX = 249`).  Where our collector deliberately differs from
the reference (contract §11), the table says so: a rule may carry a stricter `sender`
check, which is what the reference backend demands, so that telempostd only sends what
both collectors take.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from telemetry import headers as H
from telemetry.record import Record


class Rule(enum.Enum):
    """Every reason a collector refuses a POST; the value names its counter."""

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


# --- limits (largest accepted values) -------------------------------------------------

RECORD_FORMAT_VERSIONS = range(1, 5)
SEVERITY_RANGE = range(1, 5)
MACHINE_ID_MAX = 32
HOST_TYPE_MAX = 249
# Ours (§11.9): the reference bounds neither, we give them Host-Type's bound.
TEXT_MAX = 249  # Classification, Kernel-Version, System-Name
PRINTABLE_MAX = 199  # Board-Name, Cpu-Model, Bios-Version; ours: Build too
BUILD_MAX = PRINTABLE_MAX
PAYLOAD_FORMAT_VERSION_MAX = 2147483646  # the reference's PostgreSQL integer, less one
TIMESTAMP_MAX = 253402300799  # ours: 9999-12-31 23:59:59 UTC, so every stored time renders
EVENT_ID_LEN = 32
RECORD_ID_MAX = 64
CLEAR_LINUX = "clear-linux-os"
# The reference deployment reads the request head into a 4 KiB buffer (uWSGI
# buffer-size); the request line, Host, Content-Length and the like need the rest.
HEADER_BLOCK_MAX = 3584
NUMBER_DIGITS_MAX = 18  # beyond this a number is out of every range above

REFERENCE_ARCHITECTURES = frozenset(
    ("armv7l", "armv6l", "aarch64", "amd64", "sparc64", "ppc64", "i686", "i386", "x86_64", "ppc")
)
# Ours (§11.8): what current kernels report is valid too.
ARCHITECTURES = REFERENCE_ARCHITECTURES | frozenset(("ppc64le", "s390x", "riscv64", "loongarch64"))

# The collector's rule for X-Telemetry-Record-Id; telemprobd writes 32 hex digits.
RECORD_ID = re.compile(f"[0-9A-Za-z_.-]{{1,{RECORD_ID_MAX}}}")

_DIGITS = re.compile(r"[0-9]+")
_HEX32 = re.compile(f"[0-9a-f]{{{EVENT_ID_LEN}}}")
_CLEAR_BUILD = re.compile(r"[0-9]+")
_BUILD = re.compile(r"[-_a-zA-Z0-9.]+")
# Python's string.printable: ASCII letters, digits, punctuation, space and \t\n\r\x0b\x0c.
_PRINTABLE = re.compile(f"[{re.escape(string.printable)}]*")

TID_NAME = "X-Telemetry-Tid"  # as rule 3's message spells it
# Rule 3: the headers a version requires, in the order the first missing one is named;
# None stands for the TID, which rule 1 has already required.
PRESENCE: tuple[tuple[str, str | None], ...] = (
    *((H.HTTP_HEADERS[f], f) for f in (
        H.ARCH, H.BUILD, H.CREATION_TIMESTAMP, H.CLASSIFICATION, H.HOST_TYPE, H.KERNEL_VERSION,
        H.MACHINE_ID, H.SEVERITY, H.RECORD_FORMAT_VERSION, H.PAYLOAD_FORMAT_VERSION, H.SYSTEM_NAME)),
    (TID_NAME, None),
    *((H.HTTP_HEADERS[f], f) for f in (H.BOARD_NAME, H.BIOS_VERSION, H.CPU_MODEL, H.EVENT_ID)),
)
_REQUIRED_COUNT = {1: 12, 2: 12, 3: 15, 4: 16}

TID_MISMATCH = "Telemetry ID mismatch"
RECORD_FORMAT_VERSION_INVALID = "Record-Format-Version is invalid"


def required_headers(version: int) -> tuple[str, ...]:
    """The header names a record of `version` must carry, in rule 3's order."""
    return tuple(name for name, _ in PRESENCE[: _REQUIRED_COUNT[version]])


def missing_header(version: int, present: Mapping[str, str]) -> str | None:
    """Rule 3: the first required header that `present` (values by field name) lacks."""
    for name, key in PRESENCE[: _REQUIRED_COUNT[version]]:
        if key is not None and key not in present:
            return name
    return None


# --- value tests --------------------------------------------------------------------------


def parse_number(value: str | None) -> int | None:
    """ASCII digits only; None for anything else or for more digits than any range allows.

    Not `str.isdigit` (which takes ``²``) nor `int()` (which takes ``+7``, `` 7``,
    ``1_000``): nothing that passes can fail later in a database or in rendering (§11.5).
    """
    if value is None or len(value) > NUMBER_DIGITS_MAX or not _DIGITS.fullmatch(value):
        return None
    return int(value)


def printable(value: str) -> bool:
    """At most PRINTABLE_MAX characters, all in Python's string.printable (the reference's test)."""
    return len(value) <= PRINTABLE_MAX and _PRINTABLE.fullmatch(value) is not None


def unquote(value: str) -> str:
    """Without ``"`` and ``'``, as the reference reads System-Name and Build."""
    return value.replace('"', "").replace("'", "")


def kernel_version_ok(value: str) -> bool:
    parts = value.split(".", 2)
    return len(value) <= TEXT_MAX and len(parts) == 3 and all(_DIGITS.fullmatch(p) for p in parts[:2])


# --- the table ----------------------------------------------------------------------------

Fields = Mapping[str, str]  # a record's values by field name, as the collector reads them
Check = Callable[[Fields], str | None]  # None, or the collector's message


@dataclass(frozen=True)
class FieldRule:
    """One of rules 4-15: `check` is the collector's; `sender` what a client must also keep
    so that the reference backend accepts the record too (None: the same)."""

    rule: Rule
    field: str
    since: int  # the record format version from which the rule applies
    hint: str  # what a sender is told, beside the collector's message
    check: Check
    sender: Check | None = None


def _when(ok: Callable[[str], bool], field: str, message: str) -> Check:
    return lambda f: None if ok(f[field]) else message


def _build(f: Fields) -> str | None:
    build = unquote(f[H.BUILD])
    if unquote(f[H.SYSTEM_NAME]) == CLEAR_LINUX:
        if not _CLEAR_BUILD.fullmatch(build):
            return "Clear Linux OS build version has invalid characters"
    elif not _BUILD.fullmatch(build):
        return "Build version has invalid characters"
    return None if len(build) <= BUILD_MAX else "Build version is too long"


def _payload_format_version(f: Fields) -> str | None:
    raw = f[H.PAYLOAD_FORMAT_VERSION]
    number = parse_number(raw)
    if number is None and not _DIGITS.fullmatch(raw):
        return f"Error parsing payload_format_version, invalid literal for int() with base 10: {raw!r}"
    if number is None or number > PAYLOAD_FORMAT_VERSION_MAX:
        return "Payload format version outside of range supported"
    return None


def _timestamp_ok(value: str) -> bool:
    ts = parse_number(value)
    return ts is not None and ts <= TIMESTAMP_MAX


_PRINTABLE_HINT = f"must be printable ASCII, at most {PRINTABLE_MAX} characters"

FIELD_RULES: tuple[FieldRule, ...] = (
    FieldRule(Rule.SEVERITY, H.SEVERITY, 1, "must be 1, 2, 3 or 4",
              _when(lambda v: parse_number(v) in SEVERITY_RANGE, H.SEVERITY, "severity value is out of range")),
    FieldRule(Rule.CLASSIFICATION, H.CLASSIFICATION, 1,
              f"must have three '/'-separated parts, at most {TEXT_MAX} characters",
              _when(lambda v: v.count("/") == 2 and len(v) <= TEXT_MAX, H.CLASSIFICATION,
                    "Classification value is invalid")),
    FieldRule(Rule.MACHINE_ID, H.MACHINE_ID, 1, f"may have at most {MACHINE_ID_MAX} characters",
              _when(lambda v: len(v) <= MACHINE_ID_MAX, H.MACHINE_ID, "Machine id value is invalid")),
    FieldRule(Rule.TIMESTAMP, H.CREATION_TIMESTAMP, 1, "must be digits, no later than the year 9999",
              _when(_timestamp_ok, H.CREATION_TIMESTAMP, "timestamp is invalid")),
    FieldRule(Rule.ARCH, H.ARCH, 1, "is not an architecture the reference collector knows",
              _when(ARCHITECTURES.__contains__, H.ARCH, "architecture is invalid"),
              sender=_when(REFERENCE_ARCHITECTURES.__contains__, H.ARCH, "architecture is invalid")),
    FieldRule(Rule.HOST_TYPE, H.HOST_TYPE, 1, f"may have at most {HOST_TYPE_MAX} characters",
              _when(lambda v: len(v) <= HOST_TYPE_MAX, H.HOST_TYPE, "host type is invalid")),
    FieldRule(Rule.KERNEL_VERSION, H.KERNEL_VERSION, 1,
              f"needs at least two dots and digits in its first two fields, at most {TEXT_MAX} characters",
              _when(kernel_version_ok, H.KERNEL_VERSION, "kernel version is invalid")),
    FieldRule(Rule.BOARD_NAME, H.BOARD_NAME, 3, _PRINTABLE_HINT,
              _when(printable, H.BOARD_NAME, "board name is invalid")),
    FieldRule(Rule.CPU_MODEL, H.CPU_MODEL, 3, _PRINTABLE_HINT,
              _when(printable, H.CPU_MODEL, "cpu model is invalid")),
    FieldRule(Rule.BIOS_VERSION, H.BIOS_VERSION, 3, _PRINTABLE_HINT,
              _when(printable, H.BIOS_VERSION, "BIOS version is invalid")),
    FieldRule(Rule.EVENT_ID, H.EVENT_ID, 4, f"must be {EVENT_ID_LEN} characters from 0-9a-f",
              _when(lambda v: _HEX32.fullmatch(v) is not None, H.EVENT_ID, "Event id is invalid")),
    FieldRule(Rule.SYSTEM_NAME, H.SYSTEM_NAME, 1, f"may have at most {TEXT_MAX} characters",
              _when(lambda v: len(unquote(v)) <= TEXT_MAX, H.SYSTEM_NAME, "system name is invalid")),
    FieldRule(Rule.BUILD, H.BUILD, 1,
              f"may hold only letters, digits and '-_.' (digits only for {CLEAR_LINUX}), "
              f"at most {BUILD_MAX} characters", _build),
    FieldRule(Rule.PAYLOAD_FORMAT_VERSION, H.PAYLOAD_FORMAT_VERSION, 1,
              f"must be a number up to {PAYLOAD_FORMAT_VERSION_MAX}", _payload_format_version),
)


def first_refusal(fields: Fields, version: int, *, sender: bool = False) -> tuple[FieldRule, str] | None:
    """The first of rules 4-15 that `fields` break, with the collector's message.

    `fields` must hold every field `version` requires (rule 3).  `sender`: also apply
    the reference backend's stricter checks.
    """
    for rule in FIELD_RULES:
        if rule.since > version:
            continue
        message = ((sender and rule.sender) or rule.check)(fields)
        if message is not None:
            return rule, message
    return None


# --- the sending side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    field: str
    message: str

    def __str__(self) -> str:
        return self.message


def _ows(value: str) -> str:
    """The collector's HTTP layer strips surrounding spaces and tabs before it checks."""
    return value.strip(" \t")


def _shown(value: str) -> str:
    if len(value) > 40:
        return f"({len(value)} characters)"
    return repr(value)


def check_record(record: Record) -> Violation | None:
    """The first rule any collector would refuse the record for, in the collector's order."""
    fields = {name: _ows(value) for name, value in record.headers()}
    found = first_refusal(fields, record.record_format_version, sender=True)
    if found is None:
        return None
    rule, message = found
    return Violation(rule.field, f"{rule.field} {_shown(fields[rule.field])} {rule.hint} ({message})")


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
