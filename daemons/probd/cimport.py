"""Taking over what a C telemprobd staged: its record files in the spool directory.

telemprobd, the queue's writer, runs this at start.  Each file that is a C record goes
into the queue with its original header lines, its CFG: path, and its staging time (the
file's mtime) as the time it was received; then the file is unlinked.  Exactly once,
even under kill -9:

- the rows and one marker per file (name → digest of its content) are committed in one
  transaction; the files are unlinked after it; the markers are deleted after that;
- at the next start a marker whose file is still there with that content means "queued,
  not yet unlinked": the file is unlinked, not queued again;
- a file whose content is already a queued row (an export to the C format that was
  interrupted before it removed the rows) is unlinked, not queued again.

A file that starts like a C record but is cut short or broken has its bytes kept in the
journal's set-aside table (as telempostd keeps a queue row that holds no record) and is
then removed.  Anything else, and anything that cannot be read, is left where it is.
Every outcome is logged and counted (`c-spool:<outcome>` in telemprobd's counters).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from telemetry.daemons.store import cspool
from telemetry.daemons.store.database import StoreError
from telemetry.daemons.store.journal import Journal, Outcome, SetAside, entry_for
from telemetry.daemons.store.queue import (
    QUEUE_DB,
    QUEUE_SUBDIR,
    WAKEUP_FILE,
    NewRecord,
    Queue,
    Sender,
)
from telemetry.fsutil import fsync_dir

log = logging.getLogger(__name__)

MARKER = "c-spool-import:"  # meta key prefix; the rest is the file's name
COUNTER = "c-spool:"  # counter name prefix; the rest is an ImportOutcome
BATCH = 256  # files committed in one transaction


class ImportOutcome(enum.Enum):
    IMPORTED = "imported"
    ALREADY_QUEUED = "already-queued"  # its content was queued before: removed, not queued twice
    NOT_A_RECORD = "not-a-record"  # left alone
    UNREADABLE = "unreadable"  # a damaged record (kept in the journal, removed) or a file that cannot be read (left)


@dataclass(frozen=True)
class FileResult:
    """What became of one file of the C client's spool (logged and counted)."""
    name: str
    outcome: ImportOutcome
    detail: str = ""
    removed: bool = False


@dataclass(frozen=True)
class ImportReport:
    """What one import of the C client's spool did, file by file."""
    spool_dir: str
    results: tuple[FileResult, ...]

    def count(self, outcome: ImportOutcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    def counters(self, daemon: str) -> dict[tuple[str, str], int]:
        return {(daemon, COUNTER + o.value): n for o in ImportOutcome if (n := self.count(o))}

    def summary(self) -> str:
        parts = [f"{self.count(o)} {o.value}" for o in ImportOutcome if self.count(o)]
        return f"C spool files in {self.spool_dir}: " + ", ".join(parts)


@dataclass(frozen=True)
class _Candidate:
    """A C spool file read and parsed, kept with the stat that proves it is still the same file."""
    name: str
    content: bytes
    parsed: cspool.CRecord
    st: os.stat_result


def import_c_spool(spool_dir: str, queue: Queue, journal: Callable[[], Journal], *,
                   daemon: str = "telemprobd", new_id: Callable[[float], str]) -> ImportReport:
    """Import every C record file in `spool_dir` into `queue` (see the module's docstring).
    Queue errors propagate (the files stay for the next start); file errors are results."""
    results: list[FileResult] = []
    _finish_interrupted(spool_dir, queue)
    candidates: list[_Candidate] = []
    try:
        names = sorted(os.listdir(spool_dir))
    except FileNotFoundError:
        return ImportReport(spool_dir, ())
    for name in names:
        if name == QUEUE_SUBDIR or name.startswith((QUEUE_DB, WAKEUP_FILE)):
            continue  # a queue not yet moved into its directory (another process had it open)
        result = _look_at(spool_dir, name)
        if isinstance(result, FileResult):
            results.append(result)
        else:
            candidates.append(result)
    damaged = [r for r in results if r.outcome is ImportOutcome.UNREADABLE and r.removed]
    if damaged:
        results = [r for r in results if r not in damaged] + _set_aside(spool_dir, damaged, journal)
    queued = {_content_key(h, p) for h, p in queue.contents()} if candidates else set()
    for i in range(0, len(candidates), BATCH):
        results.extend(_commit(spool_dir, queue, candidates[i:i + BATCH], daemon, new_id, queued))
    report = ImportReport(spool_dir, tuple(results))
    others = {k: v for k, v in report.counters(daemon).items() if k[1] != COUNTER + ImportOutcome.IMPORTED.value}
    if others:  # the imported ones were counted with their rows
        try:
            queue.bump(others)
        except StoreError as e:
            log.warning("cannot count the C spool files that were not imported: %s", e)
    _log(report)
    return report


def _finish_interrupted(spool_dir: str, queue: Queue) -> None:
    """Markers left by a run killed between its commit and its unlinks."""
    markers = queue.meta_with_prefix(MARKER)
    if not markers:
        return
    for key, wanted in markers.items():
        name = key[len(MARKER):]
        content = _read_plain(os.path.join(spool_dir, name))
        if content is not None and cspool.digest(content) == wanted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(spool_dir, name))
            log.info("C spool file %s was queued before an interruption; removed", name)
    fsync_dir(spool_dir)
    queue.delete_meta(markers)


def _read_plain(path: str) -> bytes | None:
    """A regular file's content (at most what a C record can hold), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > cspool.FILE_MAX:
            return None
        return _read_all(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    total = 0
    while total <= cspool.FILE_MAX:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _look_at(spool_dir: str, name: str) -> FileResult | _Candidate:
    path = os.path.join(spool_dir, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return FileResult(name, ImportOutcome.NOT_A_RECORD, "a symbolic link")
        if e.errno == errno.ENOENT:
            return FileResult(name, ImportOutcome.NOT_A_RECORD, "gone while looked at")
        return FileResult(name, ImportOutcome.UNREADABLE, e.strerror or str(e))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return FileResult(name, ImportOutcome.NOT_A_RECORD, "a directory")
        if not stat.S_ISREG(st.st_mode):
            return FileResult(name, ImportOutcome.NOT_A_RECORD, "not a regular file")
        if st.st_size > cspool.FILE_MAX:
            return FileResult(name, ImportOutcome.NOT_A_RECORD,
                              f"{st.st_size} bytes, more than a C record file can hold")
        content = _read_all(fd)
    except OSError as e:
        return FileResult(name, ImportOutcome.UNREADABLE, e.strerror or str(e))
    finally:
        os.close(fd)
    parsed = cspool.read(content)
    if isinstance(parsed, cspool.Foreign):
        return FileResult(name, ImportOutcome.NOT_A_RECORD, parsed.reason)
    if isinstance(parsed, cspool.Damaged):
        # Removed only once its bytes are in the journal (_set_aside).
        return FileResult(name, ImportOutcome.UNREADABLE, f"a damaged C record: {parsed.reason}", removed=True)
    return _Candidate(name, content, parsed, st)


def _set_aside(spool_dir: str, damaged: list[FileResult], journal: Callable[[], Journal]) -> list[FileResult]:
    """Keep the damaged files' bytes in the journal, then remove them; on failure leave them."""
    now = time.time()
    try:
        j = journal()
        rows, entries = [], []
        for r in damaged:
            content = _read_plain(os.path.join(spool_dir, r.name)) or b""
            rid = "c-spool-" + cspool.digest(content)[:32]  # the same file journaled twice is one entry
            why = f"C spool file {r.name}: {r.detail}"
            rows.append(SetAside(rid, now, why, b"", content))
            entries.append(entry_for(rid, None, Outcome.SET_ASIDE, timestamp=now, boot_id=j.boot_id, detail=why))
        j.add(entries, set_aside=rows)
    except Exception as e:
        log.error("cannot keep %d damaged C spool files in the journal (%s); left in %s",
                  len(damaged), e, spool_dir)
        return [FileResult(r.name, r.outcome, r.detail, removed=False) for r in damaged]
    for r in damaged:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(spool_dir, r.name))
    fsync_dir(spool_dir)
    return damaged


def _content_key(headers: bytes, payload: bytes) -> str:
    return cspool.digest(len(headers).to_bytes(4, "little") + headers + payload)


def _commit(spool_dir: str, queue: Queue, batch: list[_Candidate], daemon: str,
            new_id: Callable[[float], str], queued: set[str]) -> list[FileResult]:
    """`queued`: the content keys of every queued row, this batch's added."""
    results: list[FileResult] = []
    records: list[NewRecord] = []
    markers: dict[str, str] = {}
    for c in batch:
        key = _content_key(c.parsed.header_block, c.parsed.payload)
        if key in queued:
            results.append(FileResult(c.name, ImportOutcome.ALREADY_QUEUED, removed=True))
        else:
            queued.add(key)
            records.append(NewRecord(
                record_id=new_id(time.time()), received_at=c.st.st_mtime,
                sender=Sender(c.st.st_uid, c.st.st_gid, 0), headers=c.parsed.header_block,
                payload=c.parsed.payload, cfg_path=c.parsed.cfg_path))
            results.append(FileResult(c.name, ImportOutcome.IMPORTED,
                                      f"{c.parsed.record.classification}, event {c.parsed.record.event_id}",
                                      removed=True))
        markers[MARKER + c.name] = cspool.digest(c.content)
    imported = sum(1 for r in results if r.outcome is ImportOutcome.IMPORTED)
    queue.stage(records, {(daemon, COUNTER + ImportOutcome.IMPORTED.value): imported}, markers)
    queue.sync()  # on disk before the files that held them are gone (a power cut may follow)
    for c in batch:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(spool_dir, c.name))
    fsync_dir(spool_dir)
    queue.delete_meta(markers)
    if records:
        try:
            queue.touch_wakeup()
        except OSError as e:
            log.error("cannot touch %s: %s", queue.wakeup_path, e.strerror or e)
    return results


def _log(report: ImportReport) -> None:
    if not report.results:
        return
    for r in report.results:
        if r.outcome is ImportOutcome.IMPORTED:
            log.info("queued C spool file %s (%s)", r.name, r.detail)
        elif r.outcome is ImportOutcome.NOT_A_RECORD:
            log.warning("left %s alone in %s: not a C record file (%s)", r.name, report.spool_dir, r.detail)
        elif r.outcome is ImportOutcome.UNREADABLE:
            where = "kept in the journal (set aside) and removed" if r.removed else "left in place"
            log.warning("could not read C spool file %s as a record (%s); %s", r.name, r.detail, where)
    trouble = any(r.outcome in (ImportOutcome.NOT_A_RECORD, ImportOutcome.UNREADABLE) for r in report.results)
    log.log(logging.WARNING if trouble else logging.INFO, "%s", report.summary())
