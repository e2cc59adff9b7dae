"""GET /api/records parameters to a `RecordQuery` (pure; contract §9).

Same parameters, checks, messages and defaults as the reference route, which upstream
always answered 500.  Fixed on purpose: numbers are ASCII digits compared as numbers, so
``limit`` is any of 1..1000 (the reference compared strings: ``2`` failed, ``100`` passed);
ids and times beyond what the database holds are clamped instead of failing there.
Unknown parameters are ignored and, for a repeated one, the first value counts, as the
reference does.

Ours: ``before_id`` (ids below it), the cursor for paging: a page that is full names the
next page's cursor, the lowest id it holds (`app` puts it in the answer), so a client reads
everything, newest first, in pages of at most ``limit`` records.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from telemetry.errors import TelemetryError

from .rules import MACHINE_ID_MAX, SEVERITY_RANGE, parse_number, printable, unquote

DAY = 24 * 60 * 60
MAX_WINDOW = 30 * DAY  # the default window, and the largest
LIMIT_MAX = 1000
INT64_MAX = 2**63 - 1
MAX_PARAMETERS = 64


class QueryRejected(TelemetryError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class RecordQuery:
    window: int = MAX_WINDOW  # seconds: records received within it
    severity: int | None = None
    classification: str | None = None
    build: str | None = None
    machine_id: str | None = None
    from_id: int | None = None  # id >= from_id
    before_id: int | None = None  # id < before_id (the paging cursor)
    ts_capture: int | None = None  # capture time > ts_capture
    limit: int = LIMIT_MAX


def _digits(value: str, message: str) -> int:
    if not value or not value.isascii() or not value.isdigit():
        raise QueryRejected(message)
    # Any number this long is past every bound below; clamp without converting it.
    return INT64_MAX if len(value) > 18 else int(value)


def parse_query_string(query_string: bytes) -> dict[str, str]:
    """First value of each parameter; percent-escapes are UTF-8 (invalid bytes replaced)."""
    try:
        pairs = urllib.parse.parse_qsl(
            query_string.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_PARAMETERS
        )
    except ValueError:
        raise QueryRejected(f"Too many query parameters; at most {MAX_PARAMETERS}") from None
    params: dict[str, str] = {}
    for k, v in pairs:
        params.setdefault(k, v)
    return params


def parse_query(params: dict[str, str]) -> RecordQuery:
    """The query the parameters ask for, or `QueryRejected` with the reference's message."""
    severity = classification = build = machine_id = None
    if (value := params.get("severity")) is not None:
        severity = parse_number(value)
        if severity not in SEVERITY_RANGE:
            raise QueryRejected("Severity should be a numeric value")
    if (value := params.get("classification")) is not None:
        if len(value.split("/")) != 3:
            raise QueryRejected("Classification value is invalid")
        classification = value
    if (value := params.get("build")) is not None:
        build = unquote(value)
        if not printable(build):
            raise QueryRejected("Build value is invalid")
    if (value := params.get("machine_id")) is not None:
        if len(value) > MACHINE_ID_MAX:
            raise QueryRejected("Machine id value is invalid")
        machine_id = value
    days = seconds = from_id = before_id = ts_capture = None
    if (value := params.get("created_in_days")) is not None:
        days = _digits(value, "Created (in days) value is invalid")
    if (value := params.get("created_in_sec")) is not None:
        seconds = _digits(value, "Created (in seconds) value is invalid")
    if (value := params.get("from_id")) is not None:
        from_id = _digits(value, "Provided record id value is invalid")
    if (value := params.get("before_id")) is not None:
        before_id = _digits(value, "Cursor (before_id) value is invalid")
    if (value := params.get("ts_capture")) is not None:
        ts_capture = _digits(value, "Time stamp from record capture")
    limit = LIMIT_MAX
    if (value := params.get("limit")) is not None:
        limit = _digits(value, "Record limit value is invalid")
        if not 1 <= limit <= LIMIT_MAX:
            raise QueryRejected("Record limit value is invalid")
    if days is not None:
        window = days * DAY
    elif seconds is not None:
        window = seconds
    else:
        window = MAX_WINDOW
    return RecordQuery(
        window=min(window, MAX_WINDOW),
        severity=severity,
        classification=classification,
        build=build,
        machine_id=machine_id,
        from_id=from_id,
        before_id=before_id,
        ts_capture=ts_capture,
        limit=limit,
    )
