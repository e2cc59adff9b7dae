"""Logging set-up shared by every program: journald under systemd, stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


JOURNAL_SOCKET = "/run/systemd/journal/socket"


def setup(program: str, level: str | int = "info", *, stream=None, journal: bool = False) -> logging.Logger:
    """Configure the root logger once per process; returns the program's logger.

    journal=True logs to journald whenever its socket exists, for programs the kernel
    starts outside systemd with no stderr (crashprobe as the core_pattern handler).
    """
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
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter(f"{program}: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(numeric)
    return logging.getLogger(program)
