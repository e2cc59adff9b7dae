"""Crashes systemd-coredump already caught: its journal entries, read once each.

On a machine where systemd-coredump owns core_pattern, crashprobe runs beside it: each
coredump entry (MESSAGE_ID fc2e22bc6ee647b6b90729ab34a250b1) is turned into a
`CrashEvent` and a way to get the core (the journal's COREDUMP field, or the file named by
COREDUMP_FILENAME, decompressed on the way), and the cursor of the last entry handled is
kept under the state directory so nothing is reported twice.

Only entries written by systemd-coredump itself count: a user can log any field, but not
the trusted `_UID`/`_EXE`/`_SYSTEMD_UNIT` journald adds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .identity import credentials_changed, parse_ids, parse_status
from .pipeline import CrashEvent, Namespace

COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"
CURSOR_NAME = "crashprobe-journal.cursor"
TRUSTED_EXE_NAMES = ("systemd-coredump",)
COREDUMP_UNIT = ("systemd-coredump@", ".service")  # the per-crash service of its socket
JOURNAL_CORE_MAX = 64 << 20
DECOMPRESSORS = {".zst": ("zstd", "-dcq"), ".lz4": ("lz4", "-dcq"), ".xz": ("xz", "-dcq")}


@dataclass(frozen=True)
class CoreLocation:
    """Where an entry's core is: in the journal (bytes) or in a file."""

    data: bytes | None = None
    path: str | None = None
    missing_reason: str = ""

    @property
    def decompressor(self) -> tuple[str, ...] | None:
        if self.path is None:
            return None
        return DECOMPRESSORS.get(os.path.splitext(self.path)[1])


@dataclass(frozen=True)
class JournalCrash:
    cursor: str
    event: CrashEvent
    core: CoreLocation


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _int(value) -> int | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def trusted(entry: Mapping[str, object], trusted_uids: frozenset[int]) -> bool:
    """Written by systemd-coredump, as journald's own fields say: logged from its per-crash
    service, or by its executable under a trusted uid.  The service logs after it dropped
    to the crashed user's uid (systemd 252 does), so _UID alone would pass over every crash
    but root's; the unit comes from the process's cgroup, which a user running the program
    by hand (its --backtrace mode logs such entries) cannot claim.  The unit alone
    suffices: journald reads _EXE from /proc when it gets to the message, and the service
    has often exited by then."""
    unit = _text(entry.get("_SYSTEMD_UNIT")) or ""
    if unit.startswith(COREDUMP_UNIT[0]) and unit.endswith(COREDUMP_UNIT[1]):
        return True
    exe = _text(entry.get("_EXE")) or ""
    return os.path.basename(exe) in TRUSTED_EXE_NAMES and _int(entry.get("_UID")) in trusted_uids


def writer_of(entry: Mapping[str, object]) -> str:
    """Who journald says wrote an entry, for a log line."""
    return (f"uid {_text(entry.get('_UID')) or '?'}, unit {_text(entry.get('_SYSTEMD_UNIT')) or 'none'}, "
            f"executable {_text(entry.get('_EXE')) or 'unknown'}")


def crash_from_entry(entry: Mapping[str, object]) -> JournalCrash | None:
    """The crash an entry describes, or None if it is not a coredump entry."""
    if (_text(entry.get("MESSAGE_ID")) or "").replace("-", "") != COREDUMP_MESSAGE_ID:
        return None
    cursor = _text(entry.get("__CURSOR")) or ""
    exe = _text(entry.get("COREDUMP_EXE"))
    status = parse_status(_text(entry.get("COREDUMP_PROC_STATUS")) or "")
    uids, gids = parse_ids(status.get("Uid", "")), parse_ids(status.get("Gid", ""))
    root = _text(entry.get("COREDUMP_ROOT"))
    container = entry.get("COREDUMP_CONTAINER_CMDLINE") is not None
    namespace = Namespace.FOREIGN if container or (root not in (None, "/")) else Namespace.HOST
    event = CrashEvent(
        process_name=_text(entry.get("COREDUMP_COMM")),
        raw_path=exe,
        signal=_int(entry.get("COREDUMP_SIGNAL")),
        pid=_int(entry.get("COREDUMP_PID")),
        uid=_int(entry.get("COREDUMP_UID")),
        gid=_int(entry.get("COREDUMP_GID")),
        namespace=namespace,
        credentials_changed=credentials_changed(uids, gids),
        exe=exe,
    )
    data = entry.get("COREDUMP")
    path = _text(entry.get("COREDUMP_FILENAME"))
    if isinstance(data, bytes) and data:
        core = CoreLocation(data=data)
    elif path:
        core = CoreLocation(path=path)
    else:
        core = CoreLocation(missing_reason="systemd-coredump kept no core (Storage=none or too large)")
    return JournalCrash(cursor, event, core)


def iter_crashes(reader, trusted_uids: frozenset[int],
                 untrusted: Callable[[Mapping[str, object]], None] | None = None,
                 ) -> Iterator[tuple[str, JournalCrash | None]]:
    """(cursor, crash or None for an entry to pass over) for each entry after the cursor;
    `untrusted` is told of each entry passed over because systemd-coredump did not write it."""
    for entry in reader:
        cursor = _text(entry.get("__CURSOR")) or ""
        if not trusted(entry, trusted_uids):
            if untrusted is not None:
                untrusted(entry)
            yield cursor, None
            continue
        yield cursor, crash_from_entry(entry)
