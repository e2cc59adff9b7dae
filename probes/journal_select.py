"""Which journal entries journalprobe reports, and their payload.  No I/O.

The original selects entries carrying `EXIT_CODE=exited` (plus `PRIORITY` 0-3 with the
privacy override): fields any program can put on its own log lines, so any user could
forge "service failed" reports.  We decide on the fields journald itself writes from the
sender's kernel credentials and its cgroup (`_PID`, `_UID`, `_TRANSPORT`,
`_SYSTEMD_UNIT`, `_BOOT_ID`), which no client can set:

- a unit-exit notice counts only when the system service manager sent it: PID 1, uid 0,
  over the native journal protocol (and, where journald records its unit, from
  init.scope).  `_EXE` is not evidence: it names the file a process runs, and any user
  can run the systemd binary with LD_PRELOAD code that logs whatever it likes.  A user
  manager (`systemd --user`) is not trusted either: everything about it, its unit and
  cgroup included, is under the control of the user it runs for;
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
SYSTEM_MANAGER_UNIT = "init.scope"  # PID 1's cgroup, as journald records it
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
    """Sent by PID 1 as root over the journal protocol: only the system manager can."""
    unit = e.get("_SYSTEMD_UNIT")
    return (e.get("_TRANSPORT") == "journal" and e.get("_PID") == "1" and e.get("_UID") == "0"
            and unit in (None, SYSTEM_MANAGER_UNIT))


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
