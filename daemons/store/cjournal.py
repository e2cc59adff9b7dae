"""The C client's text journal (`/var/log/telemetry/journal`), read so ours can carry it over.

One line an entry, five fields separated by ASCII RS (0x1E):
`record_id RS timestamp RS classification RS event_id RS boot_id`.  The C journal says
neither what became of a record nor when it was created; its entries are kept as
`Outcome.IMPORTED`.  `parse` is pure (text in, entries and the lines that are none
out); `import_file` is its thin shell.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass

from telemetry.daemons.store.journal import Journal, JournalEntry, Outcome

log = logging.getLogger(__name__)

C_JOURNAL = "journal"  # in the journal directory, beside journal.db
SEPARATOR = "\x1e"
SIZE_MAX = 1 << 20  # the C daemon keeps at most 150 lines; more is not its journal
DETAIL = "carried over from the C client's journal"
MARK = "c-journal-import:"  # meta key prefix in journal.db; the rest is the C journal's path
_RECORD_ID = re.compile(r"[0-9a-f]{32}")
_FIELD_MAX = 256


@dataclass(frozen=True)
class Parsed:
    """The C client's journal file read: its entries, and the lines that were none."""
    entries: tuple[JournalEntry, ...]
    bad_lines: tuple[int, ...]  # 1-based numbers of lines that are no entry


def parse(text: str) -> Parsed:
    entries: list[JournalEntry] = []
    bad: list[int] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        fields = line.split(SEPARATOR)
        if (len(fields) != 5 or not _RECORD_ID.fullmatch(fields[0]) or not fields[1].isdecimal()
                or any(len(f) > _FIELD_MAX or not f.isprintable() for f in fields)):
            bad.append(number)
            continue
        record_id, timestamp, classification, event_id, boot_id = fields
        entries.append(JournalEntry(record_id=record_id, timestamp=float(int(timestamp)),
                                    classification=classification, event_id=event_id, boot_id=boot_id,
                                    outcome=Outcome.IMPORTED, detail=DETAIL))
    return Parsed(tuple(entries), tuple(bad))


def import_file(journal: Journal, path: str) -> int | None:
    """Carry the C journal at `path` over into `journal`, once per content (its digest is
    the mark): the number of entries added, or None when there was nothing new to import.
    The C file is left as it is (a C client put back reads it again)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot read the C client's journal %s: %s", path, e.strerror or e)
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            log.warning("the C client's journal %s is not a regular file; not imported", path)
            return None
        data = os.read(fd, SIZE_MAX + 1)
    except OSError as e:
        log.warning("cannot read the C client's journal %s: %s", path, e.strerror or e)
        return None
    finally:
        os.close(fd)
    if len(data) > SIZE_MAX:
        log.warning("the C client's journal %s is larger than %d bytes; not imported", path, SIZE_MAX)
        return None
    parsed = parse(data.decode("utf-8", errors="replace"))
    from .cspool import digest

    if not journal.import_once(MARK + path, digest(data), parsed.entries):
        return None
    if parsed.bad_lines:
        log.warning("the C client's journal %s: lines %s are no journal entries; skipped", path,
                    ", ".join(map(str, parsed.bad_lines[:20])) + (" …" if len(parsed.bad_lines) > 20 else ""))
    log.info("imported %d entries of the C client's journal %s", len(parsed.entries), path)
    return len(parsed.entries)
