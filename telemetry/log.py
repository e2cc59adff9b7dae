"""Logging set-up shared by every program: journald under systemd, stderr otherwise, and a
log file of its own (timestamped, rotated: `telemetry.logfile`) for a daemon telemctl started
in user mode.

A probe asks for its set-up with `setup_later`: logging (a tenth of a probe's start-up) is
imported and configured when the first line is logged through `logger`, so a probe that
has nothing to say never loads it.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    import logging

# The config's names for logging's levels (logging.DEBUG … logging.ERROR).
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

# Set by telemctl for the daemons it starts in user mode: the file their log goes to.
LOG_FILE_ENV = "TELEMETRY_LOG_FILE"
LOG_MAX_BYTES = 1 << 20  # a file is rotated when the next line would take it past this
LOG_BACKUPS = 3  # <name>.log.1 … .3 are kept
LOG_MODE = 0o600


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


JOURNAL_SOCKET = "/run/systemd/journal/socket"


_pending: tuple[str, str | int] | None = None


def setup_later(program: str, level: str | int = "info") -> None:
    """`setup(program, level)`, done by the first call of `logger`."""
    global _pending
    _pending = (program, level)


def logger(name: str) -> logging.Logger:
    """`name`'s logger, once the set-up `setup_later` asked for is done."""
    global _pending
    if _pending is not None:
        program, level = _pending
        _pending = None
        setup(program, level)
    import logging

    return logging.getLogger(name)


def setup(program: str, level: str | int = "info", *, stream=None, journal: bool = False) -> logging.Logger:
    """Configure the root logger once per process; returns the program's logger.

    journal=True logs to journald whenever its socket exists, for programs the kernel
    starts outside systemd with no stderr (crashprobe as the core_pattern handler).
    """
    import logging

    global _pending
    _pending = None
    numeric = LEVELS.get(level, logging.INFO) if isinstance(level, str) else level
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler | None = None
    wants_journal = under_systemd() or journal
    if stream is None and wants_journal and os.path.exists(JOURNAL_SOCKET):
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER=program)
            handler.setFormatter(logging.Formatter("%(message)s"))
        except Exception:  # systemd-python missing, or journald not answering: stderr
            handler = None
    log_file = os.environ.get(LOG_FILE_ENV)
    if handler is None and stream is None and log_file:
        try:
            from .logfile import RotatingLog  # only the daemons telemctl starts need it

            handler = RotatingLog(log_file)
            handler.setFormatter(logging.Formatter(f"%(asctime)s {program}: %(levelname)s: %(message)s"))
        except OSError:
            handler = None  # stderr still goes to the file telemctl opened
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter(f"{program}: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(numeric)
    return logging.getLogger(program)
