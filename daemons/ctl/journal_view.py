"""What `telemctl journal` prints, and which filter values it takes. No I/O.

The text layout is the original telem_journal's, byte for byte: an optional header
(`-V`), one line per entry as ``"%-30s %s %s %s %s"`` with the time as
``%a %Y-%m-%d %H:%M:%S %Z`` in local time, and ``Total records: N`` (`-V`).  Filter
values are checked before the journal is opened, so a typo is an error naming the
option instead of an empty answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from telemetry.daemons.store.journal import JournalEntry
from telemetry.errors import TelemetryError
from telemetry.limits import CLASSIFICATION_MAX
from telemetry.record import RecordError, check_classification

HEADER_FORMAT = "%-30s %-27s %-32s %-32s %-36s"
HEADER_TITLES = ("Classification", "Time stamp", "Record ID", "Event ID", "Boot ID")
LINE_FORMAT = "%-30s %s %s %s %s"
TIME_FORMAT = "%a %Y-%m-%d %H:%M:%S %Z"
TOTAL_FORMAT = "Total records: %d"
PREFIX_SUFFIX = "/*"

_HEX32 = re.compile(r"[0-9a-f]{32}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class FilterError(TelemetryError):
    """A filter value that can never match an entry; the message says what is expected."""


def record_id_filter(value: str, what: str = "record id") -> str:
    """Record and event ids are 32 hexadecimal characters; case is ignored."""
    low = value.strip().lower()
    if not _HEX32.fullmatch(low):
        raise FilterError(f"{value!r} is not a {what} (32 hexadecimal characters)")
    return low


def event_id_filter(value: str) -> str:
    return record_id_filter(value, "event id")


def boot_id_filter(value: str) -> str:
    low = value.strip().lower()
    if not _UUID.fullmatch(low):
        raise FilterError(
            f"{value!r} is not a boot id (a UUID such as 60c014cd-4693-40f1-b334-548cd932949b, "
            "as in /proc/sys/kernel/random/boot_id)"
        )
    return low


def classification_filter(value: str) -> str:
    """An exact classification a/b/c, or a prefix ending in "/*" (`org.clearlinux/*`)."""
    if value.endswith(PREFIX_SUFFIX):
        prefix = value[:-1]
        raw = prefix.encode("utf-8", errors="surrogateescape")
        if len(prefix) < 2 or raw.count(b"/") > 2 or len(raw) > CLASSIFICATION_MAX:
            raise FilterError(
                f"{value!r} is not a classification prefix: it is at most two parts followed by "
                "'/*', e.g. 'org.clearlinux/*' or 'org.clearlinux/hello/*'"
            )
        if any(b < 0x20 or b > 0x7E or b == 0x2A for b in raw):
            raise FilterError(f"{value!r} is not a classification prefix: printable ASCII only, one '*' at the end")
        return value
    try:
        check_classification(value)
    except RecordError as e:
        raise FilterError(
            f"{value!r} is not a classification ({e}); give all three parts a/b/c, "
            "or a prefix ending in '/*'"
        ) from None
    return value


def format_time(timestamp: float, localtime: Callable[[float], time.struct_time] = time.localtime) -> str:
    return time.strftime(TIME_FORMAT, localtime(int(timestamp)))


def format_header() -> str:
    return HEADER_FORMAT % HEADER_TITLES


def format_line(entry: JournalEntry, localtime: Callable[[float], time.struct_time] = time.localtime) -> str:
    return LINE_FORMAT % (
        entry.classification,
        format_time(entry.timestamp, localtime),
        entry.record_id,
        entry.event_id,
        entry.boot_id,
    )


def format_total(count: int) -> str:
    return TOTAL_FORMAT % count


def entry_json(entry: JournalEntry, payload: bytes | None = None, *, include_payload: bool = False) -> dict:
    """One entry as a JSON object; times as Unix seconds, payload as text when asked for."""
    obj: dict = {
        "classification": entry.classification,
        "timestamp": entry.timestamp,
        "record_id": entry.record_id,
        "event_id": entry.event_id,
        "boot_id": entry.boot_id,
        "outcome": entry.outcome.value,
        "http_status": entry.http_status,
        "detail": entry.detail,
        "creation_timestamp": entry.creation_timestamp,
    }
    if include_payload:
        obj["payload"] = None if payload is None else payload.decode("utf-8", errors="replace")
    return obj
