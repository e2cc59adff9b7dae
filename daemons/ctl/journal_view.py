"""What `telemctl journal` (and `telem_journal`) prints, and which filter values it takes.
No I/O.

The text layout is the original telem_journal's: an optional header (`-V`), one line per
entry as ``"%-30s %s %s %s %s"`` with the time as ``%a %Y-%m-%d %H:%M:%S %Z`` in local
time, and ``Total records: N`` (`-V`).  A delivered record's line is the original's byte
for byte (it only journaled deliveries); any other outcome is added at the end of the
line in brackets, ``[rejected 400: <detail>]``, ``[expired]``, ``[dropped: <detail>]``, so
the five columns a script reads stay where they were and a rejected record never looks
delivered.  Filter values are checked before the journal is opened, so a typo is an
error naming the option instead of an empty answer.

Everything printed is inert on a terminal: record payloads are any local user's bytes
and details come from the collector, so control characters (C0, DEL, C1, line
separators, bidirectional overrides) and bytes that are not UTF-8 are shown as
``\\xNN``/``\\uNNNN`` escapes in text, and as ``\\uNNNN`` in JSON, which on its own
escapes only C0.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from telemetry.daemons.store.journal import JournalEntry, Outcome
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


def record_id_filter(value: str, what: str = "a record id") -> str:
    """Record and event ids are 32 hexadecimal characters; case is ignored."""
    low = value.strip().lower()
    if not _HEX32.fullmatch(low):
        raise FilterError(f"{value!r} is not {what} (32 hexadecimal characters)")
    return low


def event_id_filter(value: str) -> str:
    return record_id_filter(value, "an event id")


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


# What a terminal may act on: C0 but tab and newline, DEL and C1, the Unicode line and
# paragraph separators and the bidirectional embeddings, overrides and isolates.
_CONTROLS = r"\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
_ACTIVE = re.compile(r"[\x00-\x08\x0b-\x1f" + _CONTROLS + "]")
_ACTIVE_IN_LINE = re.compile(r"[\x00-\x1f" + _CONTROLS + "]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(data: bytes | str, *, one_line: bool = False) -> str:
    """Text a terminal shows and never acts on: what it could act on as an escape, bytes
    that are not UTF-8 as \\xNN.  `one_line` escapes tab and newline too."""
    text = data.decode("utf-8", errors="backslashreplace") if isinstance(data, bytes) else data
    return (_ACTIVE_IN_LINE if one_line else _ACTIVE).sub(_escape, text)


def json_text(obj: object) -> str:
    """JSON with every character a terminal could act on escaped (json escapes only C0)."""
    return _ACTIVE.sub(lambda m: f"\\u{ord(m.group()):04x}",
                       json.dumps(obj, indent=2, ensure_ascii=False))


def outcome_note(entry: JournalEntry) -> str:
    """"" for a delivery (the original line), else "[outcome status: detail]"."""
    if entry.outcome is Outcome.DELIVERED:
        return ""
    note = entry.outcome.value
    if entry.http_status is not None:
        note += f" {entry.http_status}"
    if entry.detail:
        note += f": {entry.detail}"
    return f"[{note}]"


def format_line(entry: JournalEntry, localtime: Callable[[float], time.struct_time] = time.localtime) -> str:
    line = LINE_FORMAT % (
        entry.classification,
        format_time(entry.timestamp, localtime),
        entry.record_id,
        entry.event_id,
        entry.boot_id,
    )
    note = outcome_note(entry)
    return visible(f"{line} {note}" if note else line, one_line=True)


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
