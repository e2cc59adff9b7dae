"""The ingestion rules (collector-contract.md §4) as one pure function, `validate`.

The rules themselves, their limits and messages, are the library's contract table
(`telemetry.contract`), which telempostd also checks before it sends.

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

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from telemetry import headers as H
from telemetry.contract import (
    ARCHITECTURES,
    MACHINE_ID_MAX,
    RECORD_FORMAT_VERSION_INVALID,
    RECORD_FORMAT_VERSIONS,
    RECORD_ID,
    SEVERITY_RANGE,
    TID_MISMATCH,
    Rule,
    first_refusal,
    missing_header,
    parse_number,
    printable,
    required_headers,
    unquote,
)
from telemetry.errors import TelemetryError

from .model import NOT_APPLICABLE, NewRecord

__all__ = [
    "ARCHITECTURES", "MACHINE_ID_MAX", "SEVERITY_RANGE", "Rejected", "Rule", "Submission", "parse_number",
    "printable", "required_headers", "unquote", "validate",
]


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


def _require(ok: bool, rule: Rule, message: str) -> None:
    if not ok:
        raise Rejected(rule, message)


def validate(sub: Submission, tids: Collection[str], now: int) -> NewRecord:
    """The record to store, or `Rejected` naming the first rule `sub` breaks.

    `now` (unix seconds) becomes the reception time.  Rules 4-15 are the contract's table
    (`telemetry.contract.FIELD_RULES`), the same one telempostd checks before it sends.
    """
    _require(sub.tid is not None and sub.tid in tids, Rule.TID, TID_MISMATCH)
    if sub.defect is not None:
        raise sub.defect
    f = sub.fields
    for name, value in f.items():
        if "\0" in value:
            raise Rejected(Rule.MALFORMED, f"{H.HTTP_HEADERS[name]} contains a NUL character")

    version = parse_number(f.get(H.RECORD_FORMAT_VERSION))
    if version not in RECORD_FORMAT_VERSIONS:
        raise Rejected(Rule.RECORD_FORMAT_VERSION, RECORD_FORMAT_VERSION_INVALID)
    assert version is not None
    missing = missing_header(version, f)
    if missing is not None:
        raise Rejected(Rule.PRESENCE, f"Record-Format-Version headers are invalid, {missing} missing")
    refused = first_refusal(f, version)
    if refused is not None:
        raise Rejected(refused[0].rule, refused[1])

    if sub.record_id is not None:
        _require(RECORD_ID.fullmatch(sub.record_id) is not None, Rule.RECORD_ID, f"{H.RECORD_ID_HEADER} is invalid")
    _require("\0" not in sub.payload, Rule.PAYLOAD, "payload contains a NUL byte")

    newer = version >= 3
    return NewRecord(
        record_format_version=version,
        severity=int(f[H.SEVERITY]),
        classification=f[H.CLASSIFICATION],
        machine_id=f[H.MACHINE_ID],
        ts_capture=int(f[H.CREATION_TIMESTAMP]),
        arch=f[H.ARCH],
        host_type=f[H.HOST_TYPE],
        build=unquote(f[H.BUILD]),
        kernel_version=f[H.KERNEL_VERSION],
        payload_format_version=int(f[H.PAYLOAD_FORMAT_VERSION]),
        system_name=unquote(f[H.SYSTEM_NAME]),
        board_name=f[H.BOARD_NAME] if newer else NOT_APPLICABLE,
        cpu_model=f[H.CPU_MODEL] if newer else NOT_APPLICABLE,
        bios_version=f[H.BIOS_VERSION] if newer else NOT_APPLICABLE,
        event_id=f[H.EVENT_ID] if version >= 4 else NOT_APPLICABLE,
        external=sub.external == "true",
        payload=sub.payload,
        ts_reception=now,
        record_id=sub.record_id,
    )
