"""`telemctl export --c-spool`: hand the queued records over to the C client (going back).

Each queued record becomes one file in the C telemprobd's staged format (`cspool.encode`),
so a C telempostd on the same spool directory delivers it: named as mkstemp names them,
mode 0600, owned by the directory's owner (a C telempostd deletes files of another uid),
its mtime the time the record was received (the C daemon expires and orders by mtime).

A file is written in a private directory beside the target, synced, and linked into place
(never clobbering), so a C telempostd never sees half a file.  Only once every file is
synced are the rows removed from our queue (unless `keep`): a kill in between leaves the
rows and the files both, and telemprobd's import then recognises the files by content and
removes them instead of queueing them twice.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import string
from dataclasses import dataclass

from telemetry.daemons.store import cspool
from telemetry.daemons.store.queue import QUEUE_DB, Queue, legacy_path, migrate_legacy, queue_dir
from telemetry.errors import TelemetryError
from telemetry.fsutil import fsync_dir
from telemetry.record import RecordError, parse_header_block

_NAME_CHARS = string.ascii_letters + string.digits
_PAGE = 256


class ExportError(TelemetryError):
    pass


@dataclass(frozen=True)
class ExportResult:
    target: str
    written: tuple[str, ...]  # file names
    skipped: tuple[tuple[str, str], ...]  # (record id, why): rows that hold no readable record
    removed: int  # rows removed from the queue


def export_c_spool(spool_dir: str, target: str, *, keep: bool = False) -> ExportResult:
    if not os.path.exists(os.path.join(queue_dir(spool_dir), QUEUE_DB)):
        if not os.path.exists(legacy_path(spool_dir)):
            return ExportResult(target, (), (), 0)
        _move_legacy(spool_dir)
    try:
        st = os.stat(target)
    except OSError as e:
        raise ExportError(f"{target}: {e.strerror}") from None
    if not os.path.isdir(target):
        raise ExportError(f"{target}: not a directory")
    owner = (st.st_uid, st.st_gid) if os.getuid() == 0 else None
    queue = Queue(spool_dir, create=False)
    work = os.path.join(target, f".telemctl-export-{os.getpid()}")
    written: list[str] = []
    skipped: list[tuple[str, str]] = []
    done: list[int] = []
    try:
        os.makedirs(work, mode=0o700, exist_ok=True)
        after = 0
        while rows := queue.after(after, _PAGE):
            for row in rows:
                after = row.seq
                try:
                    parse_header_block(row.headers, row.payload)
                except RecordError as e:
                    skipped.append((row.record_id, str(e)))
                    continue
                data = cspool.encode(row.headers, row.payload, row.cfg_path)
                written.append(_place(work, target, data, row.received_at, owner))
                done.append(row.seq)
        fsync_dir(target)
    except OSError as e:
        raise ExportError(f"cannot write into {target}: {e.strerror or e}"
                          + (f" ({len(written)} files written, the queue unchanged)" if written else "")) from None
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(work)
    try:
        if not keep and done:
            queue.settle(delete_seqs=done)
    finally:
        queue.close()
    return ExportResult(target, tuple(written), tuple(skipped), 0 if keep else len(done))


def _move_legacy(spool_dir: str) -> None:
    """A queue no daemon has moved since an upgrade: moved as a daemon would, its new
    directory owned as the spool directory (the daemons' user, when run as root)."""
    qdir = queue_dir(spool_dir)
    try:
        os.makedirs(qdir, mode=0o750, exist_ok=True)
        if os.getuid() == 0:
            st = os.stat(spool_dir)
            os.chown(qdir, st.st_uid, st.st_gid)
    except OSError as e:
        raise ExportError(f"{qdir}: {e.strerror}") from None
    migrate_legacy(spool_dir)


def _place(work: str, target: str, data: bytes, mtime: float, owner: tuple[int, int] | None) -> str:
    tmp = os.path.join(work, "record")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if owner is not None:
            os.fchown(fd, *owner)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.utime(tmp, (mtime, mtime))
    try:
        while True:
            name = "".join(secrets.choice(_NAME_CHARS) for _ in range(6))
            try:
                os.link(tmp, os.path.join(target, name))
                return name
            except FileExistsError:
                continue
    finally:
        os.unlink(tmp)
