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
import functools
import itertools
import operator
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from telemetry import headers as H
from telemetry.record import Record, wire_values


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


_printable_field: Callable[[str], object] = re.compile(f"[{re.escape(string.printable)}]{{0,{PRINTABLE_MAX}}}").fullmatch


def printable(value: str) -> bool:
    """At most PRINTABLE_MAX characters, all in Python's string.printable (the reference's test)."""
    return _printable_field(value) is not None


def unquote(value: str) -> str:
    """Without ``"`` and ``'``, as the reference reads System-Name and Build."""
    return value.replace('"', "").replace("'", "")


# --- the table ----------------------------------------------------------------------------

Fields = Mapping[str, str]  # a record's values by field name, as the collector reads them
Accepts = Callable[[str], object]  # true (a match, True) when the value is accepted


@dataclass(frozen=True)
class FieldRule:
    """One of rules 4-15: `accepts` tests the field's value, `message` is the collector's
    400 when it fails.  A rule that reads other fields or has several messages has `judge`
    instead (the message, or None).  `sender_accepts` is what a client must also keep so
    that the reference backend accepts the record too (None: the same test)."""

    rule: Rule
    field: str
    since: int  # the record format version from which the rule applies
    hint: str  # what a sender is told, beside the collector's message
    message: str
    accepts: Accepts | None
    judge: Callable[[Fields], str | None] | None = None
    sender_accepts: Accepts | None = None


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

def _matches(pattern: str) -> Accepts:
    """A whole-value test as one compiled match (no Python frame per check)."""
    return re.compile(pattern, re.DOTALL).fullmatch


def _at_most(n: int) -> Accepts:
    return _matches(f".{{0,{n}}}")


FIELD_RULES: tuple[FieldRule, ...] = (
    FieldRule(Rule.SEVERITY, H.SEVERITY, 1, "must be 1, 2, 3 or 4", "severity value is out of range",
              _matches(f"0{{0,{NUMBER_DIGITS_MAX - 1}}}[{SEVERITY_RANGE.start}-{SEVERITY_RANGE.stop - 1}]")),
    FieldRule(Rule.CLASSIFICATION, H.CLASSIFICATION, 1,
              f"must have three '/'-separated parts, at most {TEXT_MAX} characters",
              "Classification value is invalid", _matches(f"(?=.{{0,{TEXT_MAX}}}\\Z)[^/]*/[^/]*/[^/]*")),
    FieldRule(Rule.MACHINE_ID, H.MACHINE_ID, 1, f"may have at most {MACHINE_ID_MAX} characters",
              "Machine id value is invalid", _at_most(MACHINE_ID_MAX)),
    FieldRule(Rule.TIMESTAMP, H.CREATION_TIMESTAMP, 1, "must be digits, no later than the year 9999",
              "timestamp is invalid", _timestamp_ok),
    FieldRule(Rule.ARCH, H.ARCH, 1, "is not an architecture the reference collector knows",
              "architecture is invalid", ARCHITECTURES.__contains__,
              sender_accepts=REFERENCE_ARCHITECTURES.__contains__),
    FieldRule(Rule.HOST_TYPE, H.HOST_TYPE, 1, f"may have at most {HOST_TYPE_MAX} characters",
              "host type is invalid", _at_most(HOST_TYPE_MAX)),
    FieldRule(Rule.KERNEL_VERSION, H.KERNEL_VERSION, 1,
              f"needs at least two dots and digits in its first two fields, at most {TEXT_MAX} characters",
              "kernel version is invalid", _matches(f"(?=.{{0,{TEXT_MAX}}}\\Z)[0-9]+\\.[0-9]+\\..*")),
    FieldRule(Rule.BOARD_NAME, H.BOARD_NAME, 3, _PRINTABLE_HINT, "board name is invalid", _printable_field),
    FieldRule(Rule.CPU_MODEL, H.CPU_MODEL, 3, _PRINTABLE_HINT, "cpu model is invalid", _printable_field),
    FieldRule(Rule.BIOS_VERSION, H.BIOS_VERSION, 3, _PRINTABLE_HINT, "BIOS version is invalid", _printable_field),
    FieldRule(Rule.EVENT_ID, H.EVENT_ID, 4, f"must be {EVENT_ID_LEN} characters from 0-9a-f",
              "Event id is invalid", _HEX32.fullmatch),
    FieldRule(Rule.SYSTEM_NAME, H.SYSTEM_NAME, 1, f"may have at most {TEXT_MAX} characters",
              "system name is invalid", _matches(f"(?:[\"']*[^\"']){{0,{TEXT_MAX}}}[\"']*")),  # quotes not counted
    FieldRule(Rule.BUILD, H.BUILD, 1,
              f"may hold only letters, digits and '-_.' (digits only for {CLEAR_LINUX}), "
              f"at most {BUILD_MAX} characters", "Build version has invalid characters", None, judge=_build),
    FieldRule(Rule.PAYLOAD_FORMAT_VERSION, H.PAYLOAD_FORMAT_VERSION, 1,
              f"must be a number up to {PAYLOAD_FORMAT_VERSION_MAX}",
              "Payload format version outside of range supported", None, judge=_payload_format_version),
)
# (field, the test, the stricter test for senders, the rule) by record format version
_CHECKS = {
    version: tuple((r.field, r.accepts, r.sender_accepts or r.accepts, r) for r in FIELD_RULES if r.since <= version)
    for version in RECORD_FORMAT_VERSIONS
}


def first_refusal(fields: Fields, version: int, *, sender: bool = False) -> tuple[FieldRule, str] | None:
    """The first of rules 4-15 that `fields` break, with the collector's message.

    `fields` must hold every field `version` requires (rule 3).  `sender`: also apply
    the reference backend's stricter checks.
    """
    for name, accepts, sender_accepts, rule in _CHECKS[version]:
        test = sender_accepts if sender else accepts
        if test is None:
            message = rule.judge(fields)  # type: ignore[misc]
            if message is not None:
                return rule, message
        elif not test(fields[name]):
            return rule, rule.message
    return None


# --- the sending side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """A rule a record breaks, in the collector's words."""
    field: str
    message: str

    def __str__(self) -> str:
        return self.message


_OWS = itertools.repeat(" \t")  # what the collector's HTTP layer strips around a value


def _shown(value: str) -> str:
    if len(value) > 40:
        return f"({len(value)} characters)"
    return repr(value)


# The fields that describe the machine, not the record: every record of a machine has the
# same, so their rules are judged once per set of values (`_machine_refusal`).
_MACHINE_FIELDS = (H.ARCH, H.HOST_TYPE, H.KERNEL_VERSION, H.BOARD_NAME, H.CPU_MODEL, H.BIOS_VERSION,
                   H.SYSTEM_NAME, H.BUILD)
_machine_values = operator.itemgetter(*(H.RECORD_HEADERS.index(f) for f in _MACHINE_FIELDS))
# The other rules, judged for every record: (place in the table, field's position, rule).
_RECORD_RULES = tuple((i, H.RECORD_HEADERS.index(r.field), r) for i, r in enumerate(FIELD_RULES)
                      if r.field not in _MACHINE_FIELDS)


@functools.lru_cache(maxsize=64)
def _machine_refusal(values: tuple[str, ...], version: int) -> tuple[int, FieldRule, str] | None:
    """The first machine rule those values (as the record holds them) break, with its
    place in the table."""
    fields = dict(zip(_MACHINE_FIELDS, map(str.strip, values, _OWS), strict=True))
    for i, rule in enumerate(FIELD_RULES):
        if rule.field not in fields or rule.since > version:
            continue
        if rule.judge is not None:
            message = rule.judge(fields)
            if message is not None:
                return i, rule, message
        elif not (rule.sender_accepts or rule.accepts)(fields[rule.field]):  # type: ignore[misc]
            return i, rule, rule.message
    return None


def check_record(record: Record) -> Violation | None:
    """The first rule any collector would refuse the record for, in the collector's order
    (the table's, with the reference backend's stricter checks)."""
    raw = list(map(str, wire_values(record)))
    # As the collector reads them: its HTTP layer strips surrounding spaces and tabs.
    values = list(map(str.strip, raw, _OWS))
    version = record.record_format_version
    machine = _machine_refusal(_machine_values(raw), version)
    found: tuple[FieldRule, str, str] | None = None
    for i, position, rule in _RECORD_RULES:
        if machine is not None and i > machine[0]:
            break
        if rule.since > version:
            continue
        value = values[position]
        if rule.judge is not None:
            message = rule.judge({rule.field: value})
            if message is not None:
                found = rule, message, value
                break
        elif not (rule.sender_accepts or rule.accepts)(value):  # type: ignore[misc]
            found = rule, rule.message, value
            break
    if found is None and machine is not None:
        rule = machine[1]
        found = rule, machine[2], values[H.RECORD_HEADERS.index(rule.field)]
    if found is None:
        return None
    rule, message, value = found
    return Violation(rule.field, f"{rule.field} {_shown(value)} {rule.hint} ({message})")


_read_machine_values = operator.attrgetter(*_MACHINE_FIELDS)


def check_read_record(record: Record) -> Violation | None:
    """`check_record` for a record `parse_header_block` accepted (the machine id written in
    or not), in a fraction of its time.

    The record grammar already keeps the rules of severity (1..4), classification (two
    '/', at most CLASSIFICATION_MAX <= TEXT_MAX characters) and event_id (32 of 0-9a-f), and
    makes both numbers plain digits: what is left is the machine id's length, the two
    numbers' ranges and the machine's rules (judged once per set of values).  A record
    that breaks one is judged again by `check_record`, which names the first rule it breaks.
    """
    if (record.creation_timestamp <= TIMESTAMP_MAX
            and record.payload_format_version <= PAYLOAD_FORMAT_VERSION_MAX
            and len(record.machine_id.strip(" \t")) <= MACHINE_ID_MAX
            and _machine_refusal(_read_machine_values(record), record.record_format_version) is None):
        return None
    return check_record(record)


def header_line(name: str, value: str) -> bytes:
    """One HTTP header line as pycurl takes it.  curl reads `Name:` followed by nothing but
    blanks as "remove this header"; the collector strips the blanks anyway, so such a
    value goes as an empty one (`Name;`)."""
    if value.strip(" \t") == "":
        return f"{name};".encode()
    return f"{name}: {value}".encode()


_HTTP_NAMES = tuple(H.HTTP_HEADERS[name] for name in H.RECORD_HEADERS)
REQUEST_HEADER_LINES = len(_HTTP_NAMES)
# What a stored block may hold: 15 non-empty lines without control characters but tab (as
# the record grammar allows), so that no line can carry another.
_CONTROL = bytes(range(0x00, 0x09)) + bytes(range(0x0B, 0x20)) + b"\x7f"  # "\n" separates lines


_REQUEST_TEMPLATE = "\n".join(f"{name}: %s" for name in _HTTP_NAMES)
_BLANK_VALUE = re.compile(r": [ \t]*(?:\n|\Z)")


def request_header_block(record: Record) -> bytes:
    """The record's 15 fields as the collector's HTTP header lines, "\n"-joined: made once
    when telemprobd admits the record and stored with it, so that telempostd sends it
    without parsing or building anything per attempt."""
    values = wire_values(record)
    text = _REQUEST_TEMPLATE % values  # one formatting for the usual record
    if _BLANK_VALUE.search(text) is not None:
        text = "\n".join(map(bytes.decode, map(header_line, _HTTP_NAMES, map(str, values))))
    return text.encode()


@functools.lru_cache(maxsize=64)
def _machine_request_template(values: tuple[str, ...]) -> str | None:
    """`_REQUEST_TEMPLATE` with one machine's values written in, the record's own left to
    fill; None when one of the machine's is blank (`request_header_block` writes `Name;`)."""
    if not all(value.strip(" \t") for value in values):
        return None
    machine = dict(zip(_MACHINE_FIELDS, values, strict=True))
    return "\n".join(f"{http_name}: " + (machine[field].replace("%", "%%") if field in machine else "%s")
                     for field, http_name in zip(H.RECORD_HEADERS, _HTTP_NAMES, strict=True))


_read_record_values = operator.attrgetter(*(f for f in H.RECORD_HEADERS if f not in _MACHINE_FIELDS))


def read_request_header_block(record: Record) -> bytes:
    """`request_header_block` for a record `parse_header_block` accepted (the machine id
    written in or not), in half its time: the record grammar keeps its classification, event
    id and numbers from being blank, so only the machine id is looked at for every record;
    the machine's values are written into the lines once per set of values."""
    template = _machine_request_template(_read_machine_values(record))
    if template is None or not record.machine_id.strip(" \t"):
        return request_header_block(record)
    return (template % _read_record_values(record)).encode()


def stored_header_lines(block: bytes) -> tuple[bytes, ...] | None:
    """A stored block's lines, or None when it is not one `request_header_block` makes
    (a damaged row: the record is then read from its frame headers instead)."""
    lines = block.split(b"\n")
    if len(lines) != REQUEST_HEADER_LINES or b"" in lines or len(block.translate(None, _CONTROL)) != len(block):
        return None  # (one pass in C each, on every attempt: half the time a regular expression took)
    return tuple(lines)


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
