"""JSON lines on stdout, for development: one message per line, a batch in one write."""

from __future__ import annotations

import os
import sys

from .base import Delivery, Dispatcher, DispatchFailed, Pending, settle
from .config import Kind

_DONE = Delivery()


class LogDispatcher(Dispatcher):
    kind = Kind.LOG

    def _send(self, batch: list[Pending]) -> None:
        data = b"".join(p.message.body + b"\n" for p in batch)
        try:
            fd = sys.stdout.fileno()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except (OSError, ValueError) as e:
            error = DispatchFailed(f"log: cannot write to stdout: {e}")
            for p in batch:
                settle(p.future, error=error)
            return
        for p in batch:
            settle(p.future, _DONE)
