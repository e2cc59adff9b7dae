"""Telemetry probe library: build Version 4 records and hand them to telemprobd.

    from telemetry import create_record, send
    ack = send(create_record("org.example/demo/hello", severity=1, payload="hi"))

`send` raises `SendError` (`NotOptedIn`, `DaemonUnavailable`, `RecordRejected`) unless the
daemon kept the record; the returned `Ack` carries the record id it was queued under.
"""

from .ack import Ack, AckStatus
from .client import Client, DaemonUnavailable, NotOptedIn, RecordRejected, SendError, send
from .config import Config, ConfigError
from .errors import TelemetryError
from .paths import Mode, Paths
from .record import PayloadTooLarge, Record, RecordError, create_record, new_event_id
from .version import __version__
from .wire import FramingError, decode_frame, encode_frame

__all__ = [
    "Ack",
    "AckStatus",
    "Client",
    "Config",
    "ConfigError",
    "DaemonUnavailable",
    "FramingError",
    "Mode",
    "NotOptedIn",
    "Paths",
    "PayloadTooLarge",
    "Record",
    "RecordError",
    "RecordRejected",
    "SendError",
    "TelemetryError",
    "__version__",
    "create_record",
    "decode_frame",
    "encode_frame",
    "new_event_id",
    "send",
]
