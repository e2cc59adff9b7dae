"""The private log file of a daemon telemctl started in user mode (`telemetry.log`)."""

from __future__ import annotations

import logging.handlers
import os
import sys

from .log import LOG_BACKUPS, LOG_MAX_BYTES, LOG_MODE


class RotatingLog(logging.handlers.RotatingFileHandler):
    """A private log file rotated by size.  The process's stdout and stderr follow the
    current file, so whatever else it prints (a traceback of a crash) lands beside its
    log lines instead of in a file that was rotated away."""

    def __init__(self, path: str):
        super().__init__(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8",
                         errors="backslashreplace")
        self._follow()

    def _open(self):  # type: ignore[override]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                     LOG_MODE)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def doRollover(self) -> None:
        super().doRollover()
        self._follow()

    def _follow(self) -> None:
        if self.stream is None:
            return
        for std in (sys.stdout, sys.stderr):
            try:
                std.flush()
            except (OSError, ValueError, AttributeError):
                pass
        fd = self.stream.fileno()
        for target in (1, 2):
            try:
                os.dup2(fd, target, inheritable=True)
            except OSError:
                pass
