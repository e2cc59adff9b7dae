"""What telempostd last learnt about the collector, for `telemctl status`.

Here beside the queue and the journal, which telemctl reads without loading telempostd.

The queue says what waits; only telempostd knows why: the last delivery, the last error,
whether delivery is paused and until when.  It rewrites `delivery.json` beside the queue
when that changes (at most once a second while records flow), and `telemctl status`
reads it.  It lives in the queue's directory, where nothing else looks for files.  Encoding and decoding are pure; a damaged or foreign file decodes to None.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass

from telemetry.daemons.store.queue import queue_dir
from telemetry.errors import TelemetryError
from telemetry.fsutil import atomic_write, read_small

STATE_FILE = "delivery.json"
STATE_VERSION = 1
STATE_MAX_BYTES = 16384
DETAIL_MAX = 300


class Pause(enum.Enum):
    """Why nothing is being sent although records wait."""

    BACKOFF = "backoff"  # the collector failed; tried again when the wait ends (probed meanwhile)
    RETRY_AFTER = "retry-after"  # the collector asked for the wait
    CONFIG_ERROR = "config-error"  # every record would fail the same way: fix the configuration


@dataclass(frozen=True)
class LastError:
    """The last failed delivery, for telemctl status."""
    at: float
    detail: str
    status: int | None = None  # HTTP status, None for a connection-level failure


@dataclass(frozen=True)
class DeliveryState:
    """What telemctl status reads of telempostd's delivery (delivery.json)."""
    pid: int
    written_at: float
    last_success: float | None = None
    last_error: LastError | None = None
    paused: Pause | None = None
    paused_until: float | None = None
    probe_at: float | None = None  # next request that checks whether the collector answers again

    def encode(self) -> bytes:
        err = self.last_error
        doc = {
            "v": STATE_VERSION, "pid": self.pid, "written_at": self.written_at,
            "last_success": self.last_success,
            "last_error": None if err is None else {"at": err.at, "detail": err.detail[:DETAIL_MAX],
                                                    "status": err.status},
            "paused": None if self.paused is None else self.paused.value,
            "paused_until": self.paused_until, "probe_at": self.probe_at,
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def _time(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if 0 <= value < 1e12 else None


def decode(data: bytes) -> DeliveryState | None:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
        return None
    pid, written = doc.get("pid"), _time(doc.get("written_at"))
    if isinstance(pid, bool) or not isinstance(pid, int) or written is None:
        return None
    err = doc.get("last_error")
    last_error = None
    if isinstance(err, dict) and (at := _time(err.get("at"))) is not None and isinstance(err.get("detail"), str):
        status = err.get("status")
        last_error = LastError(at, err["detail"][:DETAIL_MAX],
                               status if isinstance(status, int) and not isinstance(status, bool) else None)
    try:
        paused = Pause(doc.get("paused")) if doc.get("paused") is not None else None
    except ValueError:
        paused = None
    return DeliveryState(pid, written, _time(doc.get("last_success")), last_error, paused,
                         _time(doc.get("paused_until")), _time(doc.get("probe_at")))


def path(spool_dir: str) -> str:
    return os.path.join(queue_dir(spool_dir), STATE_FILE)


def write(spool_dir: str, state: DeliveryState) -> None:
    atomic_write(path(spool_dir), state.encode(), 0o640)


def read(spool_dir: str) -> DeliveryState | None:
    """The state last written; None when there is none or it is damaged.  OSError when it
    is there but cannot be read (permission denied)."""
    try:
        return decode(read_small(path(spool_dir), STATE_MAX_BYTES))
    except (FileNotFoundError, NotADirectoryError, TelemetryError):
        return None
