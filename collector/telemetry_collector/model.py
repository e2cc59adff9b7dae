"""The stored record and the JSON object the API shows for it (201 body, GET /api/records).

The JSON keys and types are the reference backend's: sorted keys, `id`, `severity` and
`record_version` as integers, `external` as a boolean, both times as
``YYYY-MM-DD HH:MM:SS UTC``; `system_name` and `payload_format_version` are stored but not
shown.  Rendering cannot fail for a record that passed the rules (times are bounded), and
the writer renders before it commits, so no stored record is ever answered with a 500.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass

NOT_APPLICABLE = "N/A"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


@dataclass(frozen=True)
class NewRecord:
    """A record that passed every ingestion rule, with the values to store."""

    record_format_version: int
    severity: int
    classification: str
    machine_id: str
    ts_capture: int
    arch: str
    host_type: str
    build: str
    kernel_version: str
    payload_format_version: int
    system_name: str
    board_name: str
    cpu_model: str
    bios_version: str
    event_id: str
    external: bool
    payload: str
    ts_reception: int
    record_id: str | None = None


# Stored columns in one order, shared by the schema, inserts and selects.
COLUMNS: tuple[str, ...] = (
    "record_id",
    "record_format_version",
    "severity",
    "classification",
    "machine_id",
    "ts_capture",
    "arch",
    "host_type",
    "build",
    "kernel_version",
    "payload_format_version",
    "system_name",
    "board_name",
    "cpu_model",
    "bios_version",
    "event_id",
    "external",
    "payload",
    "ts_reception",
)


@dataclass(frozen=True)
class StoredRecord:
    id: int
    record: NewRecord
    duplicates: int = 0

    def as_json_dict(self) -> dict[str, object]:
        r = self.record
        return {
            "arch": r.arch,
            "bios_version": r.bios_version,
            "board_name": r.board_name,
            "build": r.build,
            "classification": r.classification,
            "cpu_model": r.cpu_model,
            "event_id": r.event_id,
            "external": r.external,
            "id": self.id,
            "kernel_version": r.kernel_version,
            "machine_id": r.machine_id,
            "machine_type": r.host_type,
            "payload": r.payload,
            "record_version": r.record_format_version,
            "severity": r.severity,
            "ts_capture": format_time(r.ts_capture),
            "ts_reception": format_time(r.ts_reception),
        }


def record_from_row(row: tuple) -> StoredRecord:
    """`row` is (id, duplicates, *COLUMNS) as selected by the store."""
    values = dict(zip(COLUMNS, row[2:], strict=True))
    values["external"] = bool(values["external"])
    return StoredRecord(id=int(row[0]), duplicates=int(row[1]), record=NewRecord(**values))


# Every 201 renders two times, and records arriving in one second share their reception time.
@functools.lru_cache(maxsize=1024)
def format_time(ts: int) -> str:
    return time.strftime(TIME_FORMAT, time.gmtime(ts))


# One encoder for every answer: json.dumps would build a new one per call for these options.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def to_json(obj: object) -> bytes:
    return _ENCODER.encode(obj).encode("ascii")
