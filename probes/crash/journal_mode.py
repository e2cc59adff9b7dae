"""The systemd-coredump companion: read its journal entries, report each crash once.

The cursor of the last entry handled is kept in the state directory; on the first run
only crashes since the opt-in are reported, never the journal's whole past.  An entry
whose report could not be delivered because telemprobd was away is tried again next time.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import replace

import click

from telemetry.errors import TelemetryError

from ..common import EXIT_FAILURE, EXIT_OK, StateFile, opt_in_hint
from .corefile import parse_core
from .files import FileRefused, open_core
from .journal_source import (
    COREDUMP_MESSAGE_ID,
    CURSOR_NAME,
    JOURNAL_CORE_MAX,
    CoreLocation,
    JournalCrash,
    iter_crashes,
    writer_of,
)
from .pipeline import Action

SYSTEMD_COREDUMP_USER = "systemd-coredump"


class JournalError(TelemetryError):
    pass


def _trusted_writers() -> frozenset[int]:
    import pwd

    uids = {0}
    try:
        uids.add(pwd.getpwnam(SYSTEMD_COREDUMP_USER).pw_uid)
    except KeyError:
        pass
    if os.geteuid() != 0:
        uids.add(os.geteuid())  # a user-mode test journal is written by its user
    return frozenset(uids)


def _open_reader(journal_dir: str | None):
    try:
        from systemd import journal
    except ImportError:
        raise JournalError("systemd-python is not installed; the journal mode needs it") from None
    try:
        reader = journal.Reader(path=journal_dir) if journal_dir else journal.Reader()
    except OSError as e:
        raise JournalError(f"cannot open the journal{' in ' + journal_dir if journal_dir else ''}: {e.strerror or e}") from None
    reader.data_threshold = JOURNAL_CORE_MAX
    reader.add_match(MESSAGE_ID=COREDUMP_MESSAGE_ID)
    return reader


def run_journal(cp, journal_dir: str | None, follow: bool, verbose: bool) -> int:
    log = cp.log
    if not cp.probe.opted_in:
        log.info("%s", opt_in_hint(cp.probe.paths))
        return EXIT_OK
    cursor_file = cp.probe.state_file(CURSOR_NAME)
    reader = _open_reader(journal_dir)
    cursor = _load_cursor(cursor_file)
    if cursor and not _seek_after(reader, cursor):
        log.warning("%s holds no valid journal cursor; reporting the crashes since the opt-in", cursor_file.path)
        cursor = None
    opted_in_at = os.lstat(cp.probe.paths.opt_in_file).st_mtime
    if not cursor:
        reader.seek_realtime(opted_in_at)
    stop = {"now": False}
    if follow:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    trusted = _trusted_writers()

    def untrusted(entry) -> None:
        log.warning("passed over a coredump journal entry that systemd-coredump did not write, as "
                    "journald tells (%s)", writer_of(entry))
    status = EXIT_OK
    while True:
        for entry_cursor, crash in iter_crashes(reader, trusted, untrusted):
            if crash is not None:
                delivered = _report(cp, crash, verbose)
                if delivered is None:
                    return EXIT_FAILURE  # telemprobd unreachable: this entry is tried again
                if not delivered:
                    status = EXIT_FAILURE
            if entry_cursor:
                cursor_file.write(entry_cursor.encode() + b"\n")
                cursor = entry_cursor
            if stop["now"]:
                return status
        if not follow or stop["now"]:
            return status
        reader.wait(5)
        if not cursor:
            # A seek that found no entry yet is not where sd-journal goes on from: without
            # seeking again, the entries logged from now on would never be read.
            reader.seek_realtime(opted_in_at)


def _seek_after(reader, cursor: str) -> bool:
    """Put the reader after the entry `cursor` names; False if the text is not a cursor."""
    try:
        reader.seek_cursor(cursor)
    except ValueError:  # the state file was damaged
        return False
    first = reader.get_next()
    if first and not reader.test_cursor(cursor):
        reader.seek_cursor(cursor)  # the entry is gone (rotated): start from what follows
    return True


def _report(cp, crash: JournalCrash, verbose: bool) -> bool | None:
    """True sent, False not sent for good, None worth retrying later."""
    event = crash.event
    outcome = cp.outcome(event)
    if outcome.action is Action.SKIP:
        cp.log.info("crash of %s not reported: %s", event.executable, outcome.reason)
        return True
    if not cp.flood_allows(event):
        return True
    if outcome.action is Action.FIXED:
        cp.log.info("%s", outcome.reason)
    if outcome.action is Action.ANALYZE and crash.core.data is None and crash.core.path is None:
        report = cp.report(event, replace(outcome, action=Action.STUB, reason=crash.core.missing_reason), None, None)
    elif outcome.action is Action.ANALYZE:
        with _CoreInput(cp, crash.core) as core_input:
            report = cp.report(event, outcome, core_input.read, cp.access_for(event, None), exe_path=None)
    else:
        report = cp.report(event, outcome, None, None)
    if verbose:
        click.echo(report.payload)
    if cp.send(report):
        return True
    return None if cp.last_send_retryable else False


class _CoreInput:
    """An entry's core, open until its report is made: a core file's memory is read while
    the unwinder runs, so its descriptor must outlive `read`."""

    def __init__(self, cp, core: CoreLocation):
        self.cp, self.core = cp, core
        self._fds: list[int] = []
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> _CoreInput:
        return self

    def read(self):
        cp, core = self.cp, self.core
        if core.data is not None:
            return parse_core(core.data, cp.limits, seekable=True)
        try:
            fd = open_core(core.path, owners=frozenset({0, os.geteuid()}))
        except FileRefused as e:
            raise JournalError(f"cannot open {core.path}: {e}") from None
        self._fds.append(fd)
        tool = core.decompressor
        if tool is None:
            return cp.read_core(fd)
        try:
            self._proc = subprocess.Popen(list(tool), stdin=fd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          close_fds=True, env={"PATH": "/usr/bin:/bin"})
        except FileNotFoundError as e:
            raise JournalError(f"cannot decompress {core.path}: {e.strerror}") from None
        return cp.read_core(self._proc.stdout.fileno())  # a pipe: read whole, nothing read later

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc.kill()
            self._proc.wait()
        for fd in self._fds:
            os.close(fd)


def _load_cursor(cursor_file: StateFile) -> str | None:
    """The saved cursor; none (start from the opt-in) when it is missing or unusable."""
    try:
        data = cursor_file.read()
    except (OSError, TelemetryError):
        return None
    return (data or b"").decode("ascii", "replace").strip() or None
