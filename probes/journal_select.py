"""Which journal entries journalprobe reports, and their payload.  No I/O.

The original selects entries carrying `EXIT_CODE=exited` (plus `PRIORITY` 0-3 with the
privacy override): fields any program can put on its own log lines, so any user could
forge "service failed" reports.  We decide on the fields journald itself writes from the
sender's credentials (`_PID`, `_UID`, `_EXE`, `_TRANSPORT`, `_BOOT_ID`), never on what a
client can set for identity:

- a unit-exit notice counts only when it comes from a service manager: PID 1 running as
  root (the system manager), or a user manager (`_EXE` is the systemd binary);
- with the privacy override, an error-priority entry counts only from root or the kernel;
- only entries of the current boot, and none logged before the owner opted in.

The record is the original's: class org.clearlinux/journal/error, severity 2, payload
`MESSAGE=<message>\\n`.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLASSIFICATION = "org.clearlinux/journal/error"
SEVERITY = 2
PAYLOAD_VERSION = 1
SYSTEMD_EXES = frozenset({"/usr/lib/systemd/systemd", "/lib/systemd/systemd"})
ERROR_PRIORITIES = frozenset({"0", "1", "2", "3"})


@dataclass(frozen=True)
class Entry:
    """The fields of one journal entry, as text (boot ids as 32 hex digits, times in µs)."""

    fields: Mapping[str, str]

    def get(self, name: str) -> str | None:
        return self.fields.get(name)

    @property
    def realtime_usec(self) -> int | None:
        value = self.fields.get("__REALTIME_TIMESTAMP")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def cursor(self) -> str | None:
        return self.fields.get("__CURSOR")


def _text(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, datetime.datetime):
        delta = value - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return str((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):  # a field present more than once: the first value
        return _text(value[0]) if value else ""
    if hasattr(value, "timestamp") and hasattr(value, "bootid"):  # journal.Monotonic
        return str(int(value.timestamp.total_seconds() * 1_000_000))
    return str(value)


def entry_from_reader(raw: Mapping[str, Any]) -> Entry:
    """A systemd.journal.Reader entry (converted values) as text fields."""
    return Entry({k: _text(v) for k, v in raw.items()})


def from_service_manager(e: Entry) -> bool:
    if e.get("_TRANSPORT") != "journal":
        return False
    if e.get("_PID") == "1" and e.get("_UID") == "0":
        return True
    return e.get("_EXE") in SYSTEMD_EXES


def from_root_or_kernel(e: Entry) -> bool:
    return e.get("_TRANSPORT") == "kernel" or e.get("_UID") == "0"


def selects(e: Entry, boot_id: str, *, privacy_override: bool = False, since_usec: int | None = None) -> bool:
    if e.get("_BOOT_ID") != boot_id:
        return False
    if since_usec is not None:
        when = e.realtime_usec
        if when is None or when < since_usec:
            return False
    if e.get("EXIT_CODE") == "exited" and from_service_manager(e):
        return True
    return privacy_override and e.get("PRIORITY") in ERROR_PRIORITIES and from_root_or_kernel(e)


def journal_payload(e: Entry) -> str:
    return f"MESSAGE={e.get('MESSAGE') or ''}\n"
